"""Causal attention over a flat row of examples, for CPUs, in blocks of query rows.

PyTorch's CPU flash-attention kernel is made for long sequences: for the 64-512-token examples
of a fine-tuning batch its backward pass runs at about a third of the machine's matmul rate.
Here each example's attention is a few batched matrix products, so it runs at BLAS speed:

- Queries go in blocks of about 64 rows, and a block multiplies only the keys at or before its
  last row, so most of the causal triangle's upper half is never computed (at 512 tokens, 44%
  fewer FLOPs than the full square).
- Grouped-query heads share their key/value head by viewing the query heads of a group as more
  rows of one product, never by copying keys and values per query head.
- The backward pass reuses the forward's softmax (saved: a float per score computed, at 512
  tokens ~0.56 x 512^2 per head) and the output (sum(dP * P) = sum(dO * O) per row), so it does
  four products per block and recomputes nothing.

Results equal `F.scaled_dot_product_attention(..., is_causal=True)` per example up to float
rounding. `applies` says when the kernel fits; anything else takes the caller's SDPA path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

BLOCK_ROWS = 64
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sliding_window", "position_bias", "output_attentions")
_masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}


def applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
    """True where this kernel computes exactly what per-example causal SDPA would."""
    return (
        query.device.type == "cpu"
        and query.dtype in (torch.float32, torch.float64)
        and key.dtype == value.dtype == query.dtype
        and query.shape[0] == 1
        and not dropout
        and query.shape[1] % key.shape[1] == 0
        and key.shape[-1] == value.shape[-1] == query.shape[-1]
        and query.shape[2] == key.shape[2] == value.shape[2]
        and not any(kwargs.get(name) for name in _UNSUPPORTED_KWARGS)
    )


def _causal_mask(size: int, dtype: torch.dtype) -> torch.Tensor:
    """-inf above the diagonal of a size x size square; cached, as blocks reuse few sizes."""
    mask = _masks.get((size, dtype))
    if mask is None:
        mask = torch.full((size, size), float("-inf"), dtype=dtype).triu(1)
        _masks[(size, dtype)] = mask
    return mask


def _blocks(length: int) -> list[tuple[int, int]]:
    count = max(1, math.ceil(length / BLOCK_ROWS))
    edges = [round(length * i / count) for i in range(count + 1)]
    return list(zip(edges, edges[1:]))


def _rows_by_kv_head(tensor: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(heads, tokens, dim) as (kv_heads, tokens, groups, dim), contiguous: a block of query rows
    of every head of a group is then one slice of rows, with no copy per block."""
    heads, tokens, dim = tensor.shape
    return tensor.view(kv_heads, heads // kv_heads, tokens, dim).transpose(1, 2).contiguous()


class _BlockedCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, lengths, scale):
        heads, tokens, dim = query.shape[1:]
        kv_heads = key.shape[1]
        groups = heads // kv_heads
        queries = _rows_by_kv_head(query[0] * scale, kv_heads)
        out = query.new_empty(kv_heads, tokens, groups, dim)
        probs, start = [], 0
        for length in lengths:
            keys, values = key[0, :, start : start + length], value[0, :, start : start + length]
            for a, b in _blocks(length):
                rows = slice(start + a, start + b)
                scores = torch.bmm(queries[:, rows].reshape(kv_heads, -1, dim), keys[:, :b].transpose(1, 2))
                # rows see keys up to themselves: only the block's diagonal square has keys after a row
                scores.view(kv_heads, b - a, groups, b)[..., a:b].add_(_causal_mask(b - a, scores.dtype).unsqueeze(1))
                p = torch.softmax(scores, dim=-1)
                out[:, rows].copy_(torch.bmm(p, values[:, :b]).view(kv_heads, b - a, groups, dim))
                probs.append(p)
            start += length
        ctx.save_for_backward(queries, key, value, out, *probs)
        ctx.lengths, ctx.scale = lengths, scale
        return out.permute(1, 0, 2, 3).reshape(1, tokens, heads, dim)

    @staticmethod
    def backward(ctx, grad_out):
        queries, key, value, out, *probs = ctx.saved_tensors
        kv_heads, tokens, groups, dim = out.shape
        grad_out = grad_out[0].view(tokens, kv_heads, groups, dim).transpose(0, 1).contiguous()
        # sum over keys of dP * P for each query row equals dO . O: one pass over the output
        delta = (grad_out * out).sum(-1, keepdim=True)
        grad_q = torch.empty_like(out)
        grad_k, grad_v = torch.zeros_like(key), torch.zeros_like(value)
        start, blocks = 0, iter(probs)
        for length in ctx.lengths:
            keys, values = key[0, :, start : start + length], value[0, :, start : start + length]
            for a, b in _blocks(length):
                p, rows = next(blocks), slice(start + a, start + b)
                d_out = grad_out[:, rows].reshape(kv_heads, -1, dim)
                grad_v[0, :, start : start + b].baddbmm_(p.transpose(1, 2), d_out)
                d_scores = torch.bmm(d_out, values[:, :b].transpose(1, 2)).sub_(delta[:, rows].reshape(kv_heads, -1, 1)).mul_(p)
                grad_k[0, :, start : start + b].baddbmm_(d_scores.transpose(1, 2), queries[:, rows].reshape(kv_heads, -1, dim))
                grad_q[:, rows].copy_(torch.bmm(d_scores, keys[:, :b]).view(kv_heads, b - a, groups, dim))
            start += length
        grad_q = grad_q.mul_(ctx.scale).transpose(1, 2).reshape(1, kv_heads * groups, tokens, dim)
        return grad_q, grad_k, grad_v, None, None


def causal_segments(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int], scaling: float | None) -> torch.Tensor:
    """Per-example causal attention of a flat row: query (1, heads, tokens, dim), key and value
    (1, kv_heads, tokens, dim), lengths summing to tokens; returns (1, tokens, heads, dim), the
    layout transformers' attention functions return."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _BlockedCausalAttention.apply(query, key, value, [int(n) for n in lengths], float(scale))

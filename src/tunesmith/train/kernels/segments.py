"""Attention over packed examples computed one example at a time.

A packed row with a block-diagonal mask makes attention kernels compute every query against
every key of the row and throw most of it away; the mask also rules out the causal fast path.
Here a forward pass is one flat row of whole examples (no padding at all) and attention runs
per example, causal and unmasked, so its cost is the sum of each example's own square instead
of the row's. The example boundaries travel as `cu_seq_lens_q`, the keyword transformers
already passes from the model's forward down to the attention function (its flash-attention
path reads the same one).

On a GPU in bf16/fp16 the examples go to torch's variable-length flash attention in one
call (a loop of per-example kernels would leave the GPU waiting on launches); where that
kernel is missing or refuses the inputs, the per-example loop runs instead, with a warning.
On CPUs, fp32 examples take cpu_attention's blocked kernel instead of SDPA's flash kernel,
whose backward pass is slow at these lengths.

Calls without boundaries (padded batches, validation, generation with a cache) go to
transformers' own SDPA attention unchanged, so switching a model to this implementation
changes nothing else.
"""

from __future__ import annotations

import inspect
import warnings
from functools import lru_cache
from typing import Any

import torch

from tunesmith.train.kernels import cpu_attention

NAME = "tunesmith_segments"
_BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    for name in _BOUNDARY_KEYS:
        kwargs.pop(name, None)
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and dropout == 0.0 and _varlen_kernel() is not None:
        output = _varlen(module, query, key, value, bounds, longest, scaling)
        if output is not None:
            return output, None
    lengths = torch.diff(bounds).tolist()
    if cpu_attention.applies(query, key, value, dropout, kwargs):
        return cpu_attention.causal_segments(query, key, value, lengths, scaling), None
    # split (not slicing) so the backward pass joins the per-example gradients with one concatenation
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=1), None


@lru_cache(maxsize=1)
def _varlen_kernel():
    """torch's variable-length flash attention and the keywords this torch version spells
    causality and grouped heads with; None where torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    names = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in names else {"is_causal": True} if "is_causal" in names else None
    if causal is None:
        return None
    return varlen_attn, causal, "enable_gqa" in names, "scale" in names


_varlen_failed: list[str] = []


def _varlen(module, query, key, value, bounds, longest, scaling):
    """All examples of a flat row through one varlen kernel call: (1, tokens, heads, dim), or
    None (after one warning) where the kernel refuses, so the per-example loop takes over."""
    if _varlen_failed:
        return None
    kernel, causal, takes_gqa, takes_scale = _varlen_kernel()
    # (1, heads, tokens, dim) -> (tokens, heads, dim)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    options = dict(causal)
    if k.shape[1] != q.shape[1]:
        if takes_gqa:
            options["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if takes_scale and scaling is not None:
        options["scale"] = scaling
    if longest is None:
        longest = int(torch.diff(bounds).max())
    cu = bounds.to(device=query.device, dtype=torch.int32)
    try:
        output = kernel(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, longest, longest, **options)
    except (RuntimeError, NotImplementedError, TypeError) as error:
        _varlen_failed.append(str(error))
        warnings.warn(f"variable-length flash attention refused this model's inputs ({error}); attention runs one example at a time", stacklevel=2)
        return None
    return output.unsqueeze(0)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    # Calls without boundaries need SDPA's masks; flat rows get one too, unused and small.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_segment_attention(model: Any) -> bool:
    """Switch an SDPA or eager model to per-example attention; False (nothing changed) for models
    that do not route attention through transformers' AttentionInterface, or use another kernel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == NAME:
        return True
    if current not in ("sdpa", "eager") or not getattr(base, "_supports_attention_backend", False):
        return False
    _register()
    base.set_attn_implementation(NAME)
    return base.config._attn_implementation == NAME

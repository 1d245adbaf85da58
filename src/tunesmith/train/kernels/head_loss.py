"""The output head and cross-entropy in one pass over chunks of trained positions.

Projecting every trained position onto the vocabulary at once holds a (positions x vocabulary)
logits tensor, its log-softmax and its gradient: on a 49k vocabulary and 1,000 trained tokens
that is ~600 MB, on Llama 3's 128k vocabulary and 4,000 trained tokens ~6 GB, and each is
another pass over memory. Here the logits exist one chunk at a time: the forward pass of a
chunk computes its loss and, while the logits are still in cache, the gradient the backward
pass will need (softmax minus the one-hot target, projected back through the head), so the
backward pass is one multiplication by the incoming scalar. The same trick as Liger's and
Unsloth's fused linear cross-entropy, for any device.

Equal to `F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")` up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_BYTES = 32 * 2**20  # fp32 logits per chunk: measured on the 49k vocabulary, 128-256 rows beat smaller chunks and the unchunked head


def rows_per_chunk(vocab_size: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab_size))


def fused_head_loss(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (fp32) of `head(hidden)` against `targets`; hidden is (positions, width)."""
    weight, bias = head.weight, head.bias
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if not wants_grad:
        with torch.no_grad():
            return sum((_chunk_loss(hidden[a:b], weight, bias, targets[a:b])[0] for a, b in _chunks(hidden, weight)), hidden.new_zeros((), dtype=torch.float32))
    return _FusedHeadLoss.apply(hidden, weight, bias, targets)


def _chunks(hidden: torch.Tensor, weight: torch.Tensor) -> list[tuple[int, int]]:
    step = rows_per_chunk(weight.shape[0])
    return [(a, min(a + step, hidden.shape[0])) for a in range(0, hidden.shape[0], step)]


def _chunk_loss(hidden, weight, bias, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, softmax) of one chunk; the softmax is computed in the logits' own memory."""
    logits = F.linear(hidden, weight, bias).float()
    target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    peak = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(peak).exp_()
    total = probs.sum(dim=1, keepdim=True)
    loss = (peak.squeeze(1) + total.log().squeeze(1) - target_logits).sum()
    return loss, probs.div_(total)


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for a, b in _chunks(hidden, weight):
            loss, d_logits = _chunk_loss(hidden[a:b], weight, bias, targets[a:b])
            total += loss
            # d loss / d logits = softmax - one_hot(target)
            d_logits[torch.arange(b - a, device=d_logits.device), targets[a:b]] -= 1
            if grad_hidden is not None:
                grad_hidden[a:b] = d_logits.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight.addmm_(d_logits.t(), hidden[a:b].float())
            if grad_bias is not None:
                grad_bias += d_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = [None if grad is None else (grad * grad_total).to(dtype) for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None)

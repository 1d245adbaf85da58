"""The chunked head + cross-entropy gives the loss and gradients of the plain one."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train.kernels import head_loss
from tunesmith.train.kernels.head_loss import fused_head_loss


def _plain_and_fused(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor):
    results = []
    for compute in (lambda h: F.cross_entropy(head(h).float(), targets, reduction="sum"), lambda h: fused_head_loss(h, head, targets)):
        head.zero_grad(set_to_none=True)
        h = hidden.detach().clone().requires_grad_(hidden.requires_grad)
        loss = compute(h)
        (loss * 0.5).backward()  # a scale on the way back, as the trainer divides by the step's tokens
        grads = [None if t is None or t.grad is None else t.grad.clone() for t in (h, head.weight, head.bias)]
        results.append((loss.detach(), grads))
    return results


@pytest.mark.parametrize("rows", [1, 37, 100])
def test_matches_cross_entropy_over_several_chunks(monkeypatch, rows):
    monkeypatch.setattr(head_loss, "CHUNK_BYTES", 16 * 4 * 300)  # 16 rows a chunk on a 300-token vocabulary
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 300, bias=False).requires_grad_(False)
    (plain, plain_grads), (fused, fused_grads) = _plain_and_fused(head, torch.randn(rows, 24, requires_grad=True), torch.randint(0, 300, (rows,)))
    assert torch.allclose(plain, fused, rtol=1e-5)
    assert torch.allclose(plain_grads[0], fused_grads[0], atol=1e-6)
    assert fused_grads[1] is None  # a frozen head gets no gradient


def test_trainable_head_and_bias_get_the_same_gradients(monkeypatch):
    monkeypatch.setattr(head_loss, "CHUNK_BYTES", 16 * 4 * 50)
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 50)
    (plain, plain_grads), (fused, fused_grads) = _plain_and_fused(head, torch.randn(40, 8, requires_grad=True), torch.randint(0, 50, (40,)))
    assert torch.allclose(plain, fused, rtol=1e-5)
    for expected, got in zip(plain_grads, fused_grads):
        assert got is not None and torch.allclose(expected, got, atol=1e-5)


def test_bfloat16_head_returns_float32_loss_and_bfloat16_gradients():
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 64, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(20, 16, dtype=torch.bfloat16, requires_grad=True)
    (plain, plain_grads), (fused, fused_grads) = _plain_and_fused(head, hidden, torch.randint(0, 64, (20,)))
    assert fused.dtype == torch.float32 and fused_grads[0].dtype == torch.bfloat16
    assert torch.allclose(plain, fused, rtol=1e-2)
    assert torch.allclose(plain_grads[0].float(), fused_grads[0].float(), atol=2e-2)


def test_without_gradients_it_only_computes_the_loss():
    torch.manual_seed(3)
    head = torch.nn.Linear(8, 30)
    hidden, targets = torch.randn(10, 8), torch.randint(0, 30, (10,))
    with torch.no_grad():
        loss = fused_head_loss(hidden, head, targets)
    assert loss.grad_fn is None
    assert torch.allclose(loss, F.cross_entropy(head(hidden), targets, reduction="sum").detach(), rtol=1e-5)


def test_a_non_finite_logit_gives_a_non_finite_loss_for_the_guard():
    head = torch.nn.Linear(4, 10, bias=False).requires_grad_(False)
    with torch.no_grad():
        head.weight[3, 0] = float("nan")
    loss = fused_head_loss(torch.ones(5, 4, requires_grad=True), head, torch.zeros(5, dtype=torch.long))
    assert not torch.isfinite(loss)

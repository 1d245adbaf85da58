"""Llama's RMSNorm with the hand-written backward gives transformers' outputs and gradients, and only where it fits."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunesmith.train.kernels.fused_norm import fuse_rms_norms


def _norm(trainable: bool) -> LlamaRMSNorm:
    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    norm.weight.requires_grad_(trainable)
    return norm


@pytest.mark.parametrize("trainable", [False, True])
def test_outputs_and_gradients_equal_transformers(trainable):
    plain, fused = _norm(trainable), _norm(trainable)
    assert fuse_rms_norms(fused) == 1
    x = torch.randn(2, 37, 48, requires_grad=True)
    upstream = torch.randn(2, 37, 48)
    results = []
    for norm in (plain, fused):
        out = norm(x)
        wanted = (x, norm.weight) if trainable else (x,)
        results.append((out, torch.autograd.grad(out, wanted, upstream)))
    (out_plain, grads_plain), (out_fused, grads_fused) = results
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-6, atol=1e-6)
    for got, expected in zip(grads_fused, grads_plain):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert out_fused.grad_fn is not None and "RMSNorm" in type(out_fused.grad_fn).__name__  # the hand-written backward ran


def test_other_dtypes_and_other_norms_keep_their_own_forward():
    norm = _norm(False).to(torch.bfloat16)
    fuse_rms_norms(norm)
    x = torch.randn(3, 48, dtype=torch.bfloat16, requires_grad=True)
    assert "RMSNorm" not in type(norm(x).grad_fn).__name__  # bf16 takes transformers' forward

    class OnePlusWeightNorm(LlamaRMSNorm):  # a Gemma-style norm: same attributes, another formula
        def forward(self, hidden_states):
            return (1 + self.weight) * super().forward(hidden_states)

    assert fuse_rms_norms(OnePlusWeightNorm(48)) == 0


def test_a_tiny_llama_step_is_unchanged(tiny_model):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(5, 100, (2, 30))
    results = []
    for fused in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        if fused:
            assert fuse_rms_norms(model) == 2 * model.config.num_hidden_layers + 1  # two a layer, and the final one
            assert fuse_rms_norms(model) == 0  # once only
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)

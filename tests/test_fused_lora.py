"""The fused LoRA forward computes exactly what PEFT's computes: outputs, gradients, saved adapter."""

from __future__ import annotations

import pytest
import torch
from varied import varied_examples

from tunesmith.chat_template import collate, encode_all
from tunesmith.config import ModelSpec, TrainSpec
from tunesmith.models.methods import apply_method, load_for_method
from tunesmith.train.kernels.fused_lora import fuse_lora
from tunesmith.train.tasks.causal_lm import summed_loss


def _loss_and_grads(tiny_model, method: str, dropout: float, fused: bool, dtype: str = "float32"):
    spec = TrainSpec(method=method, lora={"r": 4, "alpha": 8, "dropout": dropout})
    model, tokenizer, _ = load_for_method(ModelSpec(name=str(tiny_model), device="cpu", dtype=dtype), str(tiny_model), spec)
    torch.manual_seed(0)
    model = apply_method(model, spec)
    with torch.no_grad():  # B starts at zero, which would leave A without a gradient to compare
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    count = fuse_lora(model) if fused else 0
    items, _ = encode_all(tokenizer, varied_examples(6), 256, "assistant")
    torch.manual_seed(1)  # the same dropout masks in both runs
    loss, _ = summed_loss(model, collate(items, tokenizer.pad_token_id))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads, count


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_gives_peft_s_loss_and_gradients(tiny_model, dropout):
    plain_loss, plain_grads, _ = _loss_and_grads(tiny_model, "lora", dropout, fused=False)
    fused_loss, fused_grads, count = _loss_and_grads(tiny_model, "lora", dropout, fused=True)
    assert count > 0
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name  # every LoRA matrix is reached by the loss
        # The same sums in another order: float32 leaves a gradient element that is a sum over ~1,000 tokens
        # up to ~2e-6 from PEFT's where terms cancel (measured with torch 2.13, peft 0.21.2, dropout 0.1).
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda text: f"{name}: {text}")


def test_dora_keeps_peft_s_own_forward(tiny_model):
    plain_loss, plain_grads, _ = _loss_and_grads(tiny_model, "dora", 0.0, fused=False)
    fused_loss, fused_grads, _ = _loss_and_grads(tiny_model, "dora", 0.0, fused=True)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=name)


def test_bf16_base_with_fp32_adapters_is_fused_and_trains_the_fp32_weights(tiny_model, monkeypatch):
    """The GPU setting: a bf16 base, PEFT's fp32 adapters. The fused layers compute the adapters in
    bf16 (as autocast would) and the gradients land on the fp32 weights, close to PEFT's fp32 path."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    plain_loss, plain_grads, _ = _loss_and_grads(tiny_model, "lora", 0.0, fused=False, dtype="bfloat16")
    peft_forwards = []
    peft_forward = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda self, *a, **k: peft_forwards.append(1) or peft_forward(self, *a, **k))
    fused_loss, fused_grads, count = _loss_and_grads(tiny_model, "lora", 0.0, fused=True, dtype="bfloat16")
    assert count > 0 and not peft_forwards  # no layer fell back to PEFT's upcasting forward
    assert fused_loss == pytest.approx(plain_loss, rel=2e-2)
    for name, grad in plain_grads.items():
        assert fused_grads[name].dtype == torch.float32, name
        assert torch.linalg.vector_norm(fused_grads[name] - grad) <= 0.05 * torch.linalg.vector_norm(grad), name

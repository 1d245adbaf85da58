"""train.gradient_checkpointing: the same losses and gradients, with less kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import RunSpec


def _model(tiny_model, method: str, checkpointing: bool):
    from tunesmith.models.methods import apply_method, load_for_method
    from tunesmith.train import kernels

    spec = RunSpec.model_validate(
        {"model": {"name": str(tiny_model)}, "data": {"dataset": "x"}, "train": {"method": method, "gradient_checkpointing": checkpointing}}
    )
    model, tokenizer, device = load_for_method(spec.model, str(tiny_model), spec.train)
    torch.manual_seed(0)
    model = apply_method(model, spec.train)
    kernels.switch_on(model, device)
    with torch.no_grad():  # adapters off zero, so their gradients depend on the whole stack
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.train()
    return model, tokenizer


def _loss_grads_and_kept_bytes(model, tensors):
    """The batch's summed loss, every trainable parameter's gradient, and the bytes the forward pass
    kept for the backward one (outside checkpointed layers: what stays in memory until backward)."""
    from tunesmith.train.tasks.causal_lm import summed_loss

    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = summed_loss(model, tensors)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(kept)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_checkpointing_gives_the_same_loss_and_gradients_and_keeps_less_for_backward(tiny_model, method):
    from tunesmith.chat_template import collate, collate_flat, encode_all
    from tunesmith.data.example import Example
    from tunesmith.demo.tickets import generate

    results = {}
    for checkpointing in (False, True):
        model, tokenizer = _model(tiny_model, method, checkpointing)
        items = encode_all(
            tokenizer, [Example.model_validate({"id": f"t{i}", "messages": r["messages"]}) for i, r in enumerate(generate(6, 0))], 512, "assistant"
        )[0]
        # a padded batch, and a flat row of whole examples (per-example attention), the trainer's two layouts
        results[checkpointing] = [_loss_grads_and_kept_bytes(model, tensors) for tensors in (collate(items, tokenizer.pad_token_id), collate_flat(items))]
    for (loss, grads, kept), (loss_gc, grads_gc, kept_gc) in zip(results[False], results[True]):
        assert loss_gc == pytest.approx(loss, rel=1e-5)
        assert grads.keys() == grads_gc.keys() and len(grads) > 0
        for name, grad in grads.items():
            torch.testing.assert_close(grads_gc[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        assert kept_gc < 0.5 * kept  # only each layer's input stays, not everything inside it

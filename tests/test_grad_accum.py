"""Gradient accumulation changes nothing but memory: 8x1, 4x2 and 2x4 (batch x accumulation)
over the same eight examples give the same loss and the same updated weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from varied import varied_examples

from tunesmith.chat_template import encode_all
from tunesmith.config import TrainSpec
from tunesmith.models.methods import apply_method
from tunesmith.train.parallel.strategy import Plain
from tunesmith.train.step import optimizer_step
from tunesmith.train.tasks.causal_lm import CAUSAL_LM


@pytest.fixture(scope="module")
def items(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    kept, _ = encode_all(tokenizer, varied_examples(8), 512, "assistant")
    kept.sort(key=lambda item: item.n_trained)  # so micro-batches hold unequal numbers of trained tokens
    lengths = [len(item.input_ids) for item in kept]
    assert max(lengths) > 2 * min(lengths)  # lengths differ enough for a per-batch mean to be wrong
    return kept, tokenizer.pad_token_id


def one_step(tiny_model, items, method: str, batch: int, accum: int):
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), TrainSpec(method=method, lr=1e-3))
    params = [p for p in model.parameters() if p.requires_grad]
    # SGD, not AdamW: Adam's first step is about lr*sign(grad) and would hide a wrongly scaled gradient.
    optimizer = torch.optim.SGD(params, lr=0.5)
    batches = [items[0][i : i + batch] for i in range(0, len(items[0]), batch)]
    assert len(batches) == accum
    loss, _, n_trained, _ = optimizer_step(model, batches, items[1], torch.device("cpu"), params, optimizer, 1e9, CAUSAL_LM, Plain())
    return loss, n_trained, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_batch_times_accumulation_splits_give_the_same_step(tiny_model, items, method):
    loss_8, tokens_8, weights_8 = one_step(tiny_model, items, method, 8, 1)
    before = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), TrainSpec(method=method, lr=1e-3))
    moved = sum(not torch.equal(weights_8[n], p) for n, p in before.named_parameters() if p.requires_grad and n in weights_8)
    assert moved > 0
    for batch, accum in [(4, 2), (2, 4), (1, 8)]:
        loss, tokens, weights = one_step(tiny_model, items, method, batch, accum)
        assert tokens == tokens_8
        assert loss == pytest.approx(loss_8, rel=1e-5)
        for name, value in weights.items():
            torch.testing.assert_close(value, weights_8[name], rtol=1e-4, atol=1e-6, msg=f"{name} differs at {batch}x{accum}")


def test_a_mean_per_micro_batch_would_differ(tiny_model, items):
    """The trap the token-weighted sum avoids: averaging micro-batch means over-weights the tokens
    of micro-batches with few trained tokens, so the gradient differs from the whole batch's."""
    from tunesmith.chat_template import collate
    from tunesmith.train.tasks.causal_lm import summed_loss

    def gradient(weights_of) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        for start in range(0, 8, 2):
            loss, n = summed_loss(model, collate(ordered[start : start + 2], items[1]))
            (loss * weights_of(n)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    ordered = sorted(items[0], key=lambda item: item.n_trained)  # micro-batches of unequal token counts
    total = sum(item.n_trained for item in ordered)
    right = gradient(lambda n: 1 / total)
    naive = gradient(lambda n: 1 / (4 * n))
    assert (naive - right).norm() / right.norm() > 0.01


def test_trained_token_count_matches_the_loss_even_when_training_on_all_tokens(tiny_model):
    """The step divides by this count; with train_on=all the first token has a label but no loss."""
    from tunesmith.chat_template import collate
    from tunesmith.train.tasks.causal_lm import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    kept, _ = encode_all(tokenizer, varied_examples(4), 512, "all")
    _, counted = summed_loss(AutoModelForCausalLM.from_pretrained(tiny_model), collate(kept, tokenizer.pad_token_id))
    labelled = sum(label != -100 for item in kept for label in item.labels)
    assert counted == sum(item.n_trained for item in kept) == labelled - len(kept)

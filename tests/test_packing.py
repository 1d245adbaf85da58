"""Packing: examples laid end to end in rows never see each other, and a packed step is the padded step."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from varied import varied_examples

from tunesmith.chat_template import IGNORE, collate, encode_all
from tunesmith.config import TrainSpec
from tunesmith.models.methods import apply_method
from tunesmith.train.batching import Batch, batch_tensors, choose_packing, collate_packed, make_batches, pack_rows
from tunesmith.train.parallel.strategy import Plain
from tunesmith.train.step import optimizer_step
from tunesmith.train.tasks.causal_lm import CAUSAL_LM, summed_loss


@pytest.fixture(scope="module")
def setup(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    items, _ = encode_all(tokenizer, varied_examples(8), 512, "assistant")
    return items, tokenizer.pad_token_id


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_an_example_in_a_packed_row_has_the_logits_it_has_alone(tiny_model, setup, attention):
    items, pad_id = setup
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention).eval()
    row = items[:3]
    packed = collate_packed(row, pad_id, capacity=10_000)
    assert packed["input_ids"].shape[0] == 1  # all three share one row
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        # The control: the same row with positions running on, as if it were one long text.
        running = model(input_ids=packed["input_ids"], use_cache=False).logits[0]
    start = 0
    for item in pack_rows(row, 10_000)[0]:
        n = len(item.input_ids)
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([item.input_ids]), use_cache=False).logits[0]
        torch.testing.assert_close(logits[start : start + n], alone, rtol=1e-4, atol=1e-4)
        if start > 0:
            assert (running[start : start + n] - alone).abs().max() > 1e-2  # attention across examples would show
        start += n


def test_packed_loss_and_gradient_equal_the_padded_ones(tiny_model, setup):
    items, pad_id = setup
    results = []
    for tensors in (collate(items, pad_id), collate_packed(items, pad_id, capacity=512)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        loss, n = summed_loss(model, tensors)
        loss.backward()
        results.append((float(loss), n, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (padded_loss, padded_n, padded_grad), (packed_loss, packed_n, packed_grad) = results
    assert packed_n == padded_n == sum(item.n_trained for item in items)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-5)


def test_packing_keeps_labels_inside_each_example_and_rows_within_capacity(setup):
    items, pad_id = setup
    capacity = max(len(item.input_ids) for item in items)
    packed = collate_packed(items, pad_id, capacity)
    assert packed["input_ids"].shape[1] <= capacity and packed["input_ids"].shape[0] < len(items)
    starts = packed["position_ids"] == 0
    assert (packed["labels"][starts] == IGNORE).all()  # no example's first token is predicted from the one before
    assert int((packed["labels"][:, 1:] != IGNORE).sum()) == sum(item.n_trained for item in items)


def test_a_packed_optimizer_step_equals_the_padded_step(tiny_model, setup, monkeypatch):
    from tunesmith.train import batching as collate_module

    items, pad_id = setup
    calls = []
    real_pack = collate_module._packed_tensors
    monkeypatch.setattr(collate_module, "_packed_tensors", lambda *a: calls.append(1) or real_pack(*a))
    weights = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), TrainSpec(method="full", lr=1e-3))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.5)
        group = [Batch(items[:5], packed, 512), Batch(items[5:], packed, 512)]
        loss, *_ = optimizer_step(model, group, pad_id, torch.device("cpu"), params, optimizer, 1e9, CAUSAL_LM, Plain())
        weights.append((loss, torch.cat([p.detach().flatten() for p in params])))
    assert len(calls) == 2  # the packed step really ran on packed rows
    assert weights[0][0] == pytest.approx(weights[1][0], rel=1e-5)
    torch.testing.assert_close(weights[0][1], weights[1][1], rtol=1e-4, atol=1e-6)


def test_auto_packs_only_when_padding_would_waste_tokens(setup):
    items, _ = setup
    packed, waste = choose_packing("auto", items, 8, 0)
    assert waste > 0.10 and packed  # eight chats of one to four exchanges in one batch: much padding
    same_length = [items[0]] * 16
    assert choose_packing("auto", same_length, 8, 0) == (False, 0.0)
    assert choose_packing(False, items, 8, 0)[0] is False and choose_packing(True, same_length, 8, 0)[0] is True
    epoch = make_batches(items, 3, 0, 1, True, 512)
    assert sorted(i.example_id for b in epoch for i in b) == sorted(i.example_id for i in items)


@pytest.mark.parametrize("packed", [False, True])
def test_forward_passes_split_to_a_token_budget_give_the_same_step(tiny_model, setup, packed):
    items, pad_id = setup
    chunks = batch_tensors(Batch(items, packed, 512, max_tokens=300), pad_id)
    assert len(chunks) > 1 and all(c["input_ids"].numel() <= 300 or c["input_ids"].shape[0] == 1 for c in chunks)
    assert sum(int((c["labels"][:, 1:] != IGNORE).sum()) for c in chunks) == sum(item.n_trained for item in items)
    weights = []
    for budget in (None, 300):
        torch.manual_seed(0)
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model), TrainSpec(method="full", lr=1e-3))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.5)
        loss, *_ = optimizer_step(
            model, [Batch(items, packed, 512, max_tokens=budget)], pad_id, torch.device("cpu"), params, optimizer, 1e9, CAUSAL_LM, Plain()
        )
        weights.append((loss, torch.cat([p.detach().flatten() for p in params])))
    assert weights[0][0] == pytest.approx(weights[1][0], rel=1e-5)
    torch.testing.assert_close(weights[0][1], weights[1][1], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- flat rows with per-example attention


def _segment_model(tiny_model):
    from tunesmith.train.kernels.segments import use_segment_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert use_segment_attention(model)
    return model


def test_a_flat_row_gives_each_example_the_logits_it_has_alone(tiny_model, setup):
    items, _ = setup
    model = _segment_model(tiny_model).eval()
    (tensors,) = batch_tensors(Batch(items[:3], packed=True, max_tokens=None, flat=True), 0)
    assert tensors["input_ids"].shape == (1, sum(len(i.input_ids) for i in items[:3]))  # one row, not a token of padding
    with torch.no_grad():
        logits = model(
            input_ids=tensors["input_ids"],
            position_ids=tensors["position_ids"],
            cu_seq_lens_q=tensors["cu_seq_lens_q"],
            cu_seq_lens_k=tensors["cu_seq_lens_k"],
            use_cache=False,
        ).logits[0]
        # The control: no boundaries, and positions running on, as if it were one long text.
        running = model(input_ids=tensors["input_ids"], use_cache=False).logits[0]
    bounds = tensors["cu_seq_lens_q"].tolist()
    for start, end in zip(bounds, bounds[1:]):
        with torch.no_grad():
            alone = model(input_ids=tensors["input_ids"][:, start:end], use_cache=False).logits[0]
        torch.testing.assert_close(logits[start:end], alone, rtol=1e-4, atol=1e-4)
        if start > 0:
            assert (running[start:end] - alone).abs().max() > 1e-2  # attention across examples would show


def test_flat_loss_and_gradient_equal_the_padded_ones(tiny_model, setup):
    items, pad_id = setup
    results = []
    for model, parts in (
        (AutoModelForCausalLM.from_pretrained(tiny_model), [collate(items, pad_id)]),
        (_segment_model(tiny_model), batch_tensors(Batch(items, packed=True, max_tokens=300, flat=True), pad_id)),
    ):
        losses = [summed_loss(model, tensors) for tensors in parts]
        sum(loss for loss, _ in losses).backward()
        results.append((sum(float(loss) for loss, _ in losses), sum(n for _, n in losses), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (padded_loss, padded_n, padded_grad), (flat_loss, flat_n, flat_grad) = results
    assert flat_n == padded_n == sum(item.n_trained for item in items)
    assert flat_loss == pytest.approx(padded_loss, rel=1e-5)
    torch.testing.assert_close(flat_grad, padded_grad, rtol=1e-4, atol=5e-5)  # summed in another order


def test_flat_passes_hold_whole_examples_within_the_token_limit(setup):
    items, pad_id = setup
    parts = batch_tensors(Batch(items, packed=True, max_tokens=300, flat=True), pad_id)
    assert len(parts) > 1
    assert sum(p["input_ids"].shape[1] for p in parts) == sum(len(i.input_ids) for i in items)  # no padding anywhere
    longest = max(len(i.input_ids) for i in items)
    for tensors in parts:
        assert tensors["input_ids"].shape[1] <= max(300, longest)
        starts = tensors["cu_seq_lens_q"][:-1].long()
        assert (tensors["position_ids"][0, starts] == 0).all() and (tensors["labels"][0, starts] == IGNORE).all()


def test_auto_lays_out_flat_rows_whenever_a_batch_would_need_padding(tiny_model, setup):
    """Flat rows cost no padding and no cross-example attention, so even 1% padding is worth avoiding."""
    from tunesmith.chat_template import Encoded
    from tunesmith.train.layout import plan_layout

    items, _ = setup
    longest = max(items, key=lambda item: len(item.input_ids))
    nearly_equal = [longest] * 7 + [Encoded(longest.input_ids[:-2], longest.labels[:-2], "shorter")]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    layout = plan_layout(model, TrainSpec(batch_size=8), nearly_equal, torch.device("cpu"))
    assert 0 < layout.waste < 0.10 and layout.packed and layout.flat
    assert "per-example attention" in layout.describe()
    assert not plan_layout(model, TrainSpec(batch_size=8), [longest] * 8, torch.device("cpu")).packed  # no padding to save
    assert not plan_layout(model, TrainSpec(batch_size=8, packing=False), nearly_equal, torch.device("cpu")).packed

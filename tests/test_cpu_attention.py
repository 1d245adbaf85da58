"""The blocked CPU attention kernel computes what per-example causal SDPA computes, and steps aside where it does not fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train.kernels import cpu_attention
from tunesmith.train.kernels.cpu_attention import applies, causal_segments

# one token, one block exactly, a block plus one, several uneven blocks, the longest the trainer packs
LENGTHS = [1, 64, 65, 203, 512]


def _inputs(heads: int, kv_heads: int, lengths: list[int], dtype=torch.float32):
    torch.manual_seed(0)
    tokens = sum(lengths)
    return [torch.randn(1, n, tokens, 16, dtype=dtype, requires_grad=True) for n in (heads, kv_heads, kv_heads)]


def _sdpa_per_example(query, key, value, lengths, scale):
    groups = query.shape[1] // key.shape[1]
    outputs = []
    for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2)):
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        outputs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2))
    return torch.cat(outputs, 1)


@pytest.mark.parametrize(("heads", "kv_heads", "scale"), [(6, 2, None), (4, 4, 0.3), (3, 1, None)])
def test_outputs_and_gradients_equal_per_example_sdpa(heads, kv_heads, scale):
    lengths = LENGTHS
    query, key, value = _inputs(heads, kv_heads, lengths)
    upstream = torch.randn(1, sum(lengths), heads, 16)
    expected = _sdpa_per_example(query, key, value, lengths, scale)
    expected_grads = torch.autograd.grad(expected, (query, key, value), upstream)
    got = causal_segments(query, key, value, lengths, scale)
    got_grads = torch.autograd.grad(got, (query, key, value), upstream)
    assert got.shape == (1, sum(lengths), heads, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_examples_never_see_each_other():
    lengths = [70, 90]
    query, key, value = _inputs(2, 2, lengths)
    before = causal_segments(query, key, value, lengths, None).detach()
    with torch.no_grad():
        key[:, :, :70] += 5.0  # the first example's keys and values change...
        value[:, :, :70] -= 3.0
    after = causal_segments(query, key, value, lengths, None).detach()
    assert (after[:, :70] - before[:, :70]).abs().max() > 0.1
    torch.testing.assert_close(after[:, 70:], before[:, 70:], rtol=0, atol=0)  # ...and the second's output does not


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_block_size_changes_nothing_but_speed(block_rows, monkeypatch):
    lengths = [40, 129]
    query, key, value = _inputs(4, 2, lengths)
    expected = causal_segments(query, key, value, lengths, None)
    monkeypatch.setattr(cpu_attention, "BLOCK_ROWS", block_rows)
    torch.testing.assert_close(causal_segments(query, key, value, lengths, None), expected, rtol=1e-5, atol=1e-6)


def test_it_applies_only_where_it_is_exact():
    query, key, value = _inputs(4, 2, [8])
    assert applies(query, key, value, 0.0, {})
    assert not applies(query, key, value, 0.1, {})  # attention dropout
    assert not applies(*(t.to(torch.bfloat16) for t in (query, key, value)), 0.0, {})  # flash is the better CPU kernel there
    assert not applies(query, key, value, 0.0, {"softcap": 30.0})
    assert not applies(query, key, value, 0.0, {"sliding_window": 4})
    assert not applies(torch.cat([query, query]), torch.cat([key, key]), torch.cat([value, value]), 0.0, {})  # a padded batch
    assert not applies(query[:, :3], key, value, 0.0, {})  # heads that do not divide into groups


def test_a_flat_row_on_cpu_runs_through_the_kernel(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tunesmith.train.kernels.segments import use_segment_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert use_segment_attention(model)
    calls = []
    monkeypatch.setattr(cpu_attention, "causal_segments", lambda *args: calls.append(args[3]) or causal_segments(*args))
    ids = torch.randint(5, 100, (1, 50))
    bounds = torch.tensor([0, 20, 50], dtype=torch.int32)
    positions = torch.cat([torch.arange(20), torch.arange(30)])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, use_cache=False).logits[0]
        alone = model(input_ids=ids[:, 20:], use_cache=False).logits[0]
    assert calls and all(lengths == [20, 30] for lengths in calls)  # every layer, with the example boundaries
    torch.testing.assert_close(logits[20:], alone, rtol=1e-4, atol=1e-4)

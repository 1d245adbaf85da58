"""Dataset statistics against hand-computed numbers, and the length histogram."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunesmith.chat_template import encode
from tunesmith.data.example import Example, Message
from tunesmith.data.stats import dataset_stats, plot_length_histogram, print_stats


def chat(i, *turns, label=None, system=None):
    roles = ["user", "assistant"] * len(turns)
    messages = ([Message(role="system", content=system)] if system else []) + [Message(role=r, content=t) for r, t in zip(roles, turns)]
    return Example(id=str(i), messages=messages, label=label)


SPLITS = {
    "train": [
        chat(0, "hi", "hello", label="greet", system="be brief"),
        chat(1, "bill?", "yes", "when?", "today", label="billing"),
        chat(2, "refund", "ok", label="billing"),
    ],
    "test": [chat(3, "hey", "hi", label="greet")],
}


def test_counts_roles_turns_and_labels_match_hand_counts():
    stats = dataset_stats(SPLITS)
    train = stats.splits["train"]
    assert stats.counts == {"train": 3, "test": 1}
    assert train.roles == {"assistant": 4, "system": 1, "user": 4}
    assert (train.turns.min, train.turns.mean, train.turns.max) == (2, pytest.approx(8 / 3), 4)
    assert train.labels == {"billing": 2, "greet": 1}
    assert train.tokens is None and stats.seconds_per_epoch is None


def test_token_lengths_use_the_chat_template_and_count_trained_tokens(tiny_model, tmp_path, capsys):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stats = dataset_stats(SPLITS, tokenizer, seconds_per_token=0.01)
    encoded = [encode(tokenizer, e, 10_000) for e in SPLITS["train"]]
    lengths = sorted(len(x.input_ids) for x in encoded)
    rendered = tokenizer.apply_chat_template([m.model_dump(exclude={"weight"}) for m in SPLITS["train"][0].messages], tokenize=False)
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) in lengths
    tokens = stats.splits["train"].tokens
    assert (tokens.lengths.min, tokens.lengths.median, tokens.lengths.p95, tokens.lengths.max) == (lengths[0], lengths[1], lengths[2], lengths[2])
    assert tokens.total == sum(lengths) == stats.train_tokens_per_epoch
    assert tokens.trained == sum(x.n_trained for x in encoded) == stats.train_trained_tokens_per_epoch
    assert 0 < tokens.trained < tokens.total
    assert stats.seconds_per_epoch == pytest.approx(sum(lengths) * 0.01)
    png = plot_length_histogram(stats, tmp_path / "plots" / "lengths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_length_histogram([3, 4, 5], tmp_path / "flat.png").stat().st_size > 0
    print_stats(stats)
    printed = capsys.readouterr().out
    assert "billing" in printed and "estimated training time per epoch" in printed

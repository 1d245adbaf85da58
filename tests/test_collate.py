"""The label mask: loss on exactly the assistant content plus its end-of-turn token."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunesmith.chat_template import IGNORE, collate, encode, encode_all, end_of_turn_ids
from tunesmith.data.example import Example, Message


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])


def chat(*turns: tuple[str, str, float | None]) -> Example:
    return Example(id="x", messages=[Message(role=r, content=c, weight=w) for r, c, w in turns])


def test_mask_covers_assistant_content_and_end_of_turn_even_when_pad_is_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap this test exists for
    example = chat(("system", "Route it.", None), ("user", "SSO loop on SSO-12", None), ("assistant", '{"team": "IAM"}', None))
    encoded = encode(tokenizer, example, 512)
    assert trained_text(tokenizer, encoded) == '{"team": "IAM"}<|im_end|>'
    assert encoded.labels[-2] == tokenizer.eos_token_id  # the end-of-turn token is a label...
    assert encoded.labels[-1] == IGNORE  # ...the newline the template puts after it is not
    batch = collate([encoded, encode(tokenizer, chat(("user", "a much longer question here", None), ("assistant", "ok", None)), 512)], tokenizer.pad_token_id)
    # Padding (same id as eos) is masked out by position, not by id: row 0 still trains its eos.
    assert (batch["labels"][0] == tokenizer.eos_token_id).sum() == 1


def test_multi_turn_trains_every_assistant_turn_but_weight_zero_ones(tokenizer):
    example = chat(("user", "one", None), ("assistant", "first", 0.0), ("user", "two", None), ("assistant", "second", None))
    assert trained_text(tokenizer, encode(tokenizer, example, 512)) == "second<|im_end|>"
    example = chat(("user", "one", None), ("assistant", "first", None), ("user", "two", None), ("assistant", "second", None))
    assert trained_text(tokenizer, encode(tokenizer, example, 512)) == "first<|im_end|>second<|im_end|>"


def test_train_on_all_includes_the_prompt(tokenizer):
    example = chat(("user", "hello", None), ("assistant", "hi", None))
    text = trained_text(tokenizer, encode(tokenizer, example, 512, train_on="all"))
    assert "hello" in text and text.endswith("hi<|im_end|>")


def test_examples_truncated_to_nothing_are_dropped_not_trained_as_zero_loss(tokenizer):
    long_prompt = chat(("user", "word " * 200, None), ("assistant", "answer", None))
    short = chat(("user", "hi", None), ("assistant", "answer", None))
    kept, dropped = encode_all(tokenizer, [long_prompt, short.model_copy(update={"id": "short"})], 64, "assistant")
    assert dropped == ["x"] and [e.example_id for e in kept] == ["short"]


def test_end_of_turn_id_is_the_templates_marker(tokenizer):
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]

"""Examples on disk, facts in memory: how `data prepare` holds a dataset of any size.

Each example that survives clean and PII is written once, as the JSON line the dataset will hold,
to a spill file; memory keeps only what the later steps decide with (about 110 bytes an example):
content and prompt digests, the exact-duplicate key, the split rank, label and group numbers and
word counts. Dedup, split and the leak check work on these columns and read a line back only
when they need its text or id, so they give the answers the list-based references in
tests/reference_dedup.py and tests/reference_split.py give for lists of Example objects
(tests/test_rows.py compares the two).
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tunesmith.data.example import Example, messages_key, normalised_key

_WORD = re.compile(r"\w+")
NO_VALUE = -1  # label or group column: the example has none


class Rows:
    """An append-only spill file of examples with their columns; rows are numbered from 0."""

    def __init__(self, folder: Path, seed: int, group_by: str | None = None):
        self.path = folder / "rows.jsonl"
        self.seed, self.group_by = seed, group_by
        self._writer = self.path.open("wb")
        self._reader = None
        self._end = 0
        self._offsets = array("q")
        self._content, self._prompt, self._exact, self._rank = bytearray(), bytearray(), bytearray(), bytearray()
        self._labels, self._groups, self._words, self._prompt_words = array("i"), array("i"), array("i"), array("i")
        self.label_names: list[str] = []
        self.group_names: list[str] = []
        self._label_ids: dict[str, int] = {}
        self._group_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def add(self, example: Example) -> int:
        """Store one example; returns its row number."""
        line = (example.model_dump_json() + "\n").encode()
        self._offsets.append(self._end)
        self._writer.write(line)
        self._end += len(line)
        content = messages_key(example.messages, example.tools, example.rejected)  # = bytes.fromhex(example.content_key())
        self._content += content
        self._prompt += messages_key(example.prompt_messages)[:16]
        self._exact += hashlib.sha256(json.dumps(normalised_key(example), ensure_ascii=False).encode()).digest()[:16]
        # The split ranks by sha256(f"{seed}:{content_key}"); 16 bytes of it order as the whole digest does.
        self._rank += hashlib.sha256(f"{self.seed}:{content.hex()}".encode()).digest()[:16]
        self._labels.append(_number(self._label_ids, self.label_names, example.label))
        group = example.meta.get(self.group_by) if self.group_by is not None else None
        self._groups.append(_number(self._group_ids, self.group_names, None if group is None else str(group)))
        # Word counts of texts() (no word spans the newline joining two messages), with and
        # without the final answer.
        words = [0 if m.role == "system" else len(_WORD.findall(m.content)) for m in example.messages]
        rejected = len(_WORD.findall(example.rejected.content)) if example.rejected is not None else 0
        self._words.append(sum(words) + rejected)
        last_is_answer = bool(example.messages) and example.messages[-1].role == "assistant"
        self._prompt_words.append(sum(words) - (words[-1] if last_is_answer else 0))
        return len(self._offsets) - 1

    # --- columns --------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        """offsets, content (V32), prompt / exact (V16), rank ((n, 2) uint64, sorts as the bytes do),
        labels, groups, words, prompt_words."""
        raw = {"content": (self._content, "V32"), "prompt": (self._prompt, "V16"), "exact": (self._exact, "V16")}
        if name in raw:
            data, dtype = raw[name]
            return np.frombuffer(bytes(data), dtype=dtype)
        if name == "rank":
            return np.frombuffer(bytes(self._rank), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        source = {"offsets": self._offsets, "labels": self._labels, "groups": self._groups, "words": self._words, "prompt_words": self._prompt_words}[name]
        return np.frombuffer(source, dtype=np.int64 if name == "offsets" else np.int32).copy()

    # --- reading back ---------------------------------------------------------------------------

    def lines(self, rows: np.ndarray | list[int]) -> Iterator[bytes]:
        """The stored JSON lines of `rows`, in the order given."""
        self._writer.flush()  # rows may have been added since the last read
        if self._reader is None:
            self._reader = self.path.open("rb")
        offsets = self._offsets
        for row in rows:
            self._reader.seek(offsets[row])
            yield self._reader.readline()

    def records(self, rows: np.ndarray | list[int]) -> Iterator[dict]:
        return map(json.loads, self.lines(rows))

    def ids(self, rows: np.ndarray | list[int]) -> list[str]:
        return [record["id"] for record in self.records(rows)]

    def examples(self, rows: np.ndarray | list[int]) -> list[Example]:
        return [Example.model_validate_json(line) for line in self.lines(rows)]

    def texts(self, rows: np.ndarray | list[int], prompt_only: bool = False) -> Iterator[str]:
        """The text near-duplicates are found on: user and assistant turns (system left out), and a preference
        pair's rejected answer (two pairs that differ only there are two pairs), joined by newlines."""
        for record in self.records(rows):
            messages = record["messages"]
            if prompt_only and messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            elif record.get("rejected"):
                messages = [*messages, record["rejected"]]
            yield "\n".join(_turn_text(m) for m in messages if m["role"] != "system")

    def close(self) -> None:
        self._writer.close()
        if self._reader is not None:
            self._reader.close()


def _turn_text(message: dict) -> str:
    """A turn's text and its calls (name and arguments): two conversations that differ only in a call's arguments are not near-duplicates."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    return "\n".join([message["content"], *(f"{c['function']['name']} {c['function']['arguments']}" for c in calls)]).strip()


def _number(ids: dict[str, int], names: list[str], value: str | None) -> int:
    if value is None:
        return NO_VALUE
    number = ids.get(value)
    if number is None:
        number = ids[value] = len(names)
        names.append(value)
    return number


def content_hash(rows: Rows, selected: np.ndarray, extra: list[Example] = ()) -> str:  # type: ignore[assignment]
    """example.content_hash of the selected rows plus `extra` examples, without their objects."""
    keys = rows.column("content")[selected]
    if extra:
        keys = np.concatenate([keys, np.frombuffer(b"".join(bytes.fromhex(e.content_key()) for e in extra), dtype="V32")])
    # Sorted digests in hex, concatenated: the same bytes content_hash feeds to SHA-256.
    return hashlib.sha256(np.sort(keys).tobytes().hex().encode()).hexdigest()[:16]

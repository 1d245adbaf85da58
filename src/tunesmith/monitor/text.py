"""Reading prompts: tokens for the unseen-vocabulary rate, language, and embeddings with the embedded
encoder (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# A token is a run of letters/digits, kept whole across inner - _ / . so that "BLX-123", "v4.2" and
# "api_key" are one token each: product codes and identifiers are what drifts first in production.
_TOKEN = re.compile(r"[^\W_]+(?:[-_/.][^\W_]+)*")
_DIGITS = re.compile(r"\d+")
# What the serving log's PII scrub writes in place of a name, an e-mail... (data/pii.py: `<PERSON>`). The
# training data may hold the unredacted text, so a placeholder is not a new word: left out on both sides.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*>")


@dataclass(frozen=True)
class Token:
    text: str  # as written
    shape: str  # lower-cased, every run of digits written 0: "BLX-123" and "blx-977" are one shape

    @staticmethod
    def of(text: str) -> Token:
        return Token(text, _DIGITS.sub("0", text.lower()))


def tokens(text: str) -> list[Token]:
    """Digits are folded because numbers (ticket numbers, amounts, the digits of a code) are new in
    every request; what matters is whether the *kind* of token was seen: a code with a new prefix
    ("ZNX-0") is new, another BLX number is not."""
    return [Token.of(m.group()) for m in _TOKEN.finditer(_PLACEHOLDER.sub(" ", text))]


def unseen(text: str, vocab: set[str]) -> tuple[float, list[str]]:
    """The share of the text's tokens whose shape training never had, and those tokens."""
    found = tokens(text)
    new = [t.text for t in found if t.shape not in vocab]
    return (len(new) / len(found) if found else 0.0), new


def languages(texts: list[str]) -> list[str]:
    """py3langid's language code of each text (offline, ~1 ms a text)."""
    import py3langid

    return [py3langid.classify(t)[0] if t.strip() else "" for t in texts]


@lru_cache(maxsize=1)
def _sentence_model():
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    from tunesmith.models.loading import embedded_encoder_path

    return SentenceTransformer(embedded_encoder_path(), device="cpu")


class Encoder:
    """Unit-norm sentence embeddings, remembered per text: the simulation and repeated monitor runs in
    one process embed each distinct prompt once."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vectors = _sentence_model().encode(todo, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(todo, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


DEFAULT_ENCODER = Encoder()

"""Exact and near-duplicate removal (MinHash + LSH from datasketch), keeping the first occurrence.

Near-duplicates are found on the user and assistant text; system prompts are left out because
one shared instruction would make every pair of examples look alike.

Shingle choice, measured on the demo tickets (≈30 words each): with word k-grams an edit of
one word changes about k shingles, so Jaccard after e edits in n words is about
(n − k·e) / (n + k·e). Word 3-grams put a 2-word edit of a 30-word ticket near 0.6, far below
any useful threshold, while word 1-grams keep it above 0.83 and still leave distinct tickets
below 0.7. So k is chosen per call from the median length: the smallest k that keeps a
2-word edit above 0.85 (n ≥ 25·k), up to 3-grams for long texts; texts under
`CHAR_SHINGLE_BELOW` words use character 3-grams, where one word is too coarse a unit.
Candidates from LSH are then checked with the exact Jaccard of their shingle sets, so the
threshold means what it says and MinHash noise cannot create a false positive.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict

from tunesmith.data.example import Example

MAX_LISTED = 200  # removed pairs listed in a report; counts stay exact
CHAR_SHINGLE_BELOW = 5  # median words under which character shingles are used
WORDS_PER_SHINGLE_WORD = 25  # n ≥ 25·k keeps a 2-word edit above Jaccard 0.85
# LSH is only the candidate filter: run it below the threshold so pairs just above it are
# almost never missed, then verify exactly.
LSH_MARGIN = 0.15
_WORD = re.compile(r"\w+")


class DuplicatePair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    removed: str
    kept: str
    kind: str  # "exact" or "near"
    similarity: float


class DedupReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples_in: int
    examples_out: int
    exact: int
    near: int
    threshold: float | None
    shingles: str | None  # e.g. "word-1" or "char-3": the unit the threshold applied to
    pairs: list[DuplicatePair]  # capped at MAX_LISTED


def dedup_examples(
    examples: list[Example], *, near: bool = True, threshold: float = 0.85, num_perm: int = 128, seed: int = 0
) -> tuple[list[Example], DedupReport]:
    """exact duplicates → near-duplicates; the first occurrence of each is kept."""
    kept, pairs = _drop_exact(examples)
    n_exact = len(pairs)
    shingler = choose_shingles([dedup_text(e) for e in kept]) if near else None
    if shingler is not None:
        kept, near_pairs = _drop_near(kept, shingler, threshold, num_perm, seed)
        pairs += near_pairs
    report = DedupReport(
        examples_in=len(examples), examples_out=len(kept), exact=n_exact, near=len(pairs) - n_exact,
        threshold=threshold if near else None, shingles=shingler.name if shingler else None, pairs=pairs[:MAX_LISTED],
    )
    return kept, report


def near_duplicate_pairs(
    candidates: list[Example], reference: list[Example], threshold: float = 0.85, *, prompt_only: bool = False,
    num_perm: int = 128, seed: int = 0,
) -> list[tuple[str, str]]:
    """(candidate id, reference id) for each candidate that is a near-duplicate of some reference
    example (the most similar one): the leakage check between splits."""
    if not candidates or not reference:
        return []
    texts = [dedup_text(e, prompt_only) for e in candidates], [dedup_text(e, prompt_only) for e in reference]
    shingler = choose_shingles(texts[0] + texts[1])
    index = _Index(threshold, num_perm, seed)
    for example, text in zip(reference, texts[1]):
        index.add(example.id, shingler(text))
    found = []
    for example, text in zip(candidates, texts[0]):
        match = index.best_match(shingler(text))
        if match is not None:
            found.append((example.id, match[0]))
    return found


# --- text and shingles -------------------------------------------------------------------------


def normalised_key(example: Example) -> tuple[tuple[str, str], ...]:
    """Exact-duplicate identity: every message, case-folded, whitespace collapsed."""
    return tuple((m.role, " ".join(m.content.casefold().split())) for m in example.messages)


def dedup_text(example: Example, prompt_only: bool = False) -> str:
    messages = example.prompt_messages if prompt_only else example.messages
    return "\n".join(m.content for m in messages if m.role != "system")


class Shingler:
    """Turns a text into its shingle set; one unit for a whole comparison, so sets are comparable."""

    def __init__(self, unit: str, k: int):
        self.unit, self.k = unit, k
        self.name = f"{unit}-{k}"

    def __call__(self, text: str) -> set[str]:
        words = _WORD.findall(text.casefold())
        seq: list[str] | str = words if self.unit == "word" else " ".join(words)
        if len(seq) <= self.k:
            return {self._join(seq)} if seq else {text.casefold().strip()}
        return {self._join(seq[i : i + self.k]) for i in range(len(seq) - self.k + 1)}

    def _join(self, part: list[str] | str) -> str:
        return " ".join(part) if isinstance(part, list) else part


def choose_shingles(texts: Iterable[str]) -> Shingler:
    lengths = [len(_WORD.findall(t)) for t in texts]
    median = statistics.median(lengths) if lengths else 0
    if median < CHAR_SHINGLE_BELOW:
        return Shingler("char", 3)
    return Shingler("word", int(min(3, max(1, median // WORDS_PER_SHINGLE_WORD))))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# --- the two passes ------------------------------------------------------------------------------


def _drop_exact(examples: list[Example]) -> tuple[list[Example], list[DuplicatePair]]:
    first: dict[tuple, str] = {}
    kept, pairs = [], []
    for example in examples:
        key = normalised_key(example)
        if key in first:
            pairs.append(DuplicatePair(removed=example.id, kept=first[key], kind="exact", similarity=1.0))
        else:
            first[key] = example.id
            kept.append(example)
    return kept, pairs


def _drop_near(
    examples: list[Example], shingler: Shingler, threshold: float, num_perm: int, seed: int
) -> tuple[list[Example], list[DuplicatePair]]:
    # Only kept examples enter the index: a chain a≈b≈c with a≉c keeps a and c.
    index = _Index(threshold, num_perm, seed)
    kept, pairs = [], []
    for example in examples:
        shingles = shingler(dedup_text(example))
        minhash = index.minhash(shingles)
        match = index.best_match(shingles, minhash)
        if match is None:
            index.add(example.id, shingles, minhash)
            kept.append(example)
        else:
            pairs.append(DuplicatePair(removed=example.id, kept=match[0], kind="near", similarity=round(match[1], 4)))
    return kept, pairs


class _Index:
    """MinHashLSH for candidates, exact Jaccard on the kept shingle sets to confirm them."""

    def __init__(self, threshold: float, num_perm: int, seed: int):
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_MARGIN), num_perm=num_perm)
        # Drawing the permutations once, not per MinHash, is most of dedup's speed.
        template = MinHash(num_perm=num_perm, seed=seed)
        self.permutations, self.scheme = template.permutations, template.scheme
        self.num_perm, self.seed = num_perm, seed
        self.sets: dict[str, set[str]] = {}

    def minhash(self, shingles: set[str]) -> MinHash:
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self.permutations, scheme=self.scheme)
        minhash.update_batch([s.encode() for s in shingles])
        return minhash

    def add(self, key: str, shingles: set[str], minhash: MinHash | None = None) -> None:
        # Ids are not guaranteed unique in user files; the index needs unique keys.
        slot = f"{len(self.sets)}:{key}"
        self.sets[slot] = shingles
        self.lsh.insert(slot, minhash or self.minhash(shingles))

    def best_match(self, shingles: set[str], minhash: MinHash | None = None) -> tuple[str, float] | None:
        """The most similar indexed example at or above the threshold (earliest on ties)."""
        best: tuple[float, int, str] | None = None
        for slot in self.lsh.query(minhash or self.minhash(shingles)):
            score = jaccard(shingles, self.sets[slot])
            position = int(slot.split(":", 1)[0])
            if score >= self.threshold and (best is None or (score, -position) > (best[0], -best[1])):
                best = (score, position, slot)
        return None if best is None else (best[2].split(":", 1)[1], best[0])

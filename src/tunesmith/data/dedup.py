"""Exact and near-duplicate removal (MinHash + LSH, see nearlsh.py), keeping the first occurrence.

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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from tunesmith.data import nearlsh

if TYPE_CHECKING:
    from tunesmith.data.rows import Rows

MAX_LISTED = 200  # removed pairs listed in a report; counts stay exact
CHAR_SHINGLE_BELOW = 5  # median words under which character shingles are used
WORDS_PER_SHINGLE_WORD = 25  # n ≥ 25·k keeps a 2-word edit above Jaccard 0.85
# LSH is only the candidate filter: run it below the threshold so pairs just above it are
# almost never missed, then verify exactly.
LSH_MARGIN = 0.15
_WORD = re.compile(r"\w+")
SetsOf = Callable[[list[int]], dict[int, set[str]]]  # shingle sets of the examples at these positions


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


def dedup_rows(
    rows: Rows, *, near: bool = True, threshold: float = 0.85, num_perm: int = 128, seed: int = 0, upto: int | None = None
) -> tuple[np.ndarray, DedupReport]:
    """Exact duplicates (Rows' `exact` column: example.normalised_key), then near-duplicates; the first
    occurrence of each is kept. The rows kept, in file order, and the report. tests/reference_dedup.py
    is the same rule on lists of examples, which tests check this against.
    `upto`: only the first rows (the file's; splits given as files follow them and stay as given)."""
    n = len(rows) if upto is None else upto
    _, first, inverse = np.unique(rows.column("exact")[:n], return_index=True, return_inverse=True)
    original = first[inverse.reshape(-1)]  # the row each row repeats; itself for a first occurrence
    kept = np.flatnonzero(original == np.arange(n))
    repeats = np.flatnonzero(original != np.arange(n))
    listed = repeats[:MAX_LISTED]
    pairs = [DuplicatePair(removed=r, kept=k, kind="exact", similarity=1.0) for r, k in zip(rows.ids(listed), rows.ids(original[listed]))]
    shingler = shingler_for_lengths(rows.column("words")[kept]) if near else None
    n_near = 0
    if shingler is not None:

        def sets_of(positions: list[int]) -> dict[int, set[str]]:
            return {p: shingler(t) for p, t in zip(positions, rows.texts(kept[positions]))}

        found = near_duplicates_in_order((shingler(t) for t in rows.texts(kept)), sets_of, threshold, num_perm, seed, count=len(kept))
        n_near = len(found)
        listed_near = found[: max(0, MAX_LISTED - len(pairs))]
        removed_ids, kept_ids = rows.ids([int(kept[j]) for j, _, _ in listed_near]), rows.ids([int(kept[i]) for _, i, _ in listed_near])
        pairs += [DuplicatePair(removed=r, kept=k, kind="near", similarity=round(s, 4)) for r, k, (_, _, s) in zip(removed_ids, kept_ids, listed_near)]
        kept = np.delete(kept, [j for j, _, _ in found])
    report = DedupReport(
        examples_in=n,
        examples_out=len(kept),
        exact=len(repeats),
        near=n_near,
        threshold=threshold if near else None,
        shingles=shingler.name if shingler else None,
        pairs=pairs[:MAX_LISTED],
    )
    return kept, report


class NearIndex:
    """Reference shingle sets sketched once and asked about several query sets (validation, then test)."""

    def __init__(self, reference: Iterable[set[str]], reference_sets: SetsOf, threshold: float, num_perm: int = 128, seed: int = 0, count: int | None = None):
        self.sketcher, self.threshold, self.reference_sets = _sketcher(threshold, num_perm, seed), threshold, reference_sets
        self.sketches = self.sketcher.sketch(reference, count)

    def matches(self, queries: Iterable[set[str]], query_sets: SetsOf, count: int | None = None) -> dict[int, int]:
        query_sketches = self.sketcher.sketch(queries, count)
        if not len(query_sketches) or not len(self.sketches):
            return {}
        q, ref = nearlsh.cross_pairs(query_sketches, self.sketches, self.threshold)
        return nearlsh.best_reference(nearlsh.exact_scores(q, ref, query_sets, self.reference_sets, self.threshold))


def near_duplicates_in_order(
    sets: Iterable[set[str]], sets_of: SetsOf, threshold: float, num_perm: int = 128, seed: int = 0, count: int | None = None
) -> list[tuple[int, int, float]]:
    """(removed, kept, similarity) by position: each example against the earlier ones kept."""
    sketches = _sketcher(threshold, num_perm, seed).sketch(sets, count)
    i, j = nearlsh.self_pairs(sketches, threshold)
    return nearlsh.sequential_keep(len(sketches), nearlsh.exact_scores(i, j, sets_of, sets_of, threshold))


def _sketcher(threshold: float, num_perm: int, seed: int) -> nearlsh.Sketcher:
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    return nearlsh.Sketcher(max(0.05, threshold - LSH_MARGIN), num_perm, seed)


# --- text and shingles -------------------------------------------------------------------------


class Shingler:
    """Turns a text into its shingle set; one unit for a whole comparison, so sets are comparable."""

    def __init__(self, unit: str, k: int):
        self.unit, self.k = unit, k
        self.name = f"{unit}-{k}"

    def __call__(self, text: str) -> set[str]:
        words = _WORD.findall(text.casefold())
        if not words:
            return {text.casefold().strip()}
        if self.unit == "word":
            if len(words) <= self.k:
                return {" ".join(words)}
            if self.k == 1:
                return set(words)
            return {" ".join(gram) for gram in zip(*(words[i:] for i in range(self.k)))}
        joined = " ".join(words)
        if len(joined) <= self.k:
            return {joined}
        return {joined[i : i + self.k] for i in range(len(joined) - self.k + 1)}


def shingler_for_lengths(lengths: Sequence[int]) -> Shingler:
    """The shingle unit for texts of these word counts (see the module docstring)."""
    median = statistics.median(lengths) if len(lengths) else 0
    if median < CHAR_SHINGLE_BELOW:
        return Shingler("char", 3)
    return Shingler("word", int(min(3, max(1, median // WORDS_PER_SHINGLE_WORD))))

"""The list-based reference for dedup.py: dedup and the split leak pairs on lists of Example objects.

`data prepare` runs dedup.dedup_rows on examples held as Rows (spill file + columns); this is the
same rule written plainly, kept only for tests to check the streaming version against
(test_rows.py) and to state the rule's behaviour on small inputs (test_dedup.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from tunesmith.data.dedup import _WORD, MAX_LISTED, DedupReport, DuplicatePair, NearIndex, SetsOf, Shingler, near_duplicates_in_order, shingler_for_lengths
from tunesmith.data.example import Example, normalised_key


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
        examples_in=len(examples),
        examples_out=len(kept),
        exact=n_exact,
        near=len(pairs) - n_exact,
        threshold=threshold if near else None,
        shingles=shingler.name if shingler else None,
        pairs=pairs[:MAX_LISTED],
    )
    return kept, report


def near_duplicate_pairs(
    candidates: list[Example],
    reference: list[Example],
    threshold: float = 0.85,
    *,
    prompt_only: bool = False,
    num_perm: int = 128,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """(candidate id, reference id) for each candidate that is a near-duplicate of some reference
    example (the most similar one): the leakage check between splits."""
    if not candidates or not reference:
        return []
    texts = [dedup_text(e, prompt_only) for e in candidates], [dedup_text(e, prompt_only) for e in reference]
    shingler = choose_shingles(texts[0] + texts[1])
    sets = [shingler(t) for t in texts[0]], [shingler(t) for t in texts[1]]
    found = near_matches(sets[0], sets[1], _by_index(sets[0]), _by_index(sets[1]), threshold, num_perm, seed)
    return [(candidates[q].id, reference[ref].id) for q, ref in sorted(found.items())]


def near_matches(
    queries: Iterable[set[str]], reference: Iterable[set[str]], query_sets: SetsOf, reference_sets: SetsOf, threshold: float, num_perm: int = 128, seed: int = 0
) -> dict[int, int]:
    """query index -> index of its most similar reference at or above the threshold."""
    return NearIndex(reference, reference_sets, threshold, num_perm, seed).matches(queries, query_sets)


def _by_index(sets: list[set[str]]) -> SetsOf:
    return lambda indices: {i: sets[i] for i in indices}


def dedup_text(example: Example, prompt_only: bool = False) -> str:
    """The text near-duplicates are found on (Rows.texts reads the same from the spill file)."""
    messages = example.prompt_messages if prompt_only else example.messages
    return "\n".join(m.content for m in messages if m.role != "system")


def choose_shingles(texts: Iterable[str]) -> Shingler:
    return shingler_for_lengths([len(_WORD.findall(t)) for t in texts])


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


def _drop_near(examples: list[Example], shingler: Shingler, threshold: float, num_perm: int, seed: int) -> tuple[list[Example], list[DuplicatePair]]:
    # Only kept examples count as originals: a chain a≈b≈c with a≉c keeps a and c.
    sets = [shingler(dedup_text(e)) for e in examples]
    found = near_duplicates_in_order(sets, _by_index(sets), threshold, num_perm, seed)
    removed = {j for j, _, _ in found}
    pairs = [DuplicatePair(removed=examples[j].id, kept=examples[i].id, kind="near", similarity=round(score, 4)) for j, i, score in found]
    return [e for k, e in enumerate(examples) if k not in removed], pairs

"""The deterministic train/validation/test split, leak check and overlap check for examples held as
Rows (row numbers and columns).

The rules: per-label stratification with split.py's `_share`, whole groups with its `_open_split`,
given splits kept as given, exact then near prompt leaks removed from validation and test, and each
split ordered by the seeded content rank (sha256 of seed and content key). tests/reference_split.py
states the same rules on lists of Example objects; tests/test_rows.py checks the two agree.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tunesmith.data.example import Example
from tunesmith.data.rows import NO_VALUE, Rows
from tunesmith.data.split import MAX_LISTED, SPLITS, LeakedPair, LeakReport, OverlapReport, _open_split, _share
from tunesmith.errors import UserError

Splits = dict[str, np.ndarray]  # split name -> row numbers, in the split's order


def _by_rank(rows: Rows, selected: np.ndarray) -> np.ndarray:
    """`selected` stably sorted by rank: ties (identical content) keep their order."""
    rank = rows.column("rank")[selected]
    return selected[np.lexsort((np.arange(len(selected)), rank[:, 1], rank[:, 0]))]


def split_rows(rows: Rows, selected: np.ndarray, ratios: tuple[float, float, float], seed: int, group_by: str | None = None) -> Splits:
    if group_by is not None:
        return _split_groups(rows, selected, ratios, seed, group_by)
    labels = rows.column("labels")[selected]
    # Labels in sorted order, examples without a label last.
    position = {number: i for i, number in enumerate(sorted(range(len(rows.label_names)), key=lambda n: rows.label_names[n]))}
    label_order = np.array([position.get(int(n), len(position)) for n in range(-1, len(rows.label_names))], dtype=np.int64)[labels + 1]
    rank = rows.column("rank")[selected]
    order = np.lexsort((np.arange(len(selected)), rank[:, 1], rank[:, 0], label_order))
    assigned = np.empty(len(selected), dtype=np.int8)  # 0 train, 1 validation, 2 test, in `order`
    sorted_labels = label_order[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    for start, stop in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(order)]))):
        n = int(stop - start)
        n_val, n_test = (_share(n, r) for r in ratios[1:])
        assigned[start : start + n_test] = 2
        assigned[start + n_test : start + n_test + n_val] = 1
        assigned[start + n_test + n_val : stop] = 0
    ordered = selected[order]
    return {name: _by_rank(rows, ordered[assigned == code]) for code, name in enumerate(SPLITS)}


def _split_groups(rows: Rows, selected: np.ndarray, ratios: tuple[float, float, float], seed: int, group_by: str) -> Splits:
    groups = rows.column("groups")[selected]
    missing = np.flatnonzero(groups == NO_VALUE)
    if len(missing):
        example_id = rows.ids([int(selected[missing[0]])])[0]
        raise UserError(
            f"example '{example_id}' has no meta.{group_by}, so it cannot be kept with its group",
            where=f"example {example_id}",
            fix=f"give every example a meta.{group_by} value, or split without --group-by",
        )
    present = np.unique(groups)
    sizes = np.bincount(groups, minlength=len(rows.group_names))
    order = sorted(present.tolist(), key=lambda g: hashlib.sha256(f"{seed}:group:{rows.group_names[g]}".encode()).hexdigest())
    targets = {"test": len(selected) * ratios[2], "validation": len(selected) * ratios[1]}
    lengths = {name: 0 for name in SPLITS}
    split_of = np.empty(len(rows.group_names), dtype=np.int8)
    position = np.empty(len(rows.group_names), dtype=np.int64)
    for rank, group in enumerate(order):
        # _open_split only looks at the lengths of what each split holds.
        name = _open_split({k: _Length(v) for k, v in lengths.items()}, targets, int(sizes[group]))
        lengths[name] += int(sizes[group])
        split_of[group], position[group] = SPLITS.index(name), rank
    # Within a split: groups in their hashed order, each group's examples in file order, then by rank.
    order_rows = np.lexsort((np.arange(len(selected)), position[groups]))
    ordered, codes = selected[order_rows], split_of[groups][order_rows]
    return {name: _by_rank(rows, ordered[codes == code]) for code, name in enumerate(SPLITS)}


class _Length:
    """Stands in for a list in _open_split, which asks only for len()."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def assign_given(rows: Rows, selected: np.ndarray, given: dict[str, np.ndarray], ratios: tuple[float, float, float], seed: int, group_by: str | None) -> Splits:
    """Given splits kept as given; the missing ones carved out of `selected`, in the proportions `ratios`
    give them relative to train."""
    wanted = tuple(0.0 if name in given else r for name, r in zip(SPLITS, ratios))
    total = sum(wanted)
    carved = split_rows(rows, selected, tuple(r / total for r in wanted), seed, group_by)  # type: ignore[arg-type]
    return {name: given.get(name, carved[name]) for name in SPLITS}


def remove_leaks(rows: Rows, splits: Splits, near_threshold: float | None, given: frozenset[str] = frozenset()) -> LeakReport:
    """Evaluation rows whose prompt is also in train (exactly, or near with `near_threshold`: a reworded
    copy leaks the answer just the same) would measure memory, not skill; they leave `splits` in place.
    A split named in `given`
    came from the user's own file and is never cut: the training examples repeating its prompts
    (exactly, or near with `near_threshold`) leave train instead."""
    from tunesmith.data.dedup import NearIndex, shingler_for_lengths

    prompts = rows.column("prompt")
    indexes: dict[str, NearIndex] = {}  # train sketched once per shingle unit, for both splits
    exact, near, pairs, from_train = {}, {}, [], {}
    for name in ("validation", "test"):
        if name in given:
            from_train[name], found_pairs = _remove_from_train(rows, splits, name, near_threshold)
            pairs += found_pairs
            exact[name] = 0
            continue
        train = splits["train"]
        before = len(splits[name])
        splits[name] = splits[name][~np.isin(prompts[splits[name]], prompts[train])]
        exact[name] = before - len(splits[name])
        if near_threshold is None:
            continue
        candidates = splits[name]
        found: dict[str, str] = {}
        if len(candidates) and len(train):
            words = rows.column("prompt_words")
            shingler = shingler_for_lengths(np.concatenate([words[candidates], words[train]]))
            if shingler.name not in indexes:
                indexes[shingler.name] = NearIndex(
                    (shingler(t) for t in rows.texts(train, prompt_only=True)), _sets_of(rows, train, shingler), near_threshold, count=len(train)
                )
            matches = indexes[shingler.name].matches(
                (shingler(t) for t in rows.texts(candidates, prompt_only=True)), _sets_of(rows, candidates, shingler), count=len(candidates)
            )
            ordered = sorted(matches.items())
            ids = rows.ids([int(candidates[q]) for q, _ in ordered])
            train_ids = rows.ids([int(train[ref]) for _, ref in ordered])
            found = dict(zip(ids, train_ids))
        if found:
            keep = np.array([i not in found for i in rows.ids(candidates)], dtype=bool)
            splits[name] = candidates[keep]
        near[name] = len(found)
        pairs += [LeakedPair(split=name, removed=c, train_id=t, kind="near") for c, t in found.items()]
    return LeakReport(exact=exact, near=near, near_threshold=near_threshold, pairs=pairs[:MAX_LISTED], removed_from_train=from_train)


def _remove_from_train(rows: Rows, splits: Splits, name: str, near_threshold: float | None) -> tuple[int, list[LeakedPair]]:
    """Training rows whose prompt repeats (or nearly repeats) one of the given split's prompts leave train."""
    from tunesmith.data.dedup import NearIndex, shingler_for_lengths

    prompts = rows.column("prompt")
    train, held = splits["train"], splits[name]
    exact = np.isin(prompts[train], prompts[held])
    pairs: list[LeakedPair] = []
    if exact.any():
        by_prompt = {bytes(p): i for i, p in zip(rows.ids(held), prompts[held])}
        removed = train[exact]
        pairs += [
            LeakedPair(split="train", removed=i, train_id=None, kind="exact", matches=by_prompt[bytes(p)])
            for i, p in zip(rows.ids(removed[:MAX_LISTED]), prompts[removed[:MAX_LISTED]])
        ]
    remaining = train[~exact]
    if near_threshold is not None and len(remaining) and len(held):
        words = rows.column("prompt_words")
        shingler = shingler_for_lengths(np.concatenate([words[held], words[remaining]]))
        index = NearIndex((shingler(t) for t in rows.texts(held, prompt_only=True)), _sets_of(rows, held, shingler), near_threshold, count=len(held))
        matches = index.matches((shingler(t) for t in rows.texts(remaining, prompt_only=True)), _sets_of(rows, remaining, shingler), count=len(remaining))
        ordered = sorted(matches.items())
        listed = ordered[:MAX_LISTED]
        pairs += [
            LeakedPair(split="train", removed=r, train_id=None, kind="near", matches=g)
            for r, g in zip(rows.ids([int(remaining[q]) for q, _ in listed]), rows.ids([int(held[ref]) for _, ref in listed]))
        ]
        if ordered:
            remaining = np.delete(remaining, [q for q, _ in ordered])
    splits["train"] = remaining
    return len(train) - len(remaining), pairs


def _sets_of(rows: Rows, selected: np.ndarray, shingler):
    def sets(positions: list[int]) -> dict[int, set[str]]:
        texts = rows.texts([int(selected[p]) for p in positions], prompt_only=True)
        return {p: shingler(t) for p, t in zip(positions, texts)}

    return sets


def check_overlap(rows: Rows, splits: Splits, extra_train: list[Example] = ()) -> OverlapReport:  # type: ignore[assignment]
    """Evaluation rows (by content, and test by prompt) also in train, plus examples added to train
    (e.g. paraphrases): all zero when clean."""
    content, prompts = rows.column("content"), rows.column("prompt")
    train_keys, train_prompts = content[splits["train"]], prompts[splits["train"]]
    if extra_train:
        train_keys = np.concatenate([train_keys, np.array([bytes.fromhex(e.content_key()) for e in extra_train], dtype="V32")])
        train_prompts = np.concatenate([train_prompts, np.array([_prompt_digest(e) for e in extra_train], dtype="V16")])
    return OverlapReport(
        validation_in_train=int(np.isin(content[splits["validation"]], train_keys).sum()),
        test_in_train=int(np.isin(content[splits["test"]], train_keys).sum()),
        test_prompts_in_train=int(np.isin(prompts[splits["test"]], train_prompts).sum()),
    )


def _prompt_digest(example: Example) -> bytes:
    from tunesmith.data.example import messages_key

    return messages_key(example.prompt_messages)[:16]


def unseen_labels(rows: Rows, splits: Splits, extra_train: list[Example] = ()) -> list[str]:  # type: ignore[assignment]
    """label_unseen_in_train: an evaluation label the model never saw in training cannot be learned."""
    labels = rows.column("labels")
    seen = {rows.label_names[n] for n in np.unique(labels[splits["train"]]) if n != NO_VALUE}
    seen |= {e.label for e in extra_train if e.label is not None}
    warnings = []
    for name in ("validation", "test"):
        unseen = sorted({rows.label_names[n] for n in np.unique(labels[splits[name]]) if n != NO_VALUE} - seen)
        if unseen:
            warnings.append(f"label_unseen_in_train: {name} has label(s) {', '.join(unseen)} that no training example has")
    return warnings

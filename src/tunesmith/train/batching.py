"""Encoded examples into batches: length-grouped and padded, or packed (a batch's examples laid
end to end in rows of up to max_seq_len tokens, position ids restarting at each example and no
attention across examples). Packing changes only the layout, never which examples form a step,
so a packed step computes the same loss as a padded one.
"""

from __future__ import annotations

import random

import torch

from tunesmith.chat_template import IGNORE, Encoded, collate, collate_flat, distill_mask


def length_grouped_batches(items: list[Encoded], batch_size: int, seed: int, epoch: int) -> list[list[Encoded]]:
    """Batches of similar length, in a seeded random order: little padding, still shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(items[i].input_ids))
        batches.extend([items[i] for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# Packing pays when length-grouped batches would spend more than this share of their tokens on padding.
PACKING_WASTE_THRESHOLD = 0.10


class Batch(list):
    """One global batch of examples (what the optimiser sees), with how it is laid out into tensors
    and which share of it this process computes (data parallel: rank of world)."""

    def __init__(
        self,
        items: list[Encoded],
        packed: bool = False,
        capacity: int = 0,
        rank: int = 0,
        world: int = 1,
        max_tokens: int | None = None,
        flat: bool = False,
    ):
        super().__init__(items)
        self.packed, self.capacity, self.rank, self.world, self.max_tokens = packed, capacity, rank, world, max_tokens
        self.flat = flat  # packed as flat rows with example boundaries (needs segments.use_segment_attention)

    def local(self) -> list[Encoded]:
        """This process's share: examples dealt longest first to the share with the fewest tokens so far,
        so every process gets about the same work."""
        if self.world == 1:
            return list(self)
        shares: list[list[Encoded]] = [[] for _ in range(self.world)]
        sizes = [0] * self.world
        for item in sorted(self, key=lambda item: (-len(item.input_ids), item.example_id)):
            target = sizes.index(min(sizes))
            shares[target].append(item)
            sizes[target] += len(item.input_ids)
        return shares[self.rank]


def padding_waste(items: list[Encoded], batch_size: int, seed: int) -> float:
    """Share of the tokens in length-grouped padded batches that are padding."""
    batches = length_grouped_batches(items, batch_size, seed, 1)
    padded = sum(len(batch) * max(len(item.input_ids) for item in batch) for batch in batches)
    return 1 - sum(len(item.input_ids) for item in items) / max(1, padded)


def choose_packing(setting: str | bool, items: list[Encoded], batch_size: int, seed: int) -> tuple[bool, float]:
    """(pack?, padding waste of the length-grouped alternative). 'auto' packs when that waste exceeds the threshold."""
    waste = padding_waste(items, batch_size, seed)
    return (waste > PACKING_WASTE_THRESHOLD if setting == "auto" else bool(setting)), waste


def make_batches(
    items: list[Encoded],
    batch_size: int,
    seed: int,
    epoch: int,
    packed: bool,
    capacity: int,
    rank: int = 0,
    world: int = 1,
    max_tokens: int | None = None,
    flat: bool = False,
) -> list[Batch]:
    """The epoch's global batches. Padded ones are length-grouped to save padding; packed ones need not
    be, so they are plain seeded shuffles (a less length-biased mix of examples in each step)."""
    if packed:
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(len(items)))
        rng.shuffle(order)
        groups = [[items[i] for i in order[b : b + batch_size]] for b in range(0, len(order), batch_size)]
    else:
        groups = length_grouped_batches(items, batch_size, seed, epoch)
    return [Batch(group, packed, capacity, rank, world, max_tokens, flat and packed) for group in groups]


def pack_rows(items: list[Encoded], capacity: int) -> list[list[Encoded]]:
    """First-fit decreasing: longest examples first, each into the first row with room."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda item: (-len(item.input_ids), item.example_id)):
        size = len(item.input_ids)
        slot = next((r for r, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([])
            room.append(max(capacity, size))
            slot = len(rows) - 1
        rows[slot].append(item)
        room[slot] -= size
    return rows


def collate_packed(items: list[Encoded], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """Rows of examples laid end to end. No attention mask: transformers reads the restarting
    position ids as separate sequences and masks attention between them (masking_utils'
    find_packed_sequence_indices). Padding at a row's end starts a sequence of its own."""
    return _packed_tensors(pack_rows(items, capacity), pad_id)


def _packed_tensors(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(sum(len(item.input_ids) for item in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    placed, places = [], []
    for r, row in enumerate(rows):
        start = 0
        for item in row:
            n = len(item.input_ids)
            ids[r, start : start + n] = torch.tensor(item.input_ids)
            labels[r, start : start + n] = torch.tensor(item.labels)
            labels[r, start] = IGNORE  # nothing in this example predicts its first token; the previous example must not
            positions[r, start : start + n] = torch.arange(n)
            placed.append(item)
            places.append((r, start))
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, **distill_mask(placed, places, labels.shape)}


def flat_passes(items: list[Encoded], max_tokens: int | None) -> list[list[Encoded]]:
    """Whole examples into forward passes of at most max_tokens tokens (an example longer than that
    gets a pass of its own), first-fit decreasing: few passes, and no padding in any of them."""
    if max_tokens is None:
        return [sorted(items, key=lambda item: (-len(item.input_ids), item.example_id))]
    return pack_rows(items, max_tokens)


def _chunks(rows: list[list[Encoded]], width_of, max_tokens: int | None) -> list[list[list[Encoded]]]:
    """Consecutive rows grouped so that rows x widest row stays within max_tokens (at least one row each)."""
    if max_tokens is None:
        return [rows]
    chunks: list[list[list[Encoded]]] = []
    for row in rows:
        if chunks and (len(chunks[-1]) + 1) * max(width_of(row), *map(width_of, chunks[-1])) <= max_tokens:
            chunks[-1].append(row)
        else:
            chunks.append([row])
    return chunks


def batch_tensors(batch: list[Encoded], pad_id: int) -> list[dict[str, torch.Tensor]]:
    """This process's share of a batch as model inputs, in forward passes of at most batch.max_tokens
    tokens (padding included). Splitting is exact, since the step divides by the whole batch's
    trained tokens; it bounds activation memory, which grows with the tokens of one forward pass."""
    if not isinstance(batch, Batch):
        return [collate(batch, pad_id)]
    local = batch.local()
    if not local:
        return []
    if batch.packed and batch.flat:
        return [collate_flat(chunk) for chunk in flat_passes(local, batch.max_tokens)]
    if batch.packed:
        rows = pack_rows(local, batch.capacity)
        return [_packed_tensors(chunk, pad_id) for chunk in _chunks(rows, lambda r: sum(len(i.input_ids) for i in r), batch.max_tokens)]
    return [collate(chunk, pad_id) for chunk in padded_chunks(local, batch.max_tokens)]


def padded_chunks(items: list, max_tokens: int | None) -> list[list]:
    """Items shortest first, grouped so that each group padded to its longest stays within max_tokens
    (at least one item a group); any item with `input_ids` (causal-LM or classifier)."""
    rows = [[item] for item in sorted(items, key=lambda item: len(item.input_ids))]
    return [[row[0] for row in chunk] for chunk in _chunks(rows, lambda r: len(r[0].input_ids), max_tokens)]


def tokens_per_forward(setting: int | None, max_seq_len: int, device_type: str) -> int | None:
    """None (no limit) on GPUs, where bigger forward passes run faster; on CPUs a pass of about a
    thousand tokens already keeps the matrix units busy, and more only costs memory."""
    if setting is not None:
        return setting
    return None if device_type == "cuda" else max(max_seq_len, 1024)

"""Near-duplicate search over a whole dataset in flat numpy arrays instead of one object per example.

The answer is the one datasketch's MinHashLSH gives, found faster and in far less memory:

* MinHash values are computed with datasketch's own permutations and scheme (affine32: SHA-1
  32-bit hash, MurmurHash3 finalizer, a·h+b in uint32), for a batch of examples at once.
* A pair is a candidate when the two agree on all r values of some band, with the b and r that
  MinHashLSH picks for the same threshold. Bands are kept as one 64-bit key each (a candidate
  from a 64-bit collision would still have to pass the exact check below).
* Candidates are pruned with a bound that can never drop a true match: a 512-bit signature per
  shingle set (one bit per shingle) shows shingles of A that cannot be in B, which caps
  |A ∩ B| and so the Jaccard similarity. Templated data (support tickets) puts most pairs in a
  shared band (Jaccard 0.4–0.7), so this step is what keeps a million examples tractable.
* Survivors are checked with the exact Jaccard of their shingle sets, as before.

Only per-example arrays stay in memory (band keys, set size, signature: about 180 bytes an
example); the texts are read back only for the pairs the bound lets through.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator

import numpy as np

SIGNATURE_BITS = 512
_WORDS = SIGNATURE_BITS // 64
_BATCH = 512  # examples hashed per numpy call: its (shingles x permutations) table is the peak
_PAIR_CHUNK = 200_000  # candidate pairs expanded at once (~200 bytes each while filtered)
_HASH_CACHE_LIMIT = 200_000  # ~25 MB; frequent shingles are back in it soon after it is cleared
_M64 = np.uint64(0xFF51AFD7ED558CCD)
_M64B = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def _fmix64(hv: np.ndarray) -> np.ndarray:
    hv = hv ^ (hv >> _S33)
    hv = hv * _M64
    hv = hv ^ (hv >> _S33)
    hv = hv * _M64B
    return hv ^ (hv >> _S33)


class Sketches:
    """Per example: LSH band keys (n, b), shingle-set size (n,), bit signature (n, 8)."""

    def __init__(self, bands: np.ndarray, sizes: np.ndarray, signatures: np.ndarray):
        self.bands, self.sizes, self.signatures = bands, sizes, signatures

    def __len__(self) -> int:
        return len(self.sizes)


class Sketcher:
    """MinHash band keys exactly as `MinHashLSH(threshold=lsh_threshold, num_perm)` would bucket
    `MinHash(num_perm, seed)` sketches."""

    def __init__(self, lsh_threshold: float, num_perm: int = 128, seed: int = 0):
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=lsh_threshold, num_perm=num_perm)
        self.b, self.r = lsh.b, lsh.r
        template = MinHash(num_perm=num_perm, seed=seed)
        if template.scheme != "affine32":  # the arithmetic below is that scheme's
            raise RuntimeError(f"unexpected datasketch MinHash scheme {template.scheme!r}")
        self.a, self.c = (np.asarray(p, dtype=np.uint32) for p in template.permutations)
        self._hashes: dict[str, int] = {}

    def _hash(self, shingle: str) -> int:
        # datasketch's sha1_hash32; shingles repeat across examples, so each is hashed once.
        value = self._hashes.get(shingle)
        if value is None:
            if len(self._hashes) >= _HASH_CACHE_LIMIT:
                self._hashes.clear()
            value = self._hashes[shingle] = struct.unpack("<I", hashlib.sha1(shingle.encode()).digest()[:4])[0]
        return value

    def minhashes(self, sets: list[set[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(len(sets), num_perm) uint32 rows equal to MinHash.update_batch(set).hashvalues; also
        each shingle's 32-bit hash and each set's size."""
        sizes = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
        cache, hash_ = self._hashes, self._hash
        hv = np.array([cache.get(x) or hash_(x) for s in sets for x in s], dtype=np.uint32)
        # Permutations along rows: the reduction then runs over contiguous memory.
        phv = self.a[:, None] * _fmix32(hv)[None, :] + self.c[:, None]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        return np.minimum.reduceat(phv, starts, axis=1).T, hv, sizes

    def sketch(self, sets: Iterable[set[str]], count: int | None = None) -> Sketches:
        """Sketches of `sets`; with their `count` known the arrays are filled in place (no second copy)."""
        out = Sketches(np.zeros((count or 0, self.b), np.uint64), np.zeros(count or 0, np.int32), np.zeros((count or 0, _WORDS), np.uint64))
        parts: list[Sketches] = []
        filled = 0
        batch: list[set[str]] = []
        for shingles in itertools.chain(sets, [None]):
            if shingles is not None:
                batch.append(shingles)
                if len(batch) < _BATCH:
                    continue
            if not batch:
                break
            part = self._sketch_batch(batch)
            if count is None:
                parts.append(part)
            else:
                out.bands[filled : filled + len(batch)], out.sizes[filled : filled + len(batch)] = part.bands, part.sizes
                out.signatures[filled : filled + len(batch)] = part.signatures
            filled += len(batch)
            batch = []
        if count is None and parts:
            return Sketches(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("bands", "sizes", "signatures")))
        if count is not None and filled != count:
            raise ValueError(f"expected {count} shingle sets, got {filled}")
        return out

    def _sketch_batch(self, batch: list[set[str]]) -> Sketches:
        values, hv, counts = self.minhashes(batch)
        keys = np.empty((len(batch), self.b), dtype=np.uint64)
        for band in range(self.b):
            key = np.full(len(batch), band + 1, dtype=np.uint64)
            for column in values[:, band * self.r : (band + 1) * self.r].T:
                key = _fmix64(key ^ column.astype(np.uint64))
            keys[:, band] = key
        signature = np.zeros(len(batch) * _WORDS, dtype=np.uint64)
        bit = hv % np.uint32(SIGNATURE_BITS)
        owner = np.repeat(np.arange(len(batch)), counts)
        np.bitwise_or.at(signature, owner * _WORDS + (bit >> np.uint32(6)), np.uint64(1) << (bit & np.uint32(63)).astype(np.uint64))
        return Sketches(keys, counts.astype(np.int32), signature.reshape(len(batch), _WORDS))


# --- candidate pairs ----------------------------------------------------------------------------


def _expand(first: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For element e with partners at first[e] .. first[e] + counts[e] - 1: (e, partner) rows."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(first, counts) + offsets


def _chunks(counts: np.ndarray) -> Iterator[slice]:
    """Consecutive element ranges whose partner counts add up to about _PAIR_CHUNK."""
    total = np.cumsum(counts)
    start = 0
    while start < len(counts):
        base = total[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(total, base + _PAIR_CHUNK, side="right")))
        yield slice(start, stop)
        start = stop


def _may_reach(sk_a: Sketches, a: np.ndarray, sk_b: Sketches, b: np.ndarray, threshold: float) -> np.ndarray:
    """False only where Jaccard(a, b) < threshold for certain: a shingle of A whose bit B lacks is not in B."""
    sig_a, sig_b = sk_a.signatures[a], sk_b.signatures[b]
    only_a = np.bitwise_count(sig_a & ~sig_b).sum(axis=1, dtype=np.int64)
    only_b = np.bitwise_count(sig_b & ~sig_a).sum(axis=1, dtype=np.int64)
    size_a, size_b = sk_a.sizes[a].astype(np.int64), sk_b.sizes[b].astype(np.int64)
    inter = np.minimum(size_a - only_a, size_b - only_b)
    # The small slack keeps float rounding from ever dropping a pair exactly at the threshold.
    return inter >= (threshold - 1e-9) * (size_a + size_b - inter)


def self_pairs(sketches: Sketches, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j sharing a band and not ruled out by the bound, each pair once."""
    found = []
    for band in range(sketches.bands.shape[1]):
        keys = sketches.bands[:, band]
        order = np.argsort(keys, kind="stable")  # stable: within a bucket, original order
        ordered = keys[order]
        change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        ends = np.repeat(np.append(change, len(keys)), np.diff(np.concatenate(([0], change, [len(keys)]))))
        counts = ends - np.arange(len(keys)) - 1
        for part in _chunks(counts):
            owner, partner = _expand(np.arange(part.start, part.stop) + 1, counts[part])
            i, j = order[owner + part.start], order[partner]
            keep = _may_reach(sketches, i, sketches, j, threshold)
            found.append(i[keep].astype(np.int64) << 32 | j[keep].astype(np.int64))
    return _unique_pairs(found)


def cross_pairs(queries: Sketches, reference: Sketches, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, reference) sharing a band and not ruled out by the bound, each pair once."""
    found = []
    for band in range(queries.bands.shape[1]):
        ref_order = np.argsort(reference.bands[:, band], kind="stable")
        ref_keys = reference.bands[ref_order, band]
        lo = np.searchsorted(ref_keys, queries.bands[:, band], side="left")
        counts = np.searchsorted(ref_keys, queries.bands[:, band], side="right") - lo
        for part in _chunks(counts):
            owner, partner = _expand(lo[part], counts[part])
            q, ref = owner + part.start, ref_order[partner]
            keep = _may_reach(queries, q, reference, ref, threshold)
            found.append(q[keep].astype(np.int64) << 32 | ref[keep].astype(np.int64))
    return _unique_pairs(found)


def _unique_pairs(found: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    packed = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return packed >> 32, packed & 0xFFFFFFFF


# --- exact check and the two decisions --------------------------------------------------------------


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def exact_scores(
    left: np.ndarray,
    right: np.ndarray,
    sets_left: Callable[[list[int]], dict[int, set[str]]],
    sets_right: Callable[[list[int]], dict[int, set[str]]],
    threshold: float,
    chunk: int = 5_000,
) -> list[tuple[int, int, float]]:
    """(left, right, Jaccard) for the pairs at or above the threshold; shingle sets are fetched a
    chunk of pairs at a time, so only those sets are ever in memory."""
    out = []
    for start in range(0, len(left), chunk):
        lpart, rpart = left[start : start + chunk].tolist(), right[start : start + chunk].tolist()
        a, b = sets_left(sorted(set(lpart))), sets_right(sorted(set(rpart)))
        for i, j in zip(lpart, rpart):
            score = jaccard(a[i], b[j])
            if score >= threshold:
                out.append((i, j, score))
    return out


def sequential_keep(n: int, scored: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Walk the examples in order, each compared only with earlier ones still kept (the index of
    kept examples datasketch was queried against): (removed, kept, similarity) in file order;
    the most similar wins, the earliest on ties."""
    by_later: dict[int, list[tuple[int, float]]] = {}
    for i, j, score in scored:
        by_later.setdefault(j, []).append((i, score))
    removed = np.zeros(n, dtype=bool)
    pairs = []
    for j in sorted(by_later):
        best = None
        for i, score in by_later[j]:
            if not removed[i] and (best is None or (score, -i) > (best[1], -best[0])):
                best = (i, score)
        if best is not None:
            removed[j] = True
            pairs.append((j, best[0], best[1]))
    return pairs


def best_reference(scored: list[tuple[int, int, float]]) -> dict[int, int]:
    """query -> the most similar reference at or above the threshold (the earliest on ties)."""
    best: dict[int, tuple[float, int]] = {}
    for q, ref, score in scored:
        if q not in best or (score, -ref) > (best[q][0], -best[q][1]):
            best[q] = (score, ref)
    return {q: ref for q, (_, ref) in best.items()}

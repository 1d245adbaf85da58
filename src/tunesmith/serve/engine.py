"""The transformers engine: one scheduler thread batches concurrent requests and decodes them together.

Why a decode loop of our own over the model's forward (with its KV cache), not `model.generate`:
generate takes one temperature, top-p, seed, stop list and length for the whole batch, streams
nothing per row, and keeps finished rows in the batch until the longest is done. Here each row
has its own settings and its own torch.Generator, streams its text as it goes, and leaves the
batch (its cache rows dropped) the moment it ends, is cancelled or its client goes away.

A request's answer does not depend on what else is in the batch: prompts are left-padded with
their padding masked and their position ids counted from their own first token (as generate
does), each row samples from its own logits with its own generator, and LoRA adapters are
chosen per row with PEFT's mixed-adapter batches (`adapter_names`), so runs on one base share
ONE copy of its weights. Requests that arrive while a batch runs join it between two steps
(continuous batching): they are prefilled apart and their KV cache left-padded to the running
batch's width, padding that the attention mask weighs at exactly zero.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.models.virtual_tokens import _cache_of

log = logging.getLogger("tunesmith.serve")

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # OpenAI's default; 0 is greedy
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)


@dataclass
class Event:
    """What a job reports, in order: a "delta" for every generated token (text may be "" while held
    back), then one "done" (finish_reason "stop" or "length") or one "error"."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0  # tokens generated so far
    confidence: float | None = None  # "done": the mean probability the model gave the tokens it chose, when the engine knows it


@dataclass
class Job:
    """One choice of one request: a prompt already tokenised, its sampling settings and where its events go.
    `emit` is called from the engine's thread."""

    route: Any  # the engine's handle for the served model (Route here)
    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: bool = False
    queued_at: float = field(default_factory=time.perf_counter)


class TextStream:
    """The answer's text as tokens arrive: what may be sent now, and the final text.

    The final text is `decode(tokens).strip()` cut before the first stop string, as `tunesmith
    generate` answers; while streaming, whitespace at the end and anything that may be the start
    of a stop string are held back, so the chunks always join to exactly the final text."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode, self.stops, self.ids, self.sent = decode, stops, [], 0
        self.stopped = False

    def _text(self) -> str:
        text = self.decode(self.ids).lstrip()
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            self.stopped = True
            return text[: min(cuts)]
        return text

    def push(self, token: int) -> str:
        """The token's new text that is safe to send (maybe ""); `stopped` tells whether a stop string appeared."""
        self.ids.append(token)
        text = self._text()
        if self.stopped:
            return self.finish()
        safe = text.rstrip().rstrip("\ufffd")  # an incomplete UTF-8 character decodes as U+FFFD until its last byte comes
        hold = max((k for s in self.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
        safe = safe[: len(safe) - hold]
        delta = safe[self.sent :] if len(safe) > self.sent else ""
        self.sent += len(delta)
        return delta

    def finish(self) -> str:
        final = self.final()
        delta = final[self.sent :]
        self.sent = len(final)
        return delta

    def final(self) -> str:
        return self._text().rstrip()


def pick_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0 (or top_p 0), otherwise a draw with the row's own generator after
    temperature and nucleus (top-p) filtering, as transformers' warpers do it."""
    if sampling.temperature == 0 or sampling.top_p == 0 or generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > sampling.top_p  # the most likely token is always kept
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def row_generator(sampling: Sampling) -> torch.Generator | None:
    if sampling.temperature == 0 or sampling.top_p == 0:
        return None
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    return torch.Generator().manual_seed(seed % (2**63))


class Engine:
    """A scheduler thread over a queue of jobs. Subclasses decode a batch (`run_batch`)."""

    name = "engine"
    max_batch = 1

    def __init__(self, batch_window_s: float = 0.005):
        self.queue: deque[Job] = deque()
        self.ready = threading.Condition()
        self.window = batch_window_s
        self.running_rows = 0
        self.closed = False
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size (the server's metrics)
        self.thread = threading.Thread(target=self._loop, name=f"tunesmith-{self.name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.ready:
            self.queue.append(job)
            self.ready.notify()

    def waiting(self) -> int:
        return len(self.queue)

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify()

    def _take(self) -> list[Job]:
        with self.ready:
            while not self.queue and not self.closed:
                self.ready.wait()
            if self.closed:
                return []
        if len(self.queue) < self.max_batch:
            time.sleep(self.window)  # let requests sent together arrive together
        with self.ready:
            first = self.queue[0]
            batch = [j for j in self.queue if self.batchable(first, j)][: self.max_batch]
            for job in batch:
                self.queue.remove(job)
            return batch

    def batchable(self, first: Job, other: Job) -> bool:
        return True

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            live = [j for j in batch if not j.cancelled]
            if not live:
                continue
            self.running_rows = len(live)
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                self.run_batch(live)
            except Exception as exc:  # one bad batch must not stop the server: its requests get an error, others go on
                log.exception("generation failed")
                for job in live:
                    job.emit(Event("error", text=f"generation failed: {type(exc).__name__}"))
            finally:
                self.running_rows = 0

    def run_batch(self, jobs: list[Job]) -> None:
        """Decode these jobs to their end; jobs taken on the way are appended to `jobs`."""
        raise NotImplementedError


# ---------------------------------------------------------------- transformers


@dataclass(eq=False)
class Group:
    """One copy of model weights in memory, and the served names decoded with it."""

    model: Any
    device: torch.device
    pad_id: int
    mixed_adapters: bool  # a PeftModel whose LoRA adapters are picked per row
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_kw(self) -> str:
        from tunesmith.models.virtual_tokens import _cache_keyword

        base = self.model.get_base_model() if self.mixed_adapters else self.model
        return _cache_keyword(base)


@dataclass(eq=False)
class Route:
    """A served model name as the transformers engine runs it."""

    group: Group
    adapter: str | None  # the PEFT adapter name, BASE_ADAPTER for the base itself; None for a plain model
    eot_ids: list[int]
    decode: Callable[[list[int]], str]


@dataclass(eq=False)
class Row:
    """A job being decoded: its text so far, its own generator, its token count."""

    job: Job
    stream: TextStream
    generator: torch.Generator | None
    count: int = 0
    prob_sum: float = 0.0  # the chosen tokens' probabilities (untempered), for the answer's confidence

    @property
    def confidence(self) -> float | None:
        return round(self.prob_sum / self.count, 4) if self.count else None


@dataclass(eq=False)
class Batch:
    """Rows decoded together and the state their next forward needs (one entry per row)."""

    rows: list[Row]
    cache: Any
    mask: torch.Tensor  # [rows, cached positions]: 1 for real tokens, 0 for left padding
    position: torch.Tensor  # [rows, 1]: the position id of each row's last token

    def keep(self, index: list[int]) -> None:
        if len(index) == len(self.rows):
            return
        at = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(at)
        self.mask, self.position = self.mask[at], self.position[at]
        self.rows = [self.rows[i] for i in index]

    def join(self, other: Batch) -> None:
        """Rows prefilled apart join this batch: the shorter side's cache and mask are left-padded
        (masked positions weigh exactly nothing in attention), then the two are stacked."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.position = torch.cat([self.position, other.position])
        self.rows += other.rows


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _joinable(cache: Any) -> bool:
    """Only plain dynamic caches are re-padded to take new rows (sliding-window and other layouts keep their batch)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class TransformersEngine(Engine):
    """Continuous batching: between two decoding steps, requests waiting for the same weights are
    prefilled and join the running batch (up to max_batch rows); rows that end leave it."""

    name = "transformers"

    def __init__(self, max_batch: int = 32, batch_window_s: float = 0.005):
        self.max_batch = max_batch
        super().__init__(batch_window_s)

    def batchable(self, first: Job, other: Job) -> bool:
        return first.route.group is other.route.group

    def _joiners(self, group: Group, room: int) -> list[Job]:
        if room <= 0 or not self.queue:
            return []
        with self.ready:
            found = [j for j in self.queue if j.route.group is group and not j.cancelled][:room]
            for job in found:
                self.queue.remove(job)
        return found

    def _forward(self, group: Group, rows: list[Row], **inputs: Any) -> Any:
        extra = {"adapter_names": [r.job.route.adapter for r in rows]} if group.mixed_adapters else {}
        # logits_to_keep=1: only the last position's logits are needed (a prompt's full logits are rows x length x vocab)
        return group.model(**inputs, use_cache=True, logits_to_keep=1, **extra, **group.forward_kwargs)

    def _prefill(self, group: Group, jobs: list[Job]) -> tuple[Batch, torch.Tensor]:
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), group.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(group.device), mask.to(group.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's own first token, as when alone
        rows = [Row(j, TextStream(j.route.decode, j.sampling.stops), row_generator(j.sampling)) for j in jobs]
        out = self._forward(group, rows, input_ids=ids, attention_mask=mask, position_ids=positions)
        return Batch(rows, _cache_of(out), mask, positions[:, -1:]), out.logits[:, -1, :]

    def _advance(self, batch: Batch, logits: torch.Tensor) -> list[int]:
        """Each row's next token, emitted; rows that end (or whose client left) are dropped from the batch."""
        picked = [(index, pick_token(logits[index], row.job.sampling, row.generator)) for index, row in enumerate(batch.rows) if not row.job.cancelled]
        if picked:
            # The chosen tokens' probabilities in one vectorised step (one sync for the batch): an answer's
            # mean token probability is the confidence `data from-logs --only low-confidence` selects by.
            at = torch.tensor([i for i, _ in picked], device=logits.device)
            chosen = torch.tensor([t for _, t in picked], device=logits.device)
            rows_logits = logits[at].float()
            probs = torch.exp(rows_logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(rows_logits, -1)).tolist()
        keep, tokens = [], []
        for (index, token), prob in zip(picked, probs if picked else [], strict=True):
            row = batch.rows[index]
            job = row.job
            row.count += 1
            row.prob_sum += prob
            if token in job.route.eot_ids:
                job.emit(Event("delta", row.stream.finish(), tokens=row.count))
                job.emit(Event("done", finish_reason="stop", tokens=row.count, confidence=row.confidence))
                continue
            delta = row.stream.push(token)
            if row.stream.stopped:
                job.emit(Event("delta", delta, tokens=row.count))
                job.emit(Event("done", finish_reason="stop", tokens=row.count, confidence=row.confidence))
                continue
            if row.count >= job.sampling.max_tokens:
                job.emit(Event("delta", delta + row.stream.finish(), tokens=row.count))
                job.emit(Event("done", finish_reason="length", tokens=row.count, confidence=row.confidence))
                continue
            job.emit(Event("delta", delta, tokens=row.count))
            keep.append(index)
            tokens.append(token)
        batch.keep(keep)
        return tokens

    @torch.no_grad()
    def run_batch(self, jobs: list[Job]) -> None:
        group: Group = jobs[0].route.group
        batch, logits = self._prefill(group, jobs)
        while True:
            tokens = self._advance(batch, logits)
            joiners = self._joiners(group, self.max_batch - len(batch.rows)) if _joinable(batch.cache) else []
            if joiners:
                jobs.extend(joiners)  # the scheduler reports a failure to every job the batch took, joiners included
                if self.on_batch is not None:
                    self.on_batch(len(batch.rows) + len(joiners))
                more, more_logits = self._prefill(group, joiners)
                tokens += self._advance(more, more_logits)
                if not batch.rows:
                    batch = more
                elif more.rows:
                    batch.join(more)
            self.running_rows = len(batch.rows)
            if not batch.rows:
                return
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
            batch.position = batch.position + 1
            step = torch.tensor(tokens, device=group.device)[:, None]
            out = self._forward(group, batch.rows, input_ids=step, attention_mask=batch.mask, position_ids=batch.position, **{group.cache_kw: batch.cache})
            logits = out.logits[:, -1, :]

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
ONE copy of its weights. The batch is fixed once its prefill ran: requests that arrive meanwhile
wait for the next one (rows joining a running batch would need its cache re-padded; not done).
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
        raise NotImplementedError


# ---------------------------------------------------------------- transformers


@dataclass(eq=False)
class Group:
    """One copy of model weights in memory, and the served names decoded with it."""

    model: Any
    device: torch.device
    pad_id: int
    mixed_adapters: bool  # a PeftModel whose LoRA adapters are picked per row


@dataclass(eq=False)
class Route:
    """A served model name as the transformers engine runs it."""

    group: Group
    adapter: str | None  # the PEFT adapter name, BASE_ADAPTER for the base itself; None for a plain model
    eot_ids: list[int]
    decode: Callable[[list[int]], str]


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, max_batch: int = 32, batch_window_s: float = 0.005):
        self.max_batch = max_batch
        super().__init__(batch_window_s)

    def batchable(self, first: Job, other: Job) -> bool:
        return first.route.group is other.route.group

    @torch.no_grad()
    def run_batch(self, jobs: list[Job]) -> None:
        from tunesmith.models.virtual_tokens import _cache_keyword, _cache_of

        group: Group = jobs[0].route.group
        model, device = group.model, group.device
        base = model.get_base_model() if group.mixed_adapters else model
        cache_kw = _cache_keyword(base)
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), group.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[row, width - len(job.prompt_ids) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        live = list(jobs)
        streams = [TextStream(j.route.decode, j.sampling.stops) for j in live]
        generators = [row_generator(j.sampling) for j in live]
        counts = [0] * len(live)

        def extra() -> dict[str, Any]:
            return {"adapter_names": [j.route.adapter for j in live]} if group.mixed_adapters else {}

        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra())
        while True:
            logits = out.logits[:, -1, :]
            tokens, keep = [], []
            for row, job in enumerate(live):
                if job.cancelled:
                    continue
                token = pick_token(logits[row], job.sampling, generators[row])
                counts[row] += 1
                if token in job.route.eot_ids:
                    job.emit(Event("delta", streams[row].finish(), tokens=counts[row]))
                    job.emit(Event("done", finish_reason="stop", tokens=counts[row]))
                    continue
                delta = streams[row].push(token)
                if streams[row].stopped:
                    job.emit(Event("delta", delta, tokens=counts[row]))
                    job.emit(Event("done", finish_reason="stop", tokens=counts[row]))
                    continue
                if counts[row] >= job.sampling.max_tokens:
                    job.emit(Event("delta", delta + streams[row].finish(), tokens=counts[row]))
                    job.emit(Event("done", finish_reason="length", tokens=counts[row]))
                    continue
                job.emit(Event("delta", delta, tokens=counts[row]))
                tokens.append(token)
                keep.append(row)
            if not keep:
                return
            cache = _cache_of(out)
            if len(keep) < len(live):  # rows that ended leave the batch and its cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                live = [live[r] for r in keep]
                streams = [streams[r] for r in keep]
                generators = [generators[r] for r in keep]
                counts = [counts[r] for r in keep]
            self.running_rows = len(live)
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1
            step = torch.tensor(tokens, device=device)[:, None]
            out = model(input_ids=step, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache}, **extra())

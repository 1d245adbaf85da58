"""Measurements taken during training at chosen steps, logged next to the loss.

A probe is a small callable `probe(model, tokenizer, step) -> {metric: value}` with a `name`
(the prefix of its keys in metrics.jsonl, e.g. "gen/exact_match") and `every_steps`. The
trainer asks `Probes.run` at each step; each due probe's values become one record in
metrics.jsonl and the trackers. The generation probe scores answers on a validation sample
exactly as `tunesmith eval` does; a forgetting probe plugs in the same way.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from tunesmith.config import GenerationEvalSpec, RunSpec
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.ui import console


class Probe(Protocol):
    name: str
    every_steps: int

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]: ...


class GenerationProbe:
    """Greedy answers to the same validation sample each time, scored with eval's metrics
    (exact match, valid JSON, per-field accuracy, label macro-F1)."""

    name = "gen"

    def __init__(self, examples: list[Example], spec: GenerationEvalSpec, batch_size: int, seed: int):
        candidates = [e for e in examples if e.reference is not None]
        if not candidates:
            raise UserError(
                "train.generation_eval needs validation examples with a reference answer, and there are none",
                where="train.generation_eval",
                fix="remove train.generation_eval, or prepare the dataset with a validation split",
            )
        # A fixed sample, so the curve shows the model changing rather than the sample.
        keep = sorted(random.Random(seed).sample(range(len(candidates)), min(spec.sample_size, len(candidates))))
        self.examples = [candidates[i] for i in keep]
        self.every_steps, self.max_new_tokens, self.batch_size = spec.every_steps, spec.max_new_tokens, batch_size

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        from tunesmith.chat_template import end_of_turn_ids
        from tunesmith.eval.metrics import aggregate, score_example
        from tunesmith.models.generate import generate_batched

        outputs, seconds = generate_batched(
            model, tokenizer, self.examples, end_of_turn_ids(tokenizer), max_new_tokens=self.max_new_tokens, batch_size=self.batch_size
        )
        rows = [score_example(output, e.reference or "", e.label) for e, output in zip(self.examples, outputs)]
        return aggregate(rows, seconds)


class Probes:
    """The probes of one run. Each runs with the model in eval mode and hands it back as it found it."""

    def __init__(self, probes: list[Probe]):
        self.probes = probes

    def run(self, model: Any, tokenizer: Any, step: int, epoch: float) -> list[dict[str, Any]]:
        records = []
        for probe in self.probes:
            if step % probe.every_steps:
                continue
            was_training, padding_side = model.training, tokenizer.padding_side
            try:
                values = probe(model, tokenizer, step)
            finally:
                model.train(was_training)
                tokenizer.padding_side = padding_side
            records.append({"step": step, "epoch": epoch, **{f"{probe.name}/{key}": value for key, value in values.items()}})
        return records


def build_probes(spec: RunSpec, validation: list[Example]) -> Probes:
    probes: list[Probe] = []
    if spec.train.generation_eval is not None:
        probe = GenerationProbe(validation, spec.train.generation_eval, spec.eval.batch_size, spec.train.seed)
        console.print(f"generation eval on {len(probe.examples)} validation examples every {probe.every_steps} steps")
        probes.append(probe)
    if spec.train.forgetting_every_steps is not None:
        probes.append(ForgettingProbe(spec.train.forgetting_every_steps))
        console.print(f"general-skills probe (forgetting) every {spec.train.forgetting_every_steps} steps")
    return Probes(probes)


class ForgettingProbe:
    """eval's general-skills probe set, scored during training: a falling `forgetting/probe_score`
    next to a falling loss is the model losing what it knew."""

    name = "forgetting"

    def __init__(self, every_steps: int):
        from tunesmith.eval.forgetting import probe_callback

        self.every_steps = every_steps
        self._callback = probe_callback()

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        return self._callback(model, tokenizer, step)

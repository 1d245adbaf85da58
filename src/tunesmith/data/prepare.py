"""The steps of `tunesmith data prepare` between reading a file and writing the dataset.

clean → PII → dedup → split → leak check, each switchable, each reporting what it changed.
The reports go into the dataset's manifest, so a dataset says how it was made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tunesmith.config import PrepareSpec
from tunesmith.data.example import Example
from tunesmith.data.formats import FormatName, load_examples
from tunesmith.data.split import assign_given_splits, remove_leaks_detailed, split_examples
from tunesmith.ui import console


class StepRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: str
    settings: dict[str, Any]
    examples_in: int
    examples_out: int
    report: dict[str, Any]


class Prepared(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    format: str
    splits: dict[str, list[Example]]
    steps: list[StepRecord]
    removed: dict[str, int]
    warnings: list[str] = []
    review: list[dict[str, Any]] = []


def _run_step(steps: list[StepRecord], name: str, settings: dict[str, Any], examples: list[Example], step) -> list[Example]:
    kept, report = step(examples)
    steps.append(StepRecord(step=name, settings=settings, examples_in=len(examples), examples_out=len(kept), report=report.model_dump(mode="json")))
    changed = f", {len(examples) - len(kept)} removed" if len(kept) != len(examples) else ""
    console.print(f"  {name}: {len(examples)} examples in{changed}")
    return kept


def run_steps(source: Path, fmt: FormatName | None, seed: int, ratios: tuple[float, float, float], options: PrepareSpec) -> Prepared:
    """read → clean → PII → dedup → split → leak check."""
    examples, fmt = load_examples(source, fmt, options.mapping or None)
    steps: list[StepRecord] = []
    if options.clean:
        from tunesmith.data.clean import clean_examples

        settings = {"normalise_outputs": options.normalise_outputs}
        examples = _run_step(steps, "clean", settings, examples, lambda ex: clean_examples(ex, normalise_outputs=options.normalise_outputs))
        _warn_style(steps[-1].report)
    if options.pii != "off":
        from tunesmith.data.pii import scrub_examples

        settings = {"mode": options.pii, "ner": options.pii_ner}
        examples = _run_step(steps, "pii", settings, examples, lambda ex: scrub_examples(ex, options.pii, ner=options.pii_ner))
        _warn_pii(steps[-1].report)
    if options.dedup:
        from tunesmith.data.dedup import dedup_examples

        settings = {"near": options.near_dedup, "threshold": options.near_threshold}
        examples = _run_step(steps, "dedup", settings, examples, lambda ex: dedup_examples(ex, near=options.near_dedup, threshold=options.near_threshold, seed=seed))
    splits = _split(examples, fmt, seed, ratios, options)
    leaks = remove_leaks_detailed(splits, options.near_threshold if options.near_dedup else None)
    steps.append(StepRecord(step="leakage", settings={"near_threshold": leaks.near_threshold}, examples_in=len(examples),
                            examples_out=sum(len(v) for v in splits.values()), report=leaks.model_dump(mode="json")))
    removed = {step.step: step.examples_in - step.examples_out for step in steps}
    removed.pop("leakage")
    removed.update({f"{name}_leaked_into_train": n for name, n in leaks.removed.items()})
    review = _augment(splits, steps, options) if options.augment else []
    return Prepared(format=fmt, splits=splits, steps=steps, removed=removed, warnings=_unseen_labels(splits), review=review)


def _augment(splits: dict[str, list[Example]], steps: list[StepRecord], options: PrepareSpec) -> list[dict]:
    """Runs after the split and the leak check, on train alone, so no synthetic text is ever evaluated on."""
    from tunesmith.data.augment import augment_train, make_generator

    spec = options.augment
    generator, name = make_generator(spec)
    synthetic, report, review = augment_train(splits["train"], spec, generator, name)
    steps.append(StepRecord(step="augment", settings=spec.model_dump(mode="json"), examples_in=len(splits["train"]),
                            examples_out=len(splits["train"]) + len(synthetic), report=report.model_dump(mode="json")))
    splits["train"] = splits["train"] + synthetic
    console.print(f"  augment: {report.added} paraphrase(s) added to train, {sum(report.rejected.values())} rejected {report.rejected or ''}; review them in augment_review.jsonl")
    return review


def _unseen_labels(splits: dict[str, list[Example]]) -> list[str]:
    """label_unseen_in_train: an evaluation label the model never saw in training cannot be learned."""
    seen = {e.label for e in splits["train"] if e.label is not None}
    warnings = []
    for name in ("validation", "test"):
        unseen = sorted({e.label for e in splits[name] if e.label is not None} - seen)
        if unseen:
            warnings.append(f"label_unseen_in_train: {name} has label(s) {', '.join(unseen)} that no training example has")
            console.print(f"  [yellow]{warnings[-1]}[/]")
    return warnings


def _split(examples: list[Example], fmt: str, seed: int, ratios: tuple[float, float, float], options: PrepareSpec) -> dict[str, list[Example]]:
    given = {name: load_examples(path, fmt, options.mapping or None)[0] for name, path in
             (("validation", options.validation_file), ("test", options.test_file)) if path is not None}
    if given:
        return assign_given_splits(examples, given.get("validation"), given.get("test"), ratios=ratios, seed=seed, group_by=options.group_by)
    return split_examples(examples, ratios, seed, options.group_by)


def _warn_style(report: dict[str, Any]) -> None:
    for finding in report.get("findings", []):
        variants = ", ".join(f"{v['text']!r} x{v['count']}" for v in finding["variants"][:4])
        console.print(f"  [yellow]output style:[/] {finding['kind']}{' ' + finding['key'] if finding.get('key') else ''}: {variants}")


def _warn_pii(report: dict[str, Any]) -> None:
    if report["counts"]:
        counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
        verb = {"report": "found (left in place; --pii redact or drop to remove)", "redact": "redacted", "drop": "found; examples dropped"}[report["mode"]]
        console.print(f"  [yellow]personal data {verb}:[/] {counts} in {report['examples_affected']} example(s)")


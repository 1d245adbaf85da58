"""The steps of `tunesmith data prepare` between reading a file and writing the dataset.

clean → PII → dedup → split → leak check, each switchable, each reporting what it changed.
The reports go into the dataset's manifest, so a dataset says how it was made. Memory does not
grow with the file's text: examples stream through clean and PII to disk (rows.py), and dedup,
split and the leak check work on compact per-example columns.
"""

from __future__ import annotations

from array import array
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tunesmith.config import PrepareSpec
from tunesmith.data.example import Example
from tunesmith.data.formats import ExampleReader, FormatName
from tunesmith.data.rows import Rows
from tunesmith.data.rowsplit import assign_given, remove_leaks, split_rows, unseen_labels
from tunesmith.errors import UserError
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
    rows: Rows  # every example on disk; splits name the rows of each split, in order
    splits: dict[str, np.ndarray]
    extra_train: list[Example] = []  # examples made after the split (paraphrases), appended to train
    steps: list[StepRecord]
    removed: dict[str, int]
    warnings: list[str] = []
    review: list[dict[str, Any]] = []


CHUNK = 512  # examples per batch through clean and PII: NER is faster on batches, memory stays flat


def _record_step(steps: list[StepRecord], name: str, settings: dict[str, Any], examples_in: int, examples_out: int, report: BaseModel) -> None:
    steps.append(StepRecord(step=name, settings=settings, examples_in=examples_in, examples_out=examples_out, report=report.model_dump(mode="json")))
    changed = f", {examples_in - examples_out} removed" if examples_out != examples_in else ""
    console.print(f"  {name}: {examples_in} examples in{changed}")


def run_steps(source: Path, fmt: FormatName | None, seed: int, ratios: tuple[float, float, float], options: PrepareSpec, workdir: Path) -> Prepared:
    """read → clean → PII → dedup → split → leak check. Examples stream through the first three
    into `workdir`; later steps work on row numbers and compact columns (rows.py)."""
    rows = Rows(workdir, seed, options.group_by)
    steps: list[StepRecord] = []
    fmt, origin = _stream_in(source, fmt, options, rows, steps)
    from_file = int(np.count_nonzero(origin == 0))  # the file's rows come first; given splits after
    if from_file == 0:
        _nothing_left(source, steps)
    if options.dedup:
        from tunesmith.data.dedup import dedup_rows

        kept, dedup_report = dedup_rows(rows, near=options.near_dedup, threshold=options.near_threshold, seed=seed, upto=from_file)
        _record_step(steps, "dedup", {"near": options.near_dedup, "threshold": options.near_threshold}, dedup_report.examples_in, dedup_report.examples_out, dedup_report)
    else:
        kept = np.arange(from_file)
    splits = _split(rows, kept, origin, seed, ratios, options)
    leaks = remove_leaks(rows, splits, options.near_threshold if options.near_dedup else None)
    steps.append(StepRecord(step="leakage", settings={"near_threshold": leaks.near_threshold}, examples_in=len(kept),
                            examples_out=sum(len(v) for v in splits.values()), report=leaks.model_dump(mode="json")))
    removed = {step.step: step.examples_in - step.examples_out for step in steps}
    removed.pop("leakage")
    removed.update({f"{name}_leaked_into_train": n for name, n in leaks.removed.items()})
    extra, review = _augment(rows, splits, steps, options) if options.augment else ([], [])
    warnings = unseen_labels(rows, splits, extra)
    for warning in warnings:
        console.print(f"  [yellow]{warning}[/]")
    return Prepared(format=fmt, rows=rows, splits=splits, extra_train=extra, steps=steps, removed=removed, warnings=warnings, review=review)


def _nothing_left(source: Path, steps: list[StepRecord]) -> None:
    """A dataset with none of the file's examples is of no use to anything: say which step took them."""
    removed = ", ".join(f"{step.step} removed {step.examples_in - step.examples_out}" for step in steps if step.examples_in != step.examples_out)
    raise UserError(f"no example of {source} is left to put in the dataset ({removed})",
                    fix="with --pii drop every example holding personal data goes: --pii redact keeps them with it replaced; "
                        "clean removes examples without a user turn and an answer (`tunesmith data validate` lists them)")


# Where a row came from: the file, or a split given with --validation-file / --test-file.
_ORIGINS = {"file": 0, "validation": 1, "test": 2}


def _stream_in(source: Path, fmt: FormatName | None, options: PrepareSpec, rows: Rows, steps: list[StepRecord]) -> tuple[FormatName, np.ndarray]:
    """Read, clean and scrub every input file a batch at a time into `rows` (the given validation and
    test files too: whatever goes into the dataset passes the same steps); record the clean and PII
    steps. Returns the format and each row's origin (_ORIGINS)."""
    from tunesmith.data.clean import Cleaner, normalise_with
    from tunesmith.data.pii import Scrubber

    cleaner = Cleaner() if options.clean else None
    scrubber = Scrubber(options.pii, ner=options.pii_ner, allow=options.pii_allow) if options.pii != "off" else None
    # Normalising label spellings needs every answer seen first: scrubbed examples wait on disk,
    # each line led by its origin's digit.
    staged = (rows.path.parent / "cleaned.jsonl").open("w+b") if cleaner and options.normalise_outputs else None
    origin = array("b")

    def store(batch: list[Example], code: int) -> None:
        # PII before the output lint: what the lint quotes (answers, ids) is already scrubbed, and
        # nothing unscrubbed is ever written to the spill folder.
        batch = scrubber.scrub(batch) if scrubber else batch
        if cleaner:
            for example in batch:
                cleaner.lint.add(example)
        if staged is not None:
            staged.writelines(b"%d%s\n" % (code, e.model_dump_json().encode()) for e in batch)
            return
        add(batch, code)

    def add(batch: list[Example], code: int) -> None:
        for example in batch:
            rows.add(example)
            origin.append(code)

    inputs = [("file", source), ("validation", options.validation_file), ("test", options.test_file)]
    for name, path in inputs:
        if path is None:
            continue
        reader = ExampleReader(path, fmt, options.mapping or None)
        code, batch = _ORIGINS[name], []
        for example in reader:
            if reader.problems.count:
                continue  # the file will be refused: only look for its other problems
            cleaned = cleaner.clean(example, lint=False) if cleaner else example
            if cleaned is not None:
                batch.append(cleaned)
            if len(batch) == CHUNK:
                store(batch, code)
                batch = []
        store(batch, code)
        fmt = reader.finish()  # the file's format is the given splits' format too
    if cleaner:
        findings, normalised = cleaner.lint.findings(), 0
        if staged is not None:
            normalise, staged_file, staged = normalise_with(findings), staged, None
            staged_file.seek(0)
            for lines in iter(lambda: staged_file.readlines(1 << 20), []):
                for code, group in groupby(lines, key=lambda line: line[0] - ord("0")):
                    batch = [Example.model_validate_json(line[1:]) for line in group]
                    out = [normalise(e) for e in batch]
                    normalised += sum(a != b for a, b in zip(out, batch))
                    add(out, code)
            staged_file.close()
        report = cleaner.report(findings, normalised)
        if scrubber is not None and options.pii in ("redact", "drop"):
            # The ids of examples dropped as empty never reached the PII step; the rest is scrubbed
            # already, and scanning it all again costs little next to a leak.
            report = type(report).model_validate(scrubber.scrub_value(report.model_dump(mode="json")))
        _record_step(steps, "clean", {"normalise_outputs": options.normalise_outputs}, report.examples_in, report.examples_out, report)
        _warn_style(steps[-1].report)
    if scrubber:
        pii_report = scrubber.finish()
        _record_step(steps, "pii", {"mode": options.pii, "ner": options.pii_ner, "allow": len(pii_report.allowed)}, pii_report.examples_scanned,
                     pii_report.examples_scanned - pii_report.examples_dropped, pii_report)
        _warn_pii(steps[-1].report)
    return fmt, np.frombuffer(origin, dtype=np.int8).copy()


def _augment(rows: Rows, splits: dict[str, np.ndarray], steps: list[StepRecord], options: PrepareSpec) -> tuple[list[Example], list[dict]]:
    """Runs after the split and the leak check, on train alone, so no synthetic text is ever evaluated on."""
    from tunesmith.data.augment import augment_train, make_generator

    spec = options.augment
    generator, name = make_generator(spec)
    train = rows.examples(splits["train"])
    synthetic, report, review = augment_train(train, spec, generator, name)
    steps.append(StepRecord(step="augment", settings=spec.model_dump(mode="json"), examples_in=len(train),
                            examples_out=len(train) + len(synthetic), report=report.model_dump(mode="json")))
    console.print(f"  augment: {report.added} paraphrase(s) added to train, {sum(report.rejected.values())} rejected {report.rejected or ''}; review them in augment_review.jsonl")
    return synthetic, review


def _split(rows: Rows, kept: np.ndarray, origin: np.ndarray, seed: int, ratios: tuple[float, float, float], options: PrepareSpec) -> dict[str, np.ndarray]:
    given = {name: np.flatnonzero(origin == _ORIGINS[name]) for name, path in
             (("validation", options.validation_file), ("test", options.test_file)) if path is not None}
    if given:
        return assign_given(rows, kept, given, ratios, seed, options.group_by)
    return split_rows(rows, kept, ratios, seed, options.group_by)


def _warn_style(report: dict[str, Any]) -> None:
    for finding in report.get("findings", []):
        variants = ", ".join(f"{v['text']!r} x{v['count']}" for v in finding["variants"][:4])
        console.print(f"  [yellow]output style:[/] {finding['kind']}{' ' + finding['key'] if finding.get('key') else ''}: {variants}")


def _warn_pii(report: dict[str, Any]) -> None:
    if report["counts"]:
        counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
        verb = {"report": "found (left in place; --pii redact or drop to remove)", "redact": "redacted", "drop": "found; examples dropped"}[report["mode"]]
        console.print(f"  [yellow]personal data {verb}:[/] {counts} in {report['examples_affected']} example(s)", highlight=False)
        for kind, shown in report.get("examples", {}).items():
            console.print(f"    {kind}: {', '.join(f'{text!r} x{n}' for text, n in shown.items())}", highlight=False, markup=False)
        console.print("    not personal data (a product, a machine)? keep it with --pii-allow TERM (repeat, comma-separate, or @FILE)", highlight=False)
    if report.get("allowed"):
        console.print(f"  pii allowlist: {len(report['allowed'])} term(s) never counted as personal data", highlight=False)

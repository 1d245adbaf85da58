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
from rich.markup import escape

from tunesmith.config import PrepareSpec, RunSpec
from tunesmith.data.example import Example
from tunesmith.data.formats import ExampleReader, FormatName
from tunesmith.data.rows import Rows
from tunesmith.data.rowsplit import _by_rank, assign_given, remove_leaks, split_rows, unseen_labels
from tunesmith.data.split import small_split_warning
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
    skipped: list[dict[str, Any]] = []  # with --skip-invalid: {file, line, code, message} of each line left out


CHUNK = 512  # examples per batch through clean and PII: NER is faster on batches, memory stays flat


def _record_step(
    steps: list[StepRecord], name: str, settings: dict[str, Any], examples_in: int, examples_out: int, report: BaseModel, say: bool = True
) -> None:
    steps.append(StepRecord(step=name, settings=settings, examples_in=examples_in, examples_out=examples_out, report=report.model_dump(mode="json")))
    if not say:
        return
    changed = f", {examples_in - examples_out} removed" if examples_out != examples_in else ""
    console.print(f"  {name}: {examples_in} examples in{changed}")


class LengthLimit(BaseModel):
    """With `data prepare --model`: examples longer than this model's training length stay out of
    validation and test, where a truncated answer would be scored against the full reference."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_seq_len: int


def length_limit_for(spec: RunSpec) -> LengthLimit | None:
    """A run preparing its own file checks lengths against its model and max_seq_len (causal LM only:
    a classifier truncates its input, it scores no generated answer)."""
    return LengthLimit(model=spec.model.name, max_seq_len=spec.train.max_seq_len) if spec.train.task == "causal_lm" else None


def run_steps(
    source: Path, fmt: FormatName | None, seed: int, ratios: tuple[float, float, float], options: PrepareSpec, workdir: Path, length: LengthLimit | None = None
) -> Prepared:
    """read → clean → PII → dedup → split → length check → leak check. Examples stream through the
    first three into `workdir`; later steps work on row numbers and compact columns (rows.py)."""
    rows = Rows(workdir, seed, options.group_by)
    steps: list[StepRecord] = []
    warnings: list[str] = []
    skipped: list[dict[str, Any]] = []
    fmt, origin = _stream_in(source, fmt, options, rows, steps, skipped)
    from_file = int(np.count_nonzero(origin == 0))  # the file's rows come first; given splits after
    if from_file == 0:
        _nothing_left(source, steps)
    if options.dedup:
        from tunesmith.data.dedup import dedup_rows

        kept, dedup_report = dedup_rows(rows, near=options.near_dedup, threshold=options.near_threshold, seed=seed, upto=from_file)
        _record_step(
            steps,
            "dedup",
            {"near": options.near_dedup, "threshold": options.near_threshold},
            dedup_report.examples_in,
            dedup_report.examples_out,
            dedup_report,
            say=dedup_report.examples_in == dedup_report.examples_out,
        )
        warnings += _say_dedup(dedup_report, options)
    else:
        kept = np.arange(from_file)
    splits, given = _split(rows, kept, origin, seed, ratios, options, warnings)
    if skipped:
        warnings.append(_skipped_warning(skipped))
    if length is not None:
        _keep_long_examples_in_train(rows, splits, given, length, steps, warnings)
    leaks = remove_leaks(rows, splits, options.near_threshold if options.near_dedup else None, frozenset(given))
    steps.append(
        StepRecord(
            step="leakage",
            settings={"near_threshold": leaks.near_threshold},
            examples_in=len(kept) + sum(len(v) for v in given.values()),
            examples_out=sum(len(v) for v in splits.values()),
            report=leaks.model_dump(mode="json"),
        )
    )
    _say_leaks(leaks, given)
    removed = {step.step: step.examples_in - step.examples_out for step in steps if step.step not in ("leakage", "length")}
    removed.update({f"{name}_leaked_into_train": n for name, n in leaks.removed.items() if name not in given})
    removed.update({f"train_repeating_{name}_file": n for name, n in leaks.removed_from_train.items()})
    extra, review = _augment(rows, splits, steps, options) if options.augment else ([], [])
    warnings += unseen_labels(rows, splits, extra)
    warnings += [w for w in (small_split_warning(name, len(splits[name]), name in given) for name in ("test",)) if w]
    for warning in warnings:
        console.print(f"  [yellow]{escape(warning)}[/]")
    return Prepared(format=fmt, rows=rows, splits=splits, extra_train=extra, steps=steps, removed=removed, warnings=warnings, review=review, skipped=skipped)


def _skipped_warning(skipped: list[dict[str, Any]]) -> str:
    from collections import Counter

    codes = ", ".join(f"{code} x{n}" for code, n in Counter(s["code"] for s in skipped).items())
    shown = "; ".join(f"{s['file']}:{s['line']} {s['code']}" for s in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
    return f"skipped_invalid: {len(skipped)} line(s) left out by --skip-invalid ({codes}): {shown}; every one in manifest.json 'skipped'"


def _read_into(reader: ExampleReader, skipped: list[dict[str, Any]]) -> FormatName:
    """After a reader is drained: refuse its file, or with --skip-invalid note the lines left out.
    Returns the file's format."""
    fmt = reader.finish()
    skipped += [{"file": str(reader.path), **problem} for problem in reader.problems.listed]
    if reader.problems.count:
        console.print(f"  [yellow]--skip-invalid: left out {reader.problems.count} line(s) of {escape(str(reader.path))}[/]")
        for line in reader.problems.lines_shown(reader.path)[:5]:
            console.print(f"    {escape(line)}", highlight=False)
    return fmt


def _say_dedup(report: Any, options: PrepareSpec) -> list[str]:
    """How many rows dedup removed, in a line of its own, with examples; a warning when it is a
    large share (on templated data near-dedup can take most of the file)."""
    removed = report.examples_in - report.examples_out
    if not removed:
        return []
    share = removed / max(report.examples_in, 1)
    near = f" and {report.near} near-duplicate(s) (Jaccard >= {options.near_threshold} on {report.shingles} shingles)" if report.near else ""
    shown = ", ".join(f"{p.removed} ~ {p.kept}" for p in report.pairs[:3])
    console.print(
        f"  dedup: removed {removed} of {report.examples_in} example(s) ({share:.0%}): {report.exact} exact duplicate(s){near}"
        + escape(f"; e.g. {shown} (every pair: manifest.json, step dedup)"),
        highlight=False,
    )
    if share < 0.2:
        return []
    advice = (
        "raise --near-threshold (e.g. 0.95) or pass --no-near-dedup if they are distinct examples written from one template"
        if report.near
        else "check the export: the same rows appear many times"
    )
    return [f"dedup_removed_many: dedup removed {removed} of {report.examples_in} examples ({share:.0%}); {advice}"]


def _say_leaks(leaks: Any, given: dict[str, np.ndarray]) -> None:
    for name, n in leaks.removed.items():
        if n and name not in given:
            console.print(f"  leakage: {n} {name} example(s) repeat a training prompt and were removed from {name}")
    for name, n in leaks.removed_from_train.items():
        if n:
            shown = [f"{p.removed} ~ {p.matches}" for p in leaks.pairs if p.split == "train" and p.matches][:3]
            console.print(
                f"  [yellow]leakage: {n} training example(s) repeat a prompt of your {name} file and were removed from train; "
                f"the {name} file is kept whole[/]" + escape(f" (e.g. {', '.join(shown)})")
            )


def _nothing_left(source: Path, steps: list[StepRecord]) -> None:
    """A dataset with none of the file's examples is of no use to anything: say which step took them."""
    removed = ", ".join(f"{step.step} removed {step.examples_in - step.examples_out}" for step in steps if step.examples_in != step.examples_out)
    raise UserError(
        f"no example of {source} is left to put in the dataset ({removed})",
        fix="with --pii drop every example holding personal data goes: --pii redact keeps them with it replaced; "
        "clean removes examples without a user turn and an answer (`tunesmith data validate` lists them)",
    )


# Where a row came from: the file, or a split given with --validation-file / --test-file.
_ORIGINS = {"file": 0, "validation": 1, "test": 2}


def _stream_in(
    source: Path, fmt: FormatName | None, options: PrepareSpec, rows: Rows, steps: list[StepRecord], skipped: list[dict[str, Any]]
) -> tuple[FormatName, np.ndarray]:
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
        reader = ExampleReader(path, fmt, options.mapping or None, options.skip_invalid)
        code, batch = _ORIGINS[name], []
        for example in reader:
            if reader.problems.count and not options.skip_invalid:
                continue  # the file will be refused: only look for its other problems
            cleaned = cleaner.clean(example, lint=False) if cleaner else example
            if cleaned is not None:
                batch.append(cleaned)
            if len(batch) == CHUNK:
                store(batch, code)
                batch = []
        store(batch, code)
        fmt = _read_into(reader, skipped)  # the file's format is the given splits' format too
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
        _record_step(
            steps,
            "pii",
            {"mode": options.pii, "ner": options.pii_ner, "allow": len(pii_report.allowed)},
            pii_report.examples_scanned,
            pii_report.examples_scanned - pii_report.examples_dropped,
            pii_report,
        )
        _warn_pii(steps[-1].report)
    return fmt, np.frombuffer(origin, dtype=np.int8).copy()


def _augment(rows: Rows, splits: dict[str, np.ndarray], steps: list[StepRecord], options: PrepareSpec) -> tuple[list[Example], list[dict]]:
    """Runs after the split and the leak check, on train alone, so no synthetic text is ever evaluated on."""
    from tunesmith.data.augment import augment_train, make_generator

    spec = options.augment
    generator, name = make_generator(spec)
    train = rows.examples(splits["train"])
    synthetic, report, review = augment_train(train, spec, generator, name)
    steps.append(
        StepRecord(
            step="augment",
            settings=spec.model_dump(mode="json"),
            examples_in=len(train),
            examples_out=len(train) + len(synthetic),
            report=report.model_dump(mode="json"),
        )
    )
    console.print(
        f"  augment: {report.added} paraphrase(s) added to train, {sum(report.rejected.values())} rejected {report.rejected or ''}; review them in augment_review.jsonl"
    )
    return synthetic, review


def _split(
    rows: Rows, kept: np.ndarray, origin: np.ndarray, seed: int, ratios: tuple[float, float, float], options: PrepareSpec, warnings: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The splits, and the rows of each split the user gave as a file (kept whole: never deduplicated against train)."""
    given = {
        name: np.flatnonzero(origin == _ORIGINS[name])
        for name, path in (("validation", options.validation_file), ("test", options.test_file))
        if path is not None
    }
    for name, numbers in given.items():
        warnings += _repeats_in_given(rows, numbers, name, options.validation_file if name == "validation" else options.test_file)
    if given:
        return assign_given(rows, kept, given, ratios, seed, options.group_by), given
    return split_rows(rows, kept, ratios, seed, options.group_by), given


def _repeats_in_given(rows: Rows, numbers: np.ndarray, name: str, path: Path | None) -> list[str]:
    """Duplicates inside a validation/test file the user gave: kept (it is the user's benchmark), named by example id
    (FILESTEM-LINE unless the record has its own id)."""
    if not len(numbers):
        return []
    keys = rows.column("exact")[numbers]
    ids = rows.ids(numbers)
    first: dict[bytes, str] = {}
    repeats = []
    for key, example_id in zip(keys.tolist(), ids):
        if key in first:
            repeats.append(f"{example_id} repeats {first[key]}")
        else:
            first[key] = example_id
    if not repeats:
        return []
    listed = "; ".join(repeats[:10]) + (f"; and {len(repeats) - 10} more" if len(repeats) > 10 else "")
    return [
        f"duplicates_in_{name}_file: {len(repeats)} example(s) of {path} repeat another of its examples ({listed}); "
        f"kept as given, so each counts twice in the scores: remove the repeats from the file if they are not meant"
    ]


def _keep_long_examples_in_train(
    rows: Rows, splits: dict[str, np.ndarray], given: dict[str, np.ndarray], length: LengthLimit, steps: list[StepRecord], warnings: list[str]
) -> None:
    """Validation/test examples longer than the model's training length move to train, where they
    are truncated like every long example; scoring one would judge a cut prompt or answer.
    Examples of a file the user gave stay where they are, named in a warning."""
    from tunesmith.data.validate import load_tokenizer_only, long_example_check

    check = long_example_check(load_tokenizer_only(length.model), length.max_seq_len)
    moved: dict[str, list[str]] = {}
    flagged: dict[str, list[str]] = {}
    for name in ("validation", "test"):
        selected = splits[name]
        too_long = np.array([bool(check(e)) for e in rows.examples(selected)], dtype=bool) if len(selected) else np.zeros(0, dtype=bool)
        if not too_long.any():
            continue
        ids = rows.ids(selected[too_long])
        if name in given:
            flagged[name] = ids
            warnings.append(
                f"too_long_in_{name}_file: {len(ids)} example(s) of your {name} file are longer than max_seq_len {length.max_seq_len} "
                f"with {length.model}'s chat template ({', '.join(ids[:10])}): they are scored on a cut prompt; shorten them or raise --max-seq-len"
            )
            continue
        moved[name] = ids
        splits["train"] = _by_rank(rows, np.concatenate([splits["train"], selected[too_long]]))
        splits[name] = selected[~too_long]
        console.print(
            f"  length: {len(ids)} {name} example(s) over max_seq_len {length.max_seq_len} moved to train, where they are truncated"
            + escape(f" ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
        )
    n_moved = sum(len(v) for v in moved.values())
    steps.append(
        StepRecord(
            step="length",
            settings=length.model_dump(),
            examples_in=n_moved,
            examples_out=n_moved,
            report={"moved_to_train": moved, "too_long_in_given_files": flagged},
        )
    )


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

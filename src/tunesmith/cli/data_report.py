"""What `data prepare` and `data stats` print and write: the summary tables, a token-length
histogram and the dataset's report.html."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path

from tunesmith.data.dataset import Dataset, load_dataset
from tunesmith.data.example import Example
from tunesmith.data.stats import DatasetStats, dataset_stats, plot_length_histogram, print_stats
from tunesmith.ui import console
from tunesmith.workspace import Workspace

SAMPLE = 64  # training examples enough for the step timing (seconds_per_token uses the first few batches)


def _stats(splits: Mapping[str, Iterable[Example]], model: str | None, folder: Path | None, sample: list[Example]) -> DatasetStats:
    """`sample`: the first training examples, for timing training steps when a model is named."""
    tokenizer, per_token = None, None
    if model:
        from tunesmith.data.validate import load_tokenizer_only
        from tunesmith.train.dry_run import seconds_per_token

        tokenizer = load_tokenizer_only(model)
        console.print("timing a few training steps on this machine for the estimate")
        per_token = seconds_per_token(model, sample)
    stats = dataset_stats(splits, tokenizer, seconds_per_token=per_token)
    print_stats(stats)
    if folder is not None and stats.token_lengths:
        console.print(f"token-length histogram: {plot_length_histogram(stats, folder / 'lengths.png')}")
    return stats


def _streamed(dataset: Dataset, model: str | None) -> DatasetStats:
    """Stats of a prepared dataset read split by split from its files: a large one is never all in memory."""
    from tunesmith.data.split import SPLITS

    sample = list(islice(dataset.iter_split("train"), SAMPLE)) if model else []
    if model and not sample:
        sample = next((list(islice(dataset.iter_split(s), SAMPLE)) for s in SPLITS if dataset.manifest.counts.get(s)), [])
    return _stats({s: dataset.iter_split(s) for s in SPLITS}, model, dataset.path, sample)


def summarise_dataset(dataset: Dataset, model: str | None = None) -> Path:
    from tunesmith.cli.report import print_dataset

    print_dataset(dataset)
    stats = _streamed(dataset, model)
    path = write_dataset_report(dataset, stats)
    console.print(f"report: {path}")
    return path


def stats_command(workspace: Workspace, source: str, model: str | None, fmt: str | None) -> DatasetStats:
    if Path(source).is_file():
        from tunesmith.data.formats import load_examples

        examples, _ = load_examples(Path(source), fmt)  # type: ignore[arg-type]
        return _stats({"all": examples}, model, Path(source).parent, examples[:SAMPLE])
    return _streamed(load_dataset(workspace, source), model)


def write_dataset_report(dataset: Dataset, stats: DatasetStats) -> Path:
    m = dataset.manifest
    rows = "".join(f"<tr><td>{s}</td><td>{m.counts[s]}</td><td><code>{m.split_hashes[s]}</code></td></tr>" for s in m.counts)
    steps = "".join(
        f"<tr><td>{html.escape(step.step)}</td><td>{step.examples_in}</td><td>{step.examples_out}</td>"
        f"<td><code>{html.escape(json.dumps(step.settings))}</code></td>"
        f"<td><details><summary>details</summary><pre>{html.escape(json.dumps(step.report, indent=1)[:20000])}</pre></details></td></tr>"
        for step in m.steps
    )
    plot = dataset.path / "lengths.png"
    image = f'<img alt="token lengths" src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">' if plot.exists() else ""
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in m.warnings)
    warnings = f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""
    if m.skipped:
        skipped = "".join(
            f"<tr><td>{html.escape(s['file'])}</td><td>{s['line']}</td><td>{html.escape(s['code'])}</td><td>{html.escape(s['message'])}</td></tr>"
            for s in m.skipped
        )
        warnings += f"<h2>Lines left out (--skip-invalid)</h2><table><tr><th>file</th><th>line</th><th>code</th><th>problem</th></tr>{skipped}</table>"
    leak = "no evaluation example appears in training" if m.overlap.clean else "EVALUATION EXAMPLES FOUND IN TRAINING"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>dataset {html.escape(m.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}}pre{{white-space:pre-wrap}}</style></head><body>
<h1>Dataset {html.escape(m.name)} <small>version {m.version}</small></h1>
<p>From <code>{html.escape(m.source)}</code> (sha256 <code>{m.source_sha256[:16]}</code>), format {m.format}, seed {m.seed}, ratios {list(m.split_ratios)}.</p>
<h2>Splits</h2><table><tr><th>split</th><th>examples</th><th>content hash</th></tr>{rows}</table>
{warnings}<p>Overlap check: {leak} ({html.escape(json.dumps(m.overlap.model_dump()))}).</p>
<h2>Steps</h2><table><tr><th>step</th><th>in</th><th>out</th><th>settings</th><th>report</th></tr>{steps}</table>
<h2>Statistics</h2><pre>{html.escape(stats.model_dump_json(indent=1, exclude={"token_lengths"}))}</pre>{image}</body></html>"""
    path = dataset.path / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

"""report.html: one self-contained page per run (plots inlined as base64 PNG), readable offline and
attachable to a ticket: metrics with intervals, every comparison, the prompting verdict, forgetting,
judge and human-review results, the confusion matrix, the loss curves and sample answers."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.eval.forgetting import signed
from tunesmith.eval.metrics import headline_first

SECTIONS = {
    "comparisons",
    "versus",
    "prompting_verdict",
    "forgetting",
    "judge",
    "human_review",
    "evaluations",
    "headline",
    "verdicts",
    "table",
    "power",
    "evaluation_id",
}
BAR_METRICS = ("exact_match", "valid_json", "field_accuracy", "correct", "rouge1", "rougeL", "schema_valid")


def _table(header: list[str], rows: list[list[object]]) -> str:
    """A table; a cell given as (text, css class) is coloured (a delta that is better or worse)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)

    def cell(c: object) -> str:
        if isinstance(c, tuple):
            return f"<td class='{c[1]}'>{html.escape(str(c[0]))}</td>" if c[1] else f"<td>{html.escape(str(c[0]))}</td>"
        return f"<td>{html.escape(str(c))}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _png(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_rows(run_dir: Path, split: str, model_id: str, folder: Path | None = None) -> list[dict]:
    path = (folder or run_dir / "eval") / f"{split}-{model_id}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def mean_ci(values: list[float], seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap 95% interval of a mean."""
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(low), float(high)


def metric_bars(run_dir: Path, split: str, models: list[str], folder: Path | None = None) -> str:
    """Bars per model for the 0-1 per-example metrics, with 95% bootstrap intervals as error bars."""
    from tunesmith.eval.compare import per_example_value

    rows = {m: read_rows(run_dir, split, m, folder) for m in models}
    series: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name in BAR_METRICS:
        for model in models:
            values = [v for r in rows[model] if (v := per_example_value(r, name)) is not None]
            if values:
                series.setdefault(name, {})[model] = mean_ci(values)
    if not series:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(series) * max(1, len(models)) / 2), 3.6), dpi=100)
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        xs, means, errs = [], [], [[], []]
        for i, name in enumerate(series):
            if model in series[name]:
                mean, low, high = series[name][model]
                xs.append(i + k * width)
                means.append(mean)
                errs[0].append(mean - low)
                errs[1].append(high - mean)
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(series))], list(series))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over examples (95% CI)")
    ax.legend(fontsize=8)
    return _png(fig, f"metrics on the {split} split")


def confusion_plot(run_dir: Path, split: str, model: str = "tuned", folder: Path | None = None) -> str:
    from sklearn.metrics import confusion_matrix

    rows = [r for r in read_rows(run_dir, split, model, folder) if "label" in r and "predicted_label" in r]
    if not rows:
        return ""
    truth = [str(r["label"]) for r in rows]
    labels = sorted(set(truth))
    predicted = [str(r["predicted_label"]) if str(r["predicted_label"]) in labels else "other" for r in rows]
    axis = labels + (["other"] if "other" in predicted else [])
    matrix = confusion_matrix(truth, predicted, labels=axis)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(axis), 1 + 0.6 * len(axis)), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(axis)), axis, rotation=45, ha="right")
    ax.set_yticks(range(len(axis)), axis)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(f"{model}, {split} split")
    return f"<h3>Confusion matrix ({html.escape(model)})</h3>" + _png(fig, "confusion matrix")


def loss_plot(run_dir: Path) -> str:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not any("loss" in r or r.get("val_loss") is not None for r in records):
        return "<p>No training log (metrics.jsonl) in this run.</p>"
    from tunesmith.plot import draw_loss

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    draw_loss(ax, records, "step")
    return _png(fig, "loss curves")


def _versus_section(versus: dict[str, dict[str, Any]], headline: str = "exact_match") -> str:
    from tunesmith.eval.metrics import definition, headline_first

    parts = []
    for other, by_metric in versus.items():
        rows = []
        for name in headline_first(by_metric, headline):
            c = by_metric[name]
            d = definition(name)
            better = {"higher": "higher", "lower": "lower"}.get(d.direction, "-")

            def count(key: str, c: dict = c, d: Any = d) -> Any:  # examples improved/regressed; "-" where direction has no meaning
                return "-" if c.get(key) is None or d.direction == "none" else c[key]

            rows.append(
                [
                    name,
                    _fmt(c["mean_a"]),
                    _fmt(c["mean_b"]),
                    f"{c['delta']:+.3f}",
                    f"{c['ci_low']:+.3f} to {c['ci_high']:+.3f}",
                    c["test"],
                    f"{c['p_value']:.2g}",
                    "yes" if c["significant"] else "no",
                    better,
                    count("improved"),
                    count("regressed"),
                ]
            )
        parts.append(
            f"<h4>tuned vs {html.escape(other)}</h4>"
            + _table(["metric", other, "tuned", "delta (tuned - other)", "95% CI", "test", "p", "significant", "better is", "improved", "regressed"], rows)
        )
        top = by_metric.get(headline) or by_metric.get("exact_match", {})
        if top.get("improved_ids") or top.get("regressed_ids"):
            parts.append(
                f"<p>{html.escape(headline)} improved on: {html.escape(', '.join(top.get('improved_ids', [])[:20]) or 'none')}; "
                f"regressed on: {html.escape(', '.join(top.get('regressed_ids', [])[:20]) or 'none')}.</p>"
            )
    return "".join(parts)


KIND_HEADINGS = {"quality": "", "speed": "<h4>Speed</h4>", "description": "<h4>Description of the answers (neither higher nor lower is better)</h4>"}


def comparison_tables(table: list[dict[str, Any]], headline: str | None, names: dict[str, str]) -> str:
    """The rows of `compare.comparison_table` (the ones the terminal prints), one table per kind."""
    if not table:
        return ""
    models = list(table[0]["values"])
    others = [m for m in models if m != "tuned"] if "tuned" in models else []
    parts = []
    for kind in ("quality", "speed", "description"):
        rows = []
        for row in (r for r in table if r["kind"] == kind):
            cells: list[object] = [
                f"{row['name']} (headline)" if row["name"] == headline else row["name"],
                {"higher": "higher", "lower": "lower"}.get(row["direction"], "-"),
            ]
            cells += [_fmt(row["values"].get(m)) if row["values"].get(m) is not None else "-" for m in models]
            for other in others:
                d = row["deltas"].get(other, {})
                text = "-" if d.get("delta") is None else f"{d['delta']:+.3f}"
                cells.append((text, {"better": "ok", "worse": "bad"}.get(d.get("change") or "", "")))
            rows.append(cells)
        if rows:
            header = ["metric", "better is", *[f"{m} ({names.get(m, m)})" for m in models], *[f"delta tuned - {o}" for o in others]]
            parts.append(KIND_HEADINGS[kind] + _table(header, rows))
    return "".join(parts)


def _evaluation_section(run_dir: Path, record: dict[str, Any]) -> str:
    from tunesmith.eval.results import evaluation_folder

    folder = evaluation_folder(run_dir, record["id"])
    split, models = record["split"], list(record["models"])
    headline = (record.get("headline") or {}).get("metric")
    names = {m: v.get("model", m) for m, v in record["models"].items()}
    about = f"task {record.get('task', '-')}, headline metric {headline or '-'}; evaluation {record['id']}, {record.get('created', '')[:19]}"
    verdicts = "".join(f"<p class='verdict'><b>{html.escape(line)}</b></p>" for line in record.get("verdicts", []))
    return (
        f"<h3>{html.escape(record.get('kind', split))} ({record.get('n', 0)} examples)</h3><p>{html.escape(about)}</p>"
        + comparison_tables(record.get("table") or [], headline, names)
        + verdicts
        + metric_bars(run_dir, split, models, folder)
        + _versus_section(record.get("versus", {}), headline or "exact_match")
        + confusion_plot(run_dir, split, "tuned" if "tuned" in models else models[0], folder)
    )


def _metrics_section(run_dir: Path, report: dict) -> str:
    """The latest evaluation of each kind on top, in full; the earlier ones listed below."""
    evaluations = report.get("evaluations") or []
    parts, earlier, kinds = [], [], set()
    for record in evaluations:  # newest first
        if record.get("kind") in kinds:
            earlier.append(record)
            continue
        kinds.add(record.get("kind"))
        parts.append(_evaluation_section(run_dir, record))
    if earlier:
        rows = []
        for r in earlier:
            metric = (r.get("headline") or {}).get("metric", "exact_match")
            value = r["models"].get("tuned", next(iter(r["models"].values())))["metrics"].get(metric)
            rows.append([r.get("created", "")[:19], r["id"], r.get("kind", r["split"]), metric, _fmt(value), " ".join(r.get("verdicts", []))[:300]])
        parts.append("<h3>Earlier evaluations</h3>" + _table(["when", "evaluation", "kind", "headline metric", "tuned", "verdict"], rows))
    kept = {r["split"] for r in evaluations}
    for split, by_model in report.items():  # splits evaluated before evaluations were kept one by one
        if split in SECTIONS or split in kept or not isinstance(by_model, dict):
            continue
        names = headline_first({k for m in by_model.values() for k in m["metrics"]} - {"n"})
        models = [m for m in ("base", "few-shot", "system", "tuned") if m in by_model] + [
            m for m in by_model if m not in ("base", "few-shot", "system", "tuned")
        ]
        rows = [[name, *[_fmt(by_model[m]["metrics"].get(name, "")) for m in models]] for name in names]
        header = ["metric", *[f"{m} ({by_model[m]['model']})" for m in models]]
        n = next(iter(by_model.values()))["metrics"].get("n", 0)
        verdict = report.get("prompting_verdict", {}).get(split)
        parts.append(
            f"<h3>{html.escape(split)} split ({n:.0f} examples)</h3>"
            + _table(header, rows)
            + (f"<p class='verdict'><b>{html.escape(verdict['text'])}</b></p>" if verdict else "")
            + metric_bars(run_dir, split, models)
            + _versus_section(report.get("versus", {}).get(split, {}))
            + confusion_plot(run_dir, split)
        )
    return "".join(parts) or "<p>No evaluation yet: run <code>tunesmith eval RUN --compare-base</code>.</p>"


def _drop_interval(forgetting: dict) -> str:
    """The drop's paired interval and McNemar test, when the run recorded them (runs before them did not)."""
    found = forgetting.get("drop_interval")
    if not found:
        return ""
    return (
        f", 95% interval {signed(found['low'], 3)} to {signed(found['high'], 3)}, McNemar p {found['p_value']:.2g}; "
        f"{found['regressed']} questions lost, {found['improved']} gained"
    )


def _extras_section(report: dict) -> str:
    parts = []
    forgetting = report.get("forgetting")
    if forgetting:
        models = [m for m in ("base", "tuned") if m in forgetting]
        cats = list(forgetting[models[0]]["per_category"])
        rows = [["overall", *[_fmt(forgetting[m]["score"]) for m in models]]] + [
            [c, *[_fmt(forgetting[m]["per_category"].get(c)) for m in models]] for c in cats
        ]
        warn = forgetting.get("warning")
        note = (
            ""
            if "drop" not in forgetting
            else (
                f"<p class='{'bad' if warn else 'ok'}'>Probe score drop {signed(forgetting['drop'], 3)}{_drop_interval(forgetting)} "
                f"(warning threshold {forgetting['threshold']:.3f}){': the tuned model lost general skills' if warn else ''}.</p>"
            )
        )
        parts.append("<h2>General skills (forgetting probe)</h2>" + _table(["category", *models], rows) + note)
    for split, kinds in report.get("judge", {}).items():
        rows = [[kind, json.dumps({k: v for k, v in s.items() if k not in ("judge",)}, default=str)[:400], s.get("judge", "")] for kind, s in kinds.items()]
        parts.append(f"<h2>LLM judge ({html.escape(split)} split)</h2>" + _table(["kind", "result", "judge"], rows))
    review = report.get("human_review")
    if review:
        rows = [[k, _fmt(v)] for k, v in review.items() if k != "files"]
        parts.append("<h2>Human review</h2>" + _table(["", "value"], rows))
    return "".join(parts)


def _samples_section(run_dir: Path, limit: int = 12) -> str:
    tuned = [p for s in ("test", "validation") if (p := run_dir / "eval" / f"{s}-tuned.jsonl").is_file()]
    if not tuned:
        return ""
    base_file = tuned[0].with_name(tuned[0].name.replace("-tuned", "-base"))
    base = {r["id"]: r for r in map(json.loads, base_file.read_text().splitlines())} if base_file.exists() else {}
    rows = []
    for record in map(json.loads, tuned[0].read_text().splitlines()[:limit]):
        rows.append([record["id"], record["prompt"][:160], record["reference"], base.get(record["id"], {}).get("prediction", "")[:160], record["prediction"]])
    return "<h2>Sample answers</h2>" + _table(["id", "prompt", "reference", "base", "tuned"], rows)


def write_report(run_dir: Path) -> Path:
    run = json.loads((run_dir / "run.json").read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())
    report_path = run_dir / "eval" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    overlap = dataset["overlap"]
    leak_ok = all(v == 0 for v in overlap.values())
    splits = _table(["split", "examples", "content hash"], [[s, dataset["counts"][s], dataset["split_hashes"][s]] for s in dataset["counts"]])
    checks = _table(["check", "count"], [[k.replace("_", " "), v] for k, v in {**overlap, **dataset["removed"]}.items()])
    config = html.escape((run_dir / "config.yaml").read_text())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunesmith run {html.escape(run["run_id"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}}
th{{background:#f3f3f3}}.ok{{color:#17692a}}.bad{{color:#b00020}}pre{{background:#f7f7f7;padding:1em;overflow:auto}}img{{max-width:100%}}</style></head><body>
<h1>Run {html.escape(run["run_id"])}</h1>
<p>Base model <b>{html.escape(run["base_model"])}</b>, method <b>{html.escape(run["method"])}</b>, dataset <b>{html.escape(run["dataset"])}</b>
version <code>{html.escape(run["dataset_version"])}</code>; best at step {run.get("best_step")} (epoch {run.get("best_epoch")}) (validation loss {run.get("best_val_loss")}),
training took {run.get("train_seconds")} s.</p>
<h2>Evaluation</h2>{_metrics_section(run_dir, report)}
{_extras_section(report)}
<h2>Training</h2>{loss_plot(run_dir)}
<h2>Data</h2>{splits}
<p class="{"ok" if leak_ok else "bad"}">Overlap check: {"no evaluation example appears in training" if leak_ok else "EVALUATION EXAMPLES FOUND IN TRAINING"}.</p>{checks}
{_samples_section(run_dir)}
<h2>Resolved config</h2><pre>{config}</pre></body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

"""report.html: one self-contained page per run (images inlined), readable offline and attachable to a ticket."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tunesmith.eval.metrics import headline_first



def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _comparison_line(comparison: dict | None) -> str:
    if not comparison:
        return ""
    verdict = "significant" if comparison["significant"] else "not significant"
    return (f"<p>Exact match, tuned minus base: <b>{comparison['delta']:+.3f}</b> (95% bootstrap CI {comparison['ci_low']:+.3f} to "
            f"{comparison['ci_high']:+.3f}); McNemar exact p = {comparison['p_value']:.2g} ({verdict} at 5%); "
            f"{comparison['improved']} example(s) improved, {comparison['regressed']} regressed.</p>")


def _metrics_section(report: dict) -> str:
    parts = []
    comparisons = report.get("comparisons", {})
    for split, by_model in report.items():
        if split == "comparisons":
            continue
        names = headline_first({k for m in by_model.values() for k in m["metrics"]} - {"n"})
        models = [m for m in ("base", "tuned") if m in by_model] + [m for m in by_model if m not in ("base", "tuned")]
        rows = []
        for name in names:
            values = [by_model[m]["metrics"].get(name) for m in models]
            delta = values[-1] - values[0] if len(values) == 2 and None not in values else ""
            rows.append([name, *[_fmt(v) for v in values], _fmt(delta) if delta != "" else ""])
        header = ["metric", *[f"{m} ({by_model[m]['model']})" for m in models], "delta" if len(models) == 2 else ""]
        n = next(iter(by_model.values()))["metrics"].get("n")
        parts.append(f"<h3>{html.escape(split)} split ({n:.0f} examples)</h3>" + _table(header, rows) + _comparison_line(comparisons.get(split)))
    return "".join(parts) or "<p>No evaluation yet: run <code>tunesmith eval RUN --compare-base</code>.</p>"


def _samples_section(run_dir: Path, limit: int = 12) -> str:
    tuned = sorted((run_dir / "eval").glob("*-tuned.jsonl"))
    if not tuned:
        return ""
    base_file = tuned[0].with_name(tuned[0].name.replace("-tuned", "-base"))
    base = {r["id"]: r for r in map(json.loads, base_file.read_text().splitlines())} if base_file.exists() else {}
    rows = []
    for record in map(json.loads, tuned[0].read_text().splitlines()[:limit]):
        rows.append([record["prompt"][:160], record["reference"], base.get(record["id"], {}).get("prediction", "")[:160], record["prediction"]])
    return "<h2>Sample answers</h2>" + _table(["prompt", "reference", "base", "tuned"], rows)


def write_report(run_dir: Path) -> Path:
    run = json.loads((run_dir / "run.json").read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())
    report_path = run_dir / "eval" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    plot = run_dir / "loss.png"
    image = f'<img alt="loss curve" src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">' if plot.exists() else ""
    overlap = dataset["overlap"]
    leak_ok = all(v == 0 for v in overlap.values())
    splits = _table(["split", "examples", "content hash"], [[s, dataset["counts"][s], dataset["split_hashes"][s]] for s in dataset["counts"]])
    checks = _table(["check", "count"], [[k.replace("_", " "), v] for k, v in {**overlap, **dataset["removed"]}.items()])
    config = html.escape((run_dir / "config.yaml").read_text())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunesmith run {html.escape(run['run_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}}
th{{background:#f3f3f3}}.ok{{color:#17692a}}.bad{{color:#b00020}}pre{{background:#f7f7f7;padding:1em;overflow:auto}}</style></head><body>
<h1>Run {html.escape(run['run_id'])}</h1>
<p>Base model <b>{html.escape(run['base_model'])}</b>, method <b>{html.escape(run['method'])}</b>, dataset <b>{html.escape(run['dataset'])}</b>
version <code>{html.escape(run['dataset_version'])}</code>; best at step {run.get('best_step')} (epoch {run.get('best_epoch')}) (validation loss {run.get('best_val_loss')}),
training took {run.get('train_seconds')} s.</p>
<h2>Base vs tuned</h2>{_metrics_section(report)}
<h2>Training</h2>{image}
<h2>Data</h2>{splits}
<p class="{'ok' if leak_ok else 'bad'}">Overlap check: {'no evaluation example appears in training' if leak_ok else 'EVALUATION EXAMPLES FOUND IN TRAINING'}.</p>{checks}
{_samples_section(run_dir)}
<h2>Resolved config</h2><pre>{config}</pre></body></html>"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

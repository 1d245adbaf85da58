"""Tables printed on the terminal: datasets, base-vs-tuned comparisons, the run registry."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from tunesmith.data.dataset import Dataset
from tunesmith.errors import UserError
from tunesmith.eval.metrics import headline_first
from tunesmith.files import read_json
from tunesmith.registry.runfolder import DAMAGED_RUN_FIX, INTERRUPTED, config_data, find_run, load_run_info, run_status
from tunesmith.registry.store import REINDEX, Registry, missing_from_index
from tunesmith.ui import console, out
from tunesmith.workspace import Workspace


def print_dataset(dataset: Dataset) -> None:
    m = dataset.manifest
    table = Table(title=f"dataset {m.name}  version {m.version}  ({m.format})")
    for column in ("split", "examples", "content hash"):
        table.add_column(column)
    for split, count in m.counts.items():
        table.add_row(split, str(count), m.split_hashes[split])
    out.print(table)
    removed = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in m.removed.items())
    verdict = "[green]clean[/]" if m.overlap.clean else "[red]LEAK[/]"
    out.print(f"removed: {removed}\noverlap check (evaluation examples also in train): {verdict} {m.overlap.model_dump()}")
    out.print(f"folder: {dataset.path}")


KIND_TITLES = {"speed": "speed", "description": "description of the answers (neither higher nor lower is better)"}


def print_comparison(
    results: dict[str, dict[str, float]],
    title: str = "base vs tuned",
    *,
    versus: dict[str, Any] | None = None,
    headline: str | None = None,
    table: list[dict[str, Any]] | None = None,
) -> None:
    """Every model's metrics, and the tuned model against each other one (delta = tuned - other, coloured
    by the metric's direction), from `compare.comparison_table`: the same rows report.json and report.html hold."""
    from tunesmith.eval.compare import comparison_table

    models = [m for m in results if m != "tuned"] + (["tuned"] if "tuned" in results else [])
    rows = table if table is not None else comparison_table({m: results[m] for m in models}, versus, headline)
    others = [m for m in models if m != "tuned"] if "tuned" in models else []
    sizes = sorted({int(m["n"]) for m in results.values() if "n" in m})
    for kind in ("quality", "speed", "description"):
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        heading = title if kind == "quality" else f"{title}: {KIND_TITLES[kind]}"
        grid = Table(title=f"{heading} ({' / '.join(map(str, sizes))} examples)" if sizes and kind == "quality" else heading)
        grid.add_column("metric")
        grid.add_column("better", justify="center")
        for model in models:
            grid.add_column(model, justify="right")
        for other in others:
            grid.add_column(f"delta tuned-{other}", justify="right")
        for row in chosen:
            name = f"{row['name']} (headline)" if row["name"] == headline else row["name"]
            cells = [f"{v:.3f}" if isinstance(v := row["values"].get(m), (int, float)) else "-" for m in models]
            for other in others:
                d = row["deltas"].get(other, {})
                text = "-" if d.get("delta") is None else f"{d['delta']:+.3f}"
                colour = {"better": "green", "worse": "red"}.get(d.get("change") or "")
                cells.append(f"[{colour}]{text}[/]" if colour else text)
            grid.add_row(name, {"higher": "higher", "lower": "lower"}.get(row["direction"], "-"), *cells)
        out.print(grid)


def print_evaluation(record: dict[str, Any]) -> None:
    """One kept evaluation (eval/evaluations/<id>/evaluation.json) as printed after `tunesmith eval`."""
    results = {m: v["metrics"] for m, v in record["models"].items()}
    print_comparison(
        results,
        title=f"{record['split']} split: " + " vs ".join(results),
        versus=record.get("versus"),
        headline=(record.get("headline") or {}).get("metric"),
        table=record.get("table"),
    )


def _headline_scores(evaluations: list[dict[str, Any]]) -> tuple[str, dict[str, float | None]]:
    """(metric and split, {model: value}) from one evaluation's registry rows: the test split's, else the first."""
    split = "test" if any(e["split"] == "test" for e in evaluations) else (evaluations[0]["split"] if evaluations else None)
    rows = [e for e in evaluations if e["split"] == split]
    if not rows:
        return "-", {}
    metric = next((e["headline"] for e in rows if e.get("headline")), "exact_match")
    return f"{metric} ({split})", {e["model_id"]: e["metrics"].get(metric) for e in rows}


def print_runs(workspace: Workspace) -> None:
    registry = Registry(workspace.registry_db)
    table = Table(title=f"runs in {workspace.home}")
    for column in ("run", "status", "base model", "method", "dataset@version", "val loss", "headline metric", "tuned", "base"):
        table.add_column(column)
    interrupted = []
    for run in registry.runs():
        status, _ = run_status(workspace.runs / run["id"], run["status"], run.get("owner"))
        if status == INTERRUPTED:
            interrupted.append(run["id"])
        metric, scores = _headline_scores(registry.evaluations(run["id"]))
        table.add_row(
            run["id"],
            status,
            run["base_model"],
            run["method"],
            f"{run['dataset']}@{run['dataset_version']}",
            "-" if run["best_val_loss"] is None else f"{run['best_val_loss']:.4f}",
            metric,
            *("-" if scores.get(m) is None else f"{scores[m]:.3f}" for m in ("tuned", "base")),
        )
    out.print(table)
    if interrupted:
        out.print(f"{INTERRUPTED}: the process training it ended without finishing; `tunesmith train --resume RUN` continues it ({', '.join(interrupted)})")
    _say_what_is_not_indexed(workspace, registry)


def _say_what_is_not_indexed(workspace: Workspace, registry: Registry) -> None:
    """Folders the registry does not list (it was emptied, or replaced by an older copy): say so, never hide them."""
    missing = missing_from_index(workspace.home, registry)
    if missing["runs"] or missing["datasets"]:
        found = " and ".join(
            f"{len(missing[k])} {k[:-1] if len(missing[k]) == 1 else k} folder{'' if len(missing[k]) == 1 else 's'} ({', '.join(missing[k][:3])}{', ...' if len(missing[k]) > 3 else ''})"
            for k in ("runs", "datasets")
            if missing[k]
        )
        console.print(f"[yellow]{found} in {workspace.home} not in the registry[/]: `{REINDEX}` adds them")


def print_run(workspace: Workspace, run_id: str) -> None:
    registry = Registry(workspace.registry_db)
    if registry.run(run_id) is None:
        run_id = find_run(workspace, run_id).name  # the run's name, when one run has it
    run = registry.run(run_id)
    if run is None:
        find_run(workspace, run_id)  # raises the user-facing error when the folder is missing too
        raise UserError(
            f"run '{run_id}' has a folder but is not in the registry {workspace.registry_db}",
            fix=f"`{REINDEX}` adds it (and any other folder missing from the registry)",
        )
    run["status"], why = run_status(workspace.runs / run_id, run["status"], run.pop("owner", None))
    for key, value in run.items():
        out.print(f"[bold]{key}[/]: {value}")
    if why:
        out.print(f"[bold]status note[/]: {why}")
    info_path = workspace.run_dir(run_id) / "run.json"
    if info_path.exists():
        info = read_json(info_path, fix=DAMAGED_RUN_FIX)
        out.print(f"[bold]best step[/]: {info.get('best_step')} (epoch {info.get('best_epoch')})  [bold]train seconds[/]: {info.get('train_seconds')}")
        if info.get("parent_run"):
            out.print(f"[bold]continued from[/]: {info['parent_run']}")
    by_split: dict[str, dict[str, dict[str, float]]] = {}
    headlines: dict[str, str | None] = {}
    for evaluation in registry.evaluations(run_id):  # the models of the latest evaluation of each split, evaluated together
        by_split.setdefault(evaluation["split"], {})[evaluation["model_id"]] = evaluation["metrics"]
        headlines[evaluation["split"]] = evaluation.get("headline")
    for split, results in by_split.items():
        print_comparison(dict(sorted(results.items())), title=f"{split} split", headline=headlines.get(split))


HYPERPARAMETERS = (
    ("method", "train.method"),
    ("epochs", "train.epochs"),
    ("lr", "train.lr"),
    ("batch size", "train.batch_size"),
    ("grad accum", "train.grad_accum"),
    ("max seq len", "train.max_seq_len"),
    ("lora r", "train.lora.r"),
    ("lora alpha", "train.lora.alpha"),
    ("seed", "train.seed"),
)


def _dotted(data: dict, path: str) -> object:
    for key in path.split("."):
        data = data.get(key) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def print_runs_compare(workspace: Workspace, refs: list[str]) -> None:
    """Runs as columns: data version, hyperparameters, best validation loss and every metric of each evaluated model."""
    if len(refs) < 2:
        raise UserError("runs compare needs two or more runs", fix="tunesmith runs compare RUN1 RUN2 [RUN3 ...]")
    folders = [find_run(workspace, ref) for ref in refs]
    infos = [load_run_info(f).model_dump() for f in folders]
    configs = [config_data(f) for f in folders]
    reports = [
        read_json(f / "eval" / "report.json", fix="evaluate the run again: tunesmith eval RUN") if (f / "eval" / "report.json").is_file() else {}
        for f in folders
    ]
    table = Table(title="runs side by side")
    table.add_column("")
    for info in infos:
        table.add_column(info["run_id"], justify="right")
    table.add_row("base model", *(i["base_model"] for i in infos))
    if any(i.get("parent_run") for i in infos):
        table.add_row("continued from", *(i.get("parent_run") or "-" for i in infos))
    table.add_row("dataset@version", *(f"{i['dataset']}@{i['dataset_version']}" for i in infos))
    for label, path in HYPERPARAMETERS:
        table.add_row(label, *(str(_dotted(c, path)) for c in configs))
    table.add_row("best val loss", *("-" if i.get("best_val_loss") is None else f"{i['best_val_loss']:.4f}" for i in infos))
    table.add_row("train seconds", *(str(i.get("train_seconds", "-")) for i in infos))
    for split in ("test", "validation"):
        for model in ("tuned", "base"):
            found = [r.get(split, {}).get(model, {}).get("metrics", {}) for r in reports]
            for name in headline_first({k for m in found for k in m} - {"n"}):
                table.add_row(f"{split} {model} {name}", *("-" if m.get(name) is None else f"{m[name]:.3f}" for m in found))
    forgetting = [r.get("forgetting", {}).get("tuned", {}).get("score") for r in reports]
    if any(v is not None for v in forgetting):
        table.add_row("probe score (tuned)", *("-" if v is None else f"{v:.3f}" for v in forgetting))
    out.print(table)
    versions = {i["dataset_version"] for i in infos}
    if len(versions) > 1:
        out.print(
            f"[yellow]note:[/] the runs were trained on {len(versions)} different dataset versions; their test splits may differ, "
            "so compare test scores with `tunesmith eval RUN1 --compare RUN2` (same examples)"
        )


def print_reindex(workspace: Workspace) -> None:
    """`runs reindex`: the registry rebuilt from the folders, and what could not be read."""
    from tunesmith.registry.store import reindex

    found = reindex(workspace.home)
    if found["kept"] is not None:
        console.print(f"[yellow]the damaged registry is kept as {found['kept']}")
    for problem in found["skipped"]:
        console.print(f"[yellow]skipped[/] {problem}")
    out.print(
        f"registry {workspace.registry_db} rebuilt from the folders: {found['runs']} runs, {found['datasets']} datasets, {found['evaluations']} evaluations"
    )


def _window_text(window: dict[str, Any] | None) -> str:
    import time

    if not window:
        return ""

    def at(t: Any) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if isinstance(t, (int, float)) else "-"

    return f"traffic of {window.get('model')} {at(window.get('since'))} to {at(window.get('until'))} UTC"


def print_lineage(workspace: Workspace, run_ref: str, as_json: bool = False) -> None:
    """`runs lineage`: newest run first, each line one step back (run ← parent run ...)."""
    import json
    import sys

    from rich.markup import escape

    from tunesmith.eval.metrics import metric_label
    from tunesmith.workflows import lineage

    chain = lineage(run_ref, workspace=workspace)
    if as_json:
        sys.stdout.write(json.dumps({"run": chain[0]["run_id"], "chain": chain}, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"lineage of {chain[0]['run_id']} ({len(chain)} step(s), newest first)")
    for column in ("run", "method", "dataset", "source", "key metric"):
        table.add_column(column)
    for step in chain:
        if step.get("missing"):
            table.add_row(escape(step["run_id"]), "-", "-", "(run folder not found)", "-")
            continue
        d = step["dataset"]
        source = d["source_kind"]
        if d["source_kind"] == "logs":
            source = f"logs: {_window_text(d['traffic_window'])}"
        if d["parent_dataset"]:
            source += f"; parent {d['parent_dataset']}"
        metric = step["metric"]
        score = f"{metric_label(metric['metric'])} {metric['value']:.3g} ({metric['split']})" if metric else "not evaluated"
        arrow = "" if step is chain[0] else "← "
        table.add_row(escape(arrow + step["run_id"]), step["method"], escape(f"{d['name']}@{d['version']}"), escape(source), score)
    out.print(table)

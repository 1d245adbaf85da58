"""The Python API: each stage's entry function behind one typed call, for programs (the jobs API, the
dashboard, search) and notebooks. The CLI calls these same functions, so a call and its command do the
same work and raise the same errors: bad input raises tunesmith.errors.UserError with the text the
CLI prints. Re-exported lazily from `tunesmith` (see docs/python-api.md).

Every stage is imported inside the function that runs it: `import tunesmith` (and this module) must not
load torch or transformers, which take seconds, and a service that only lists runs never needs them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import UserError
from tunesmith.workspace import Workspace

if TYPE_CHECKING:
    from tunesmith.config import PrepareSpec, RunSpec
    from tunesmith.data.dataset import Dataset
    from tunesmith.export.pipeline import ExportResult
    from tunesmith.registry.runfolder import RunInfo
    from tunesmith.serve.traffic import TrafficRecord
    from tunesmith.train.loop import TrainResult
    from tunesmith.train.run.guards import Budget, Control
    from tunesmith.tune.search import SearchResult

WorkspaceLike = Workspace | str | Path | None


def workspace_of(workspace: WorkspaceLike) -> Workspace:
    """None: $TUNESMITH_HOME (default ./.tunesmith); a path: that folder (created if absent)."""
    return workspace if isinstance(workspace, Workspace) else Workspace.from_env(workspace)


# ---------------------------------------------------------------- data


def prepare_dataset(
    path: str | Path,
    *,
    name: str | None = None,
    format: str | None = None,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    options: PrepareSpec | Mapping[str, Any] | None = None,
    model: str | None = None,
    max_seq_len: int | None = None,
    workspace: WorkspaceLike = None,
    source: str = "the arguments of tunesmith.prepare_dataset",
) -> Dataset:
    """Check, clean, scrub, de-duplicate, split by seed and register a dataset (`tunesmith data prepare`).

    path: a JSONL, JSON (array), CSV or Parquet file. name: the dataset's name (default: the file's).
    format: messages | prompt_completion | input_output | alpaca | sharegpt | classification | preference | prompt_chosen_rejected (None: detected).
    options: PrepareSpec fields (clean, pii, dedup, near_dedup, group_by, mapping, ...).
    model, max_seq_len: count tokens with this model's tokenizer; over-long examples stay out of validation
    and test. source: what error messages call these settings.
    """
    from tunesmith.config import DataSpec, TrainSpec, validate_spec
    from tunesmith.data.dataset import prepare_dataset as prepare
    from tunesmith.data.prepare import LengthLimit

    given = options if options is None or hasattr(options, "model_dump") else dict(options)
    spec = validate_spec(DataSpec, {"path": path, "format": format, "seed": seed, "split_ratios": ratios, "prepare": {} if given is None else given}, source)
    if max_seq_len is not None and (model is None or max_seq_len < 1):
        raise UserError("--max-seq-len needs --model and a positive number", fix="add --model smollm2-135m-instruct (or your base model) to count tokens")
    length = None if model is None else LengthLimit(model=model, max_seq_len=max_seq_len or TrainSpec.model_fields["max_seq_len"].default)
    return prepare(Path(path), workspace_of(workspace), name=name, fmt=spec.format, seed=seed, ratios=spec.split_ratios, options=spec.prepare, length=length)


def load_dataset(name: str, *, workspace: WorkspaceLike = None) -> Dataset:
    """A prepared dataset by name: its manifest at once, its splits (`.splits["train"]`) read on first use."""
    from tunesmith.data.dataset import load_dataset as load

    return load(workspace_of(workspace), name)


# ---------------------------------------------------------------- training


def run_spec(spec: RunSpec | Mapping[str, Any] | str | Path) -> RunSpec:
    """A RunSpec from a RunSpec, a mapping shaped like a run config (model, data, train, eval) or a YAML
    file's path, checked as `tunesmith train --config` checks one."""
    import copy

    from tunesmith.config import RunSpec, load_run_spec, run_spec_from

    if isinstance(spec, (str, Path)):
        return load_run_spec(Path(spec))
    if isinstance(spec, RunSpec):
        return run_spec_from(spec, "the RunSpec given to tunesmith.train")
    return run_spec_from(copy.deepcopy(dict(spec)), "the spec given to tunesmith.train")


def with_control(budget: Budget | None, control: Control | None) -> Budget | None:
    """The budget carrying the caller's control: the loop asks both after every step."""
    if control is None:
        return budget
    from dataclasses import replace

    from tunesmith.train.run.guards import Budget

    return replace(budget or Budget(), control=control)


def train(
    spec: RunSpec | Mapping[str, Any] | str | Path, *, workspace: WorkspaceLike = None, budget: Budget | None = None, control: Control | None = None
) -> TrainResult:
    """Fine-tune a base model (`tunesmith train`): writes a run folder and registers the run.

    spec: a RunSpec, a dict like a run config, or a YAML file's path. budget: tunesmith.Budget(max_seconds,
    max_cost, price_per_hour); a run that reaches it stops with a checkpoint (status "stopped"), and
    tunesmith.resume continues it. control: a tunesmith.train.run.guards.Control, told the run id and folder
    once they exist and asked after every optimiser step whether to stop (a stop is checkpointed, status
    "stopped", as a budget's). Returns a TrainResult: run_id, run_dir, status, best_metrics, info, history.
    Raises UserError on bad input before anything is written; TrainingFailed (a UserError) if training diverges.
    """
    from tunesmith.train.recipe import train as run_training
    from tunesmith.train.run.tracking import check_installed

    checked = run_spec(spec)
    check_installed(checked.train.report_to)
    return run_training(checked, workspace_of(workspace), with_control(budget, control))


def resume(run_ref: str | Path, *, workspace: WorkspaceLike = None, budget: Budget | None = None, control: Control | None = None) -> TrainResult:
    """Continue a stopped or interrupted run from its latest intact checkpoint, with its own config
    (`tunesmith train --resume RUN`). run_ref: run id, the run's name, or its folder. control: as for train."""
    from tunesmith.train.resume import resumable_run
    from tunesmith.train.resume import resume as continue_run

    ws = workspace_of(workspace)
    return continue_run(ws, resumable_run(ws, str(run_ref), None, {}), with_control(budget, control))


# ---------------------------------------------------------------- search


def tune(
    config: RunSpec | Mapping[str, Any] | str | Path,
    *,
    trials: int,
    jobs: int = 1,
    name: str | None = None,
    metric: str | None = None,
    space: str | Path | None = None,
    models: Sequence[str] | None = None,
    target: float | None = None,
    keep_general: float | None = None,
    max_time: float | None = None,
    max_cost: float | None = None,
    price_per_hour: float | None = None,
    pruner: str = "median",
    seed: int = 0,
    workspace: WorkspaceLike = None,
) -> SearchResult:
    """Search a run config's hyperparameters (`tunesmith tune`, docs/tune.md): an Optuna study (TPE, seeded;
    a pruner fed by the training loop's validations) in <home>/tune.db, each trial a registered run.

    trials: how many trials end (completed, pruned or failed) per study. jobs: trials at once, each in its own
    process. metric: val_loss (default; f1_macro for a classifier), exact_match, valid_json, label_macro_f1,
    field_accuracy.<field>, accuracy: always on the validation split; the test split is scored once, for the
    best trial, when the search ends. space: a YAML file changing the method's default space. models: the
    same search per base model; with target, the verdict names the smallest model whose best reaches it.
    keep_general: trials whose general-skills probe drop exceeds it are infeasible. max_time (seconds),
    max_cost (at price_per_hour): the whole study's budget. Returns a SearchResult (one StudyReport per study)."""
    from tunesmith.tune.search import new_search

    return new_search(
        config if isinstance(config, (str, Path)) or hasattr(config, "model_dump") else dict(config),
        workspace_of(workspace),
        trials=trials,
        jobs=jobs,
        name=name,
        metric=metric,
        space=space,
        models=list(models) if models else None,
        target=target,
        keep_general=keep_general,
        max_time=max_time,
        max_cost=max_cost,
        price_per_hour=price_per_hour,
        pruner=pruner,
        seed=seed,
    )


def resume_tune(name: str, *, jobs: int | None = None, workspace: WorkspaceLike = None) -> SearchResult:
    """Continue a study killed or stopped by its budget (`tunesmith tune --resume STUDY`): finished trials are
    kept, a trial cut short is failed and its parameters tried again."""
    from tunesmith.tune.search import resume_search

    return resume_search(name, workspace_of(workspace), jobs=jobs)


# ---------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """What `tunesmith.evaluate` kept: metrics per model id ("tuned", "base", "few-shot", "system", other
    run ids), for the split scored; the answers and report.json are under run_dir / "eval"."""

    run_dir: Path
    split: str
    metrics: dict[str, dict[str, float]]
    report: Path  # report.html


def evaluate(
    run_ref: str | Path,
    *,
    split: str | None = None,
    compare_base: bool = False,
    compare: Sequence[str] = (),
    baselines: str | Sequence[str] | None = None,
    forgetting: bool = False,
    settings: Mapping[str, Any] | None = None,
    workspace: WorkspaceLike = None,
    source: str = "the run config's eval section and the arguments of tunesmith.evaluate",
) -> Evaluation:
    """Score a run on a held-out split (`tunesmith eval RUN`): a classifier's accuracy, F1 and confusion
    matrix, or a generator's answers scored by the task's metrics, against the base model (compare_base),
    prompting baselines ("few-shot", "system") and other runs (compare: run ids or folders) on the same
    examples. forgetting: also score base and tuned on the general-skills probe.

    split: "validation" or "test" (None: the run config's eval.split, "test" unless set). settings: other
    EvalSpec fields (limit, max_new_tokens, temperature, top_p, seed, batch_size, metrics, custom_metrics,
    perplexity, system_prompt, shots, forgetting_threshold), over the run config's eval section.
    Writes eval/ and report.html in the run folder and registers the evaluation.
    """
    from tunesmith.config import EvalSpec, validate_spec
    from tunesmith.eval.baselines import parse_baselines
    from tunesmith.eval.evaluate import evaluate_run
    from tunesmith.eval.report import write_report
    from tunesmith.registry.runfolder import find_run, read_config

    ws = workspace_of(workspace)
    run_dir = find_run(ws, str(run_ref))
    flags = {"split": split, **(settings or {})}
    base = read_config(run_dir).eval.model_dump()  # the run config's eval section, then the settings given
    spec = validate_spec(EvalSpec, {**base, **{k: v for k, v in flags.items() if v is not None}}, source)
    named = baselines if baselines is None or isinstance(baselines, str) else ",".join(baselines)
    metrics = evaluate_run(ws, run_dir, spec, compare_base, compare_runs=list(compare), baselines=parse_baselines(named), forgetting=forgetting)
    return Evaluation(run_dir, spec.split, metrics, write_report(run_dir))


# ---------------------------------------------------------------- a trained run


def trained_system_prompt(workspace: Workspace, dataset_name: str) -> str | None:
    """The system message the training examples shared, so a bare prompt is asked the way the model learned."""
    from tunesmith.data.dataset import trained_system_prompt as shared

    return shared(workspace, dataset_name)


@dataclass
class Chat:
    """A conversation with a tuned model, in its training chat template, each reply stopping at end-of-turn."""

    model: Any
    tokenizer: Any
    eot_ids: list[int]
    system: str | None
    max_new_tokens: int
    history: list[dict[str, str]] = field(default_factory=list)

    def reply(self, text: str) -> str:
        """The model's answer to one more user message (the conversation so far comes first)."""
        from tunesmith.models.generate import generate_one

        self.history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        answer = generate_one(self.model, self.tokenizer, messages, self.eot_ids, self.max_new_tokens)
        self.history.append({"role": "assistant", "content": answer})
        return answer


@dataclass
class Run:
    """A run found in the registry (or by folder): run.json as `info`, config.yaml as `spec`. The model is
    loaded on first use, by the one loader of trained artefacts (models/artefact.py), and kept."""

    folder: Path
    info: RunInfo
    spec: RunSpec
    workspace: Workspace
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def model(self) -> tuple[Any, Any]:
        """(model, tokenizer) as trained: LoRA/DoRA merged, QLoRA over its 4-bit base, a classifier with its head."""
        if self._loaded is None:
            from tunesmith.models.artefact import load_run_model

            self._loaded = load_run_model(self.folder, self.info, self.spec.model)
        return self._loaded

    def chat(self, system: str | None = None, max_new_tokens: int = 256) -> Chat:
        """A conversation (`tunesmith chat`); system defaults to the one the run was trained with, if any."""
        from tunesmith.chat_template import end_of_turn_ids

        if self.info.task == "classification":
            raise UserError(
                f"run {self.info.run_id} is a classifier: it picks one of {len(self.info.labels or [])} labels and does not write answers",
                fix=f'label a text with `tunesmith classify {self.info.run_id} --text "..."`; score it with `tunesmith eval {self.info.run_id}`',
            )
        model, tokenizer = self.model()
        system = system if system is not None else trained_system_prompt(self.workspace, self.info.dataset)
        return Chat(model, tokenizer, end_of_turn_ids(tokenizer), system, max_new_tokens)

    def generate(self, prompt: str, *, system: str | None = None, max_new_tokens: int = 256) -> str:
        """One answer to one user message (`tunesmith generate`)."""
        return self.chat(system, max_new_tokens).reply(prompt)

    def classify(self, texts: Sequence[str], *, batch_size: int = 32) -> list[dict[str, Any]]:
        """A classifier's label per text (`tunesmith classify`): {"text", "label", "probability", "probabilities"}."""
        from tunesmith.eval.classification import classify_run

        return classify_run(self.folder, list(texts), batch_size)


def load_run(run_ref: str | Path, *, workspace: WorkspaceLike = None) -> Run:
    """A run by id, by its name (when one run has it) or by folder; nothing heavy is loaded yet."""
    from tunesmith.registry.runfolder import find_run, load_run_info, read_config

    ws = workspace_of(workspace)
    folder = find_run(ws, str(run_ref))
    return Run(folder, load_run_info(folder), read_config(folder), ws)


def generate(run_ref: str | Path, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, workspace: WorkspaceLike = None) -> str:
    """One answer from a tuned model, with its training chat template (`tunesmith generate`)."""
    return load_run(run_ref, workspace=workspace).generate(prompt, system=system, max_new_tokens=max_new_tokens)


def classify(run_ref: str | Path, texts: Sequence[str], *, batch_size: int = 32, workspace: WorkspaceLike = None) -> list[dict[str, Any]]:
    """A classification run's label and probability for each text (`tunesmith classify`)."""
    from tunesmith.eval.classification import classify_texts

    return classify_texts(workspace_of(workspace), str(run_ref), list(texts), batch_size)


# ---------------------------------------------------------------- export


def export(
    run_ref: str | Path,
    *,
    to: str,
    out: str | Path | None = None,
    quantize: str | None = None,
    verify: bool = True,
    verify_examples: int = 32,
    runtime: str | None = None,
    force: bool = False,
    workspace: WorkspaceLike = None,
) -> ExportResult:
    """Write a trained run in a format another runtime loads (`tunesmith export`), and check it behaves as trained.

    to: "merged" (a Hugging Face folder, adapters folded in), "adapter" (the PEFT adapter beside its base, for
    vLLM), "gguf", "ollama". out: the folder (default runs/<run-id>/exports/<to>[-<quantize>]/; an existing
    one must be empty unless force). runtime: for "adapter", "vllm" (default: refuses adapters vLLM cannot
    serve) or "peft". verify: load the export in its runtime and compare greedy answers with tunesmith's on
    the first `verify_examples` held-out test prompts. Returns an ExportResult (folder, record = export.json,
    verification). Raises UserError before writing anything for bad input; ExportMismatch (a UserError,
    exit 1) when the written export does not behave as trained.
    """
    from tunesmith.export.pipeline import export_run

    return export_run(
        run_ref,
        workspace_of(workspace),
        to,
        None if out is None else Path(out),
        quantize,
        verify,
        runtime=runtime,
        verify_examples=verify_examples,
        force=force,
    )


# ---------------------------------------------------------------- serving


def serving_app(
    models: Sequence[str | Path],
    *,
    engine: str = "auto",
    api_key: str | None = None,
    max_batch: int = 32,
    workspace: WorkspaceLike = None,
    log: str = "redacted",
    log_max_mb: float = 64,
    log_keep_files: int | None = None,
    log_keep_days: float | None = 30,
) -> Any:
    """The OpenAI-compatible server's ASGI app (FastAPI) over these models, loaded now, to run under
    any ASGI server or mount in another app. models, engine: as `serve`. api_key: required of every
    route but /health when given. log: off | redacted | full, how answered requests are kept under
    <home>/traffic (redacted: PII removed first; see `traffic`). `app.state.server.close()` stops its
    engine threads and writes what the log still holds."""
    from tunesmith.serve.launch import open_server
    from tunesmith.serve.traffic_log import log_settings

    settings = log_settings(log, max_mb=log_max_mb, keep_files=log_keep_files, keep_days=log_keep_days)
    server = open_server([str(m) for m in models], engine=engine, api_key=api_key, workspace=workspace_of(workspace), max_batch=max_batch, log=settings)
    server.app.state.server = server
    return server.app


def serve(
    models: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    engine: str = "auto",
    workspace: WorkspaceLike = None,
    log: str = "redacted",
    log_max_mb: float = 64,
    log_keep_files: int | None = None,
    log_keep_days: float | None = 30,
) -> None:
    """Serve models behind an OpenAI-compatible API until interrupted (`tunesmith serve`; docs/serve.md).

    models: run ids or names, run or export folders, GGUF files, base model names. LoRA runs on one
    base share one copy of its weights. engine: auto | transformers | vllm | llamacpp (auto says
    which it picked and why). api_key_env: the environment variable holding the API key that every
    route but /health then requires. log: off | redacted (default: PII removed by the data
    pipeline's detectors before anything is written) | full; files rotate at log_max_mb, and the
    oldest go past log_keep_files files or log_keep_days days (docs/monitoring.md)."""
    from tunesmith.serve.launch import serve as run_server
    from tunesmith.serve.traffic_log import log_settings

    settings = log_settings(log, max_mb=log_max_mb, keep_files=log_keep_files, keep_days=log_keep_days)
    run_server([str(m) for m in models], host=host, port=port, api_key_env=api_key_env, engine=engine, workspace=workspace_of(workspace), log=settings)


def traffic(
    model: str | None = None, *, since: float | str | None = None, until: float | str | None = None, workspace: WorkspaceLike = None
) -> list[TrafficRecord]:
    """Logged served requests (`tunesmith serve`/`api` write them), oldest first. model: the name a client
    asked for, or the run id behind it (None: all). since/until: unix seconds, or a duration back from
    now such as "24h", "30m", "7d"."""
    from tunesmith.serve.traffic import point_in_time, read_traffic

    home = workspace_of(workspace).home
    return list(read_traffic(home, model=model, since=point_in_time(since, "since"), until=point_in_time(until, "until")))


# ---------------------------------------------------------------- served traffic back into training


def logs_to_review(
    model: str,
    *,
    out: str,
    only: str = "all",
    since: float | str | None = None,
    until: float | str | None = None,
    below: float = 0.5,
    limit: int | None = None,
    workspace: WorkspaceLike = None,
) -> Any:
    """Logged traffic of `model` → a review sheet (`tunesmith data from-logs MODEL --out NAME`): review.csv,
    review.html and from-logs.json under <home>/reviews/from-logs/NAME/. only: all | alerted (requests
    named by `tunesmith monitor` alerts) | low-confidence (mean token probability under `below`).
    since/until: unix seconds or a duration back from now ("24h"). Returns the paths and the window."""
    from tunesmith.monitor.from_logs import export_sheet
    from tunesmith.serve.traffic import point_in_time

    return export_sheet(
        workspace_of(workspace),
        model,
        out,
        only=only,
        since=point_in_time(since, "--since"),
        until=point_in_time(until, "--until"),
        below=below,
        limit=limit,
    )


def dataset_from_review(sheet: str | Path, *, out: str | None = None, key: str | Path | None = None, workspace: WorkspaceLike = None) -> Dataset:
    """A filled from-logs review sheet → a new dataset version (`tunesmith data from-logs --import SHEET`),
    whose manifest names its parent dataset and the traffic window (source_kind "logs")."""
    from tunesmith.monitor.from_logs import import_sheet

    return import_sheet(workspace_of(workspace), Path(sheet), out=out, key_path=None if key is None else Path(key))


def lineage(run_ref: str | Path, *, workspace: WorkspaceLike = None) -> list[dict[str, Any]]:
    """The run, the run it continued, and so on (`tunesmith runs lineage RUN`): each with its dataset
    version (source_kind file | logs | augment, parent dataset, traffic window) and key metric."""
    from tunesmith.registry.lineage import run_lineage

    return run_lineage(workspace_of(workspace), str(run_ref))


def monitor(
    model: str,
    *,
    since: str | float = "24h",
    until: float | None = None,
    config: Any = None,
    webhook: str | None = None,
    workspace: WorkspaceLike = None,
) -> Any:
    """Check a window of `model`'s logged traffic (`tunesmith monitor`; docs/monitoring.md): input drift
    against its training data, output health, quality when a judge is configured. Returns the
    MonitorReport (`.alerts`, `.checks`, `.as_json()`); alerts are also appended to
    <home>/monitor/alerts.jsonl. model: a run id or name, or a served model name. since: a duration
    (24h), a time or unix seconds. config: a MonitorConfig, or the path of a monitor.yaml.
    Unknown model or an empty window: UserError."""
    from tunesmith.monitor.report import monitor as run_monitor

    return run_monitor(model, since=since, until=until, config=config, webhook=webhook, workspace=workspace_of(workspace))

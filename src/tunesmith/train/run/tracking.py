"""Every metrics record also goes to the experiment trackers named in `train.report_to`.

metrics.jsonl stays the truth; trackers are views of it, all offline by default:
TensorBoard event files in <run>/tensorboard, MLflow in a SQLite store in the workspace
(<workspace>/mlflow.db unless MLFLOW_TRACKING_URI is set), Weights & Biases in offline mode
(unless WANDB_MODE is set) with its files in the run folder.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from tunesmith.config import RunSpec
from tunesmith.errors import UserError

# tracker -> (module that must import, what installs it)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "wandb": ("wandb", "pip install wandb"),
}


def check_installed(names: list[str]) -> None:
    """Before anything is loaded or written: a missing tracker is a usage error, not a crash mid-run."""
    for name in names:
        module, command = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"train.report_to names '{name}' but the package '{module}' is not installed",
                where="train.report_to",
                fix=f"{command}   (or pip install 'tunesmith[tracking]' for tensorboard and mlflow)",
            )


class _TensorBoard:
    def __init__(self, run_dir: Path, spec: RunSpec):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), flush_secs=10)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}" if prefix else str(key), item).items()}
    return {prefix: str(value)[:6000]}  # MLflow's limit on a parameter's value


class _MLflow:
    def __init__(self, run_dir: Path, spec: RunSpec):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        workspace = run_dir.parents[1]  # runs live in <workspace>/runs/<run-id>
        # Passed explicitly rather than exported, so one process training in two workspaces keeps them apart.
        self.client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace / 'mlflow.db'}")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tunesmith")
        experiment = self.client.get_experiment_by_name(name)
        # Without an explicit location MLflow puts artefacts under ./mlruns of whatever folder the user is in.
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name, artifact_location=(workspace / "mlartifacts").as_uri())
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"tunesmith.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        params = _flatten("", spec.model_dump(mode="json"))
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _WandB:
    def __init__(self, run_dir: Path, spec: RunSpec):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tunesmith"),
            name=run_dir.name,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=spec.model_dump(mode="json"),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


BACKENDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}


class Trackers:
    """The trainer's one handle on all trackers: log(record) after each metrics.jsonl line, closed at the end."""

    def __init__(self, backends: list[Any]):
        self.backends = backends

    def log(self, record: dict[str, Any]) -> None:
        if not self.backends:
            return
        values = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for backend in self.backends:
            backend.log(int(record["step"]), values)

    def close(self, failed: bool = False) -> None:
        for backend in self.backends:
            backend.close(failed)
        self.backends = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(failed=exc_type is not None)


def open_trackers(spec: RunSpec, run_dir: Path) -> Trackers:
    check_installed(spec.train.report_to)
    return Trackers([BACKENDS[name](run_dir, spec) for name in spec.train.report_to])

"""tunesmith: turn a general LLM into a specialist for one job.

The Python API (docs/python-api.md): prepare_dataset, load_dataset, train, resume, evaluate, load_run,
generate, classify, export, serve, serving_app, traffic, logs_to_review, dataset_from_review, lineage, monitor, tune, resume_tune;
bad input raises tunesmith.errors.UserError with the CLI's message.

Names are resolved on first use (module __getattr__): `import tunesmith` stays cheap (no torch) and the
stages can import tunesmith's submodules without running into a half-initialised package root."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from tunesmith._version import __version__

if TYPE_CHECKING:
    from tunesmith.config import EvalSpec, PrepareSpec, RunSpec
    from tunesmith.data.dataset import Dataset
    from tunesmith.errors import UserError
    from tunesmith.registry.runfolder import RunInfo
    from tunesmith.train.loop import TrainResult
    from tunesmith.train.run.guards import Budget
    from tunesmith.workflows import (
        Chat,
        Evaluation,
        Run,
        classify,
        dataset_from_review,
        evaluate,
        export,
        generate,
        lineage,
        load_dataset,
        load_run,
        logs_to_review,
        prepare_dataset,
        resume,
        resume_tune,
        serving_app,
        traffic,
        train,
        tune,
    )
    from tunesmith.workspace import Workspace

# name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        (
            "prepare_dataset",
            "load_dataset",
            "resume",
            "resume_tune",
            "evaluate",
            "load_run",
            "generate",
            "classify",
            "serving_app",
            "traffic",
            "logs_to_review",
            "dataset_from_review",
            "lineage",
            "Run",
            "Chat",
            "Evaluation",
        ),
        "tunesmith.workflows",
    ),
    "Workspace": "tunesmith.workspace",
    "UserError": "tunesmith.errors",
    "RunSpec": "tunesmith.config",
    "PrepareSpec": "tunesmith.config",
    "EvalSpec": "tunesmith.config",
    "Dataset": "tunesmith.data.dataset",
    "RunInfo": "tunesmith.registry.runfolder",
    "TrainResult": "tunesmith.train.loop",  # imports torch, on first use only
    "Budget": "tunesmith.train.run.guards",  # imports torch, on first use only
}

__all__ = [
    "__version__", "prepare_dataset", "load_dataset", "train", "tune", "resume", "resume_tune", "evaluate", "load_run", "generate", "classify", "export", "serve", "serving_app",
    "traffic", "logs_to_review", "dataset_from_review", "lineage", "monitor",
    "Run", "Chat",
    "Evaluation", "Workspace", "UserError", "RunSpec", "PrepareSpec", "EvalSpec", "Dataset", "RunInfo", "TrainResult", "Budget",
]  # fmt: skip


assert set(__all__) == {"__version__", "train", "tune", "export", "serve", "monitor", *_EXPORTS}


class _CallablePackage(types.ModuleType):
    """`tunesmith.train`, `tunesmith.tune`, `tunesmith.export`, `tunesmith.serve` and `tunesmith.monitor` each name both a
    package (tunesmith/train/, tune/, export/, serve/, monitor/) and a function of the API. The import system binds the package on its parent whenever any stage
    imports its modules, so the package itself is made callable: `tunesmith.train(spec)` is
    `workflows.train(spec)`, `tunesmith.serve(models)` is `workflows.serve(models)`, and every import
    form of the packages' modules keeps working."""

    def __call__(self, *args: Any, **options: Any) -> Any:
        """tunesmith.workflows.train, .tune, .export, .serve or .monitor (the function this package is named for): docs/python-api.md."""
        import tunesmith.workflows as workflows

        return getattr(workflows, self.__name__.rsplit(".", 1)[1])(*args, **options)


import tunesmith.export as _exporting  # noqa: E402  (the packages' __init__ are docstrings: no torch)
import tunesmith.monitor as _monitoring  # noqa: E402
import tunesmith.serve as _serving  # noqa: E402
import tunesmith.train as _training  # noqa: E402
import tunesmith.tune as _tuning  # noqa: E402

for _package in (_training, _tuning, _exporting, _serving, _monitoring):
    _package.__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

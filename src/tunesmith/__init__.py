"""tunesmith: turn a general LLM into a specialist for one job.

The Python API (docs/python-api.md): prepare_dataset, load_dataset, train, resume, evaluate, load_run,
generate, classify, export; bad input raises tunesmith.errors.UserError with the CLI's message.

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
    from tunesmith.workflows import Chat, Evaluation, Run, classify, evaluate, export, generate, load_dataset, load_run, prepare_dataset, resume, train
    from tunesmith.workspace import Workspace

# name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ("prepare_dataset", "load_dataset", "resume", "evaluate", "load_run", "generate", "classify", "Run", "Chat", "Evaluation"),
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
    "__version__", "prepare_dataset", "load_dataset", "train", "resume", "evaluate", "load_run", "generate", "classify", "export", "Run", "Chat",
    "Evaluation", "Workspace", "UserError", "RunSpec", "PrepareSpec", "EvalSpec", "Dataset", "RunInfo", "TrainResult", "Budget",
]  # fmt: skip


assert set(__all__) == {"__version__", "train", "export", *_EXPORTS}


class _TrainingPackage(types.ModuleType):
    """`tunesmith.train` names both the training package (tunesmith/train/) and the API's `train`.
    The import system binds the package on its parent whenever any stage imports tunesmith.train.*,
    so the package itself is made callable: `tunesmith.train(spec)` is `workflows.train(spec)`,
    and every import form of the package's modules keeps working."""

    def __call__(self, spec: Any, **options: Any) -> Any:
        """Train a run from a RunSpec, a dict or a YAML path: tunesmith.workflows.train, docs/python-api.md."""
        from tunesmith.workflows import train

        return train(spec, **options)


class _ExportPackage(types.ModuleType):
    """`tunesmith.export` is the export package (tunesmith/export/) and the API's `export`, made callable
    as the training package is, for the same reason."""

    def __call__(self, run_ref: Any, **options: Any) -> Any:
        """Export a run (merged, adapter, gguf, ollama) and verify it: tunesmith.workflows.export, docs/python-api.md."""
        from tunesmith.workflows import export

        return export(run_ref, **options)


import tunesmith.export as _exporting  # noqa: E402  (the package's __init__ is a docstring: no torch)
import tunesmith.train as _training  # noqa: E402  (the package's __init__ is empty: no torch)

_training.__class__ = _TrainingPackage
_exporting.__class__ = _ExportPackage


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

"""One trial in a process of its own (`tune --jobs K`): python -m tunesmith.tune.worker STUDY TRIAL
[--parent PID] [--max-seconds S]. The `tune` process drew the trial's parameters; this process trains,
reports and tells the study, and stops at its next step if its parent goes away."""

from __future__ import annotations

import argparse

import optuna


def main(argv: list[str] | None = None) -> int:
    from tunesmith.tune.study import load_settings, open_study
    from tunesmith.tune.trial import run_trial
    from tunesmith.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m tunesmith.tune.worker")
    parser.add_argument("study")
    parser.add_argument("trial", type=int)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    workspace = Workspace.from_env()
    settings = load_settings(workspace, args.study)
    study = open_study(workspace, settings)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, args.trial)
    state = run_trial(workspace, settings, optuna.Trial(study, trial_id), max_seconds=args.max_seconds, parent_pid=args.parent)
    return 0 if state != "RUNNING" else 3


if __name__ == "__main__":
    raise SystemExit(main())

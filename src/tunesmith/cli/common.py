"""What several command modules share."""

from __future__ import annotations

FORMAT_HELP = (
    "messages | prompt_completion | input_output | alpaca | sharegpt | classification | preference | prompt_chosen_rejected (auto-detected when omitted)"
)


def current_workspace():
    from tunesmith.workspace import Workspace

    return Workspace.from_env()

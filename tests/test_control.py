"""The training control hook: a caller outside the run (the jobs service) learns the run's id and folder
as soon as they exist and stops it after any optimiser step; the stop is a checkpointed "stopped" run
that resume continues, the metrics log showing every step exactly once."""

from __future__ import annotations

from conftest import read_metrics, tickets_home, train_steps

import tunesmith
from tunesmith.train.run.guards import Control


class StopAt(Control):
    def __init__(self, step: int | None):
        self.step, self.asked, self.started = step, 0, []

    def on_start(self, run_id, run_dir):
        self.started.append((run_id, run_dir, (run_dir / "run.json").is_file()))

    def stop_requested(self):
        self.asked += 1
        return "cancelled by the caller" if self.asked == self.step else None


def test_a_stop_requested_at_step_2_checkpoints_there_and_resume_runs_every_other_step_once(tmp_path, tiny_model):
    workspace = tickets_home(tmp_path / "home", 30)
    spec = {"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": {"epochs": 2, "batch_size": 4}}
    control = StopAt(2)
    stopped = tunesmith.train(spec, workspace=workspace, control=control)
    assert stopped.status == "stopped" and stopped.info.stop_reason == "cancelled by the caller"
    assert control.started == [(stopped.run_id, stopped.run_dir, True)]
    assert [r["step"] for r in train_steps(stopped.run_dir)] == [1, 2]
    assert (stopped.run_dir / "checkpoints" / "step-2" / "trainer_state.pt").is_file()

    again = StopAt(None)
    done = tunesmith.resume(stopped.run_id, workspace=workspace, control=again)
    total = len(train_steps(done.run_dir))
    assert done.status == "completed" and again.started[0][0] == stopped.run_id
    assert [r["step"] for r in train_steps(done.run_dir)] == list(range(1, total + 1)) and total > 2
    assert again.asked == total - 2 - 1  # asked after every step but the last, which ends the run anyway
    assert [r["event"] for r in read_metrics(done.run_dir) if "event" in r] == ["stopped", "resumed"]

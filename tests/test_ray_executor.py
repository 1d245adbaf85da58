"""`--executor ray`: job processes run through Ray Jobs on a real single-machine cluster on 127.0.0.1
(`ray start --head --block`, ended by its own process group in teardown)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A one-CPU Ray cluster of our own. `ray stop` would end every Ray process of this user on the
    machine; the cluster started with --block ends with its process group instead."""
    ray = Path(sys.executable).with_name("ray")
    # Ray's unix sockets live under its temp dir, whose path must stay short (< 108 bytes): not pytest's tmp_path.
    temp = tempfile.mkdtemp(prefix="ts-ray-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    args = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-host", "127.0.0.1"]
    args += ["--dashboard-port", str(dashboard), "--include-dashboard", "true", "--num-cpus", "1", "--temp-dir", temp, "--disable-usage-stats"]
    args += ["--dashboard-agent-listen-port", str(free_port())]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    head = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=temp)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        while True:
            assert head.poll() is None, f"ray start failed: {head.stderr.read().decode()[-2000:]}"
            assert time.monotonic() - started < 120, "the Ray cluster did not answer within 120 s"
            try:
                if httpx.get(address + "/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        print(f"\nRay cluster answering after {time.monotonic() - started:.1f} s")
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # --block: ray start ends the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of its group is left
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def wait_for(executor, handle: str, states: set[str], within: float = 60) -> str:
    deadline = time.monotonic() + within
    while (state := executor.state(handle)) not in states:
        assert time.monotonic() < deadline, f"{handle} still {state} after {within} s"
        time.sleep(0.25)
    return state


def test_jobs_run_fail_and_stop_on_a_ray_cluster(ray_address, tmp_path):
    from tunesmith.api.ray_executor import RayExecutor

    executor = RayExecutor(ray_address)
    out = tmp_path / "written.txt"
    write = [sys.executable, "-c", "import os, pathlib; pathlib.Path(os.environ['TS_OUT']).write_text('made by ' + os.environ['TS_JOB']); print('done')"]
    started = time.monotonic()
    handle = executor.start("ftjob-ok", write, {"TS_OUT": str(out), "TS_JOB": "ftjob-ok"})
    assert wait_for(executor, handle, {"succeeded", "failed"}) == "succeeded", executor.logs(handle)
    print(f"submit to succeeded: {time.monotonic() - started:.1f} s")
    assert out.read_text() == "made by ftjob-ok"
    assert "done" in executor.logs(handle)
    # started again (a restarted worker), the ended job gets a fresh submission id, not Ray's refusal
    again = executor.start("ftjob-ok", write, {"TS_OUT": str(out), "TS_JOB": "again"})
    assert again != handle and wait_for(executor, again, {"succeeded", "failed"}) == "succeeded"

    failing = executor.start("ftjob-bad", [sys.executable, "-c", "import sys; print('bad data at line 3', file=sys.stderr); sys.exit(1)"], {})
    assert wait_for(executor, failing, {"succeeded", "failed"}) == "failed"
    assert "bad data at line 3" in executor.logs(failing)

    sleeper = executor.start("ftjob-sleep", [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(600)"], {})
    wait_for(executor, sleeper, {"running"})
    # a restarted API asking to start the same job finds the one on the cluster instead of running it twice
    assert executor.start("ftjob-sleep", ["false"], {}) == sleeper
    executor.stop(sleeper)
    assert wait_for(executor, sleeper, {"stopped", "failed", "succeeded"}, within=30) == "stopped"

    assert executor.state("tunesmith-no-such-job") == "unknown"
    executor.stop("tunesmith-no-such-job")  # nothing to stop: no error


def test_an_unreachable_cluster_is_named():
    from tunesmith.api.ray_executor import RayExecutor
    from tunesmith.errors import UserError

    with pytest.raises(UserError) as refused:
        RayExecutor(f"http://127.0.0.1:{free_port()}")
    assert "--ray-address" in refused.value.render() and "ray start --head" in refused.value.render()


def test_the_service_runs_a_fine_tuning_job_on_the_ray_cluster(ray_address, tmp_path, tiny_model):
    """`tunesmith api --executor ray`: the openai client's job trains as a Ray job, and its state,
    events and fine-tuned model reach the API as with the local executor."""
    from apiserver import all_events, running_api, training_file, wait_for

    with running_api(tmp_path / "home", tiny_model, "--executor", "ray", "--ray-address", ray_address) as api:
        client = api.client(max_retries=0)
        with training_file(tmp_path, 30).open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=api.base,
            training_file=uploaded.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
            extra_body={"evaluation": {"enabled": False}},
        )
        done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done.status == "succeeded", done.error
        steps = [e.data["step"] for e in all_events(client, job.id) if e.type == "metrics" and "train_loss" in e.data]
        assert steps == list(range(1, len(steps) + 1)) and steps
        from ray.job_submission import JobSubmissionClient

        # the job really ran on the cluster, under the submission id derived from the job's
        submitted = {info.submission_id for info in JobSubmissionClient(ray_address).list_jobs()}
        assert f"tunesmith-{job.id}" in submitted
        answer = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert answer.model == done.fine_tuned_model

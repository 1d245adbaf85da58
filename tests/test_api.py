"""The fine-tuning service as its users meet it: the official openai client, unchanged, against a live
`tunesmith api` on 127.0.0.1 with the tiny model as its base."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
import urllib.request

import openai
import pytest
from apiserver import all_events, running_api, start_api, training_file, wait_for

FAST = {"evaluation": {"enabled": False}}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model):
    """One server with two job slots for the tests that train."""
    with running_api(tmp_path_factory.mktemp("api") / "home", tiny_model, "--workers", "2") as found:
        yield found


@pytest.fixture(scope="module")
def idle_api(tmp_path_factory, tiny_model):
    """A server with no worker: jobs stay where create puts them."""
    with running_api(tmp_path_factory.mktemp("idle") / "home", tiny_model, "--workers", "0", "--max-upload-mb", "0.05") as found:
        yield found


def upload(client, path):
    with path.open("rb") as handle:
        return client.files.create(file=handle, purpose="fine-tune")


def supervised(**hyperparameters):
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


@pytest.mark.slow
def test_upload_train_follow_events_and_chat_with_the_fine_tuned_model(api, tmp_path):
    client = api.client()
    file = upload(client, training_file(tmp_path, 30))
    assert file.purpose == "fine-tune" and file.bytes == training_file(tmp_path, 30).stat().st_size
    assert client.files.content(file.id).content == training_file(tmp_path, 30).read_bytes()
    created = time.time()
    job = client.fine_tuning.jobs.create(
        model=api.base,
        training_file=file.id,
        method=supervised(n_epochs=2, batch_size=4, learning_rate_multiplier=2),
        suffix="tickets",
        metadata={"team": "support"},
        extra_body={"evaluation": {"limit": 3, "max_new_tokens": 8}},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 2

    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{api.base}:tickets:{job.id.removeprefix('ftjob-')[:8]}"
    assert done.trained_tokens > 0 and done.finished_at >= int(created)

    events = all_events(client, job.id)
    trained = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    steps = [d["step"] for d in trained]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == trained[-1]["total_steps"]
    assert any("validation loss" in e.message for e in events)
    assert events[-1].message.startswith("The job has successfully completed")
    evaluated = next(e for e in events if e.message.startswith("Evaluation on the test split"))
    assert set(evaluated.data["metrics"]) == {"tuned", "base"}
    assert client.fine_tuning.jobs.retrieve(job.id).model_extra["evaluation"]["metrics"]["tuned"]["n"] == 3

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all(c.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model + ":ckpt-step-") for c in checkpoints)
    assert checkpoints[0].step_number == steps[-1] and checkpoints[0].metrics.valid_loss is not None

    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == steps

    answer_final = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "my invoice is wrong"}], max_tokens=5)
    assert answer_final.model == done.fine_tuned_model and answer_final.choices[0].message.content
    answer = client.chat.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.usage.completion_tokens <= 3

    # both answers are in the workspace's traffic log, naming the job's run and the checkpoint served
    import tunesmith

    deadline = time.time() + 60
    while len(logged := tunesmith.traffic(workspace=api.home, since=created)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    by_model = {r.model: r for r in logged}
    final, at_checkpoint = by_model[done.fine_tuned_model], by_model[checkpoints[0].fine_tuned_model_checkpoint]
    assert final.status == 200 and final.messages[0]["content"] == "my invoice is wrong"
    # The log keeps the answer as its PII scrub leaves it (redacted, the default): the tiny model's near-random
    # text sometimes reads as a name to the NER (CI once logged "halow\x11\ufffd\ufffd" as "<PERSON>").
    from tunesmith.data.pii import Scrubber

    assert final.answer == Scrubber("redact", ner=True).scrub_value(answer_final.choices[0].message.content)
    assert final.run_id and at_checkpoint.run_id == final.run_id and at_checkpoint.checkpoint == f"step-{checkpoints[0].step_number}"

    models = [m.id for m in client.models.list()]
    assert done.fine_tuned_model in models and api.base in models and "smollm2-135m-instruct" in models
    assert client.fine_tuning.jobs.list(metadata={"team": "support"}).data[0].id == job.id
    assert client.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert gone.value.body["code"] == "model_not_found"
    deadline = time.time() + 30
    while not any(r.status == 404 for r in tunesmith.traffic(done.fine_tuned_model, workspace=api.home)) and time.time() < deadline:
        time.sleep(0.5)
    assert any(r.status == 404 and r.error for r in tunesmith.traffic(done.fine_tuned_model, workspace=api.home))  # refusals are logged too


@pytest.mark.slow
def test_cancel_stops_a_running_job_within_one_step_and_pause_keeps_its_checkpoint(api, tmp_path):
    client = api.client()
    file = upload(client, training_file(tmp_path, 40))
    job = client.fine_tuning.jobs.create(model=api.base, training_file=file.id, method=supervised(n_epochs=20, batch_size=2), extra_body=FAST)
    first = _first_step(client, job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "running"  # it ends after the step in progress
    done = wait_for(client, job.id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    steps = [e.data["step"] for e in all_events(client, job.id) if e.type == "metrics"]
    assert first <= steps[-1] <= first + 2 < 20 * 14  # the step under way when asked, and the one the request met
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert "already cancelled" in again.value.message

    paused_job = client.fine_tuning.jobs.create(model=api.base, training_file=file.id, method=supervised(n_epochs=1, batch_size=2), extra_body=FAST)
    _first_step(client, paused_job.id)
    client.fine_tuning.jobs.pause(paused_job.id)
    paused = wait_for(client, paused_job.id, {"paused", "succeeded", "failed"}, timeout=60)
    assert paused.status == "paused"
    kept = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(paused_job.id)]
    assert kept, "a paused job keeps a checkpoint to continue from"
    assert client.fine_tuning.jobs.resume(paused_job.id).status == "queued"
    finished = wait_for(client, paused_job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert finished.status == "succeeded", finished.error
    steps = [e.data["step"] for e in all_events(client, paused_job.id) if e.type == "metrics" and "train_loss" in e.data]
    assert steps == list(range(1, len(steps) + 1)) and max(kept) < steps[-1]


def _first_step(client, job_id: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data if e.type == "metrics"]
        if steps:
            return max(steps)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} made no step in {timeout} s")


@pytest.mark.slow
def test_a_budget_stops_training_and_the_job_keeps_what_it_trained(api, tmp_path):
    client = api.client()
    file = upload(client, training_file(tmp_path, 40))
    job = client.fine_tuning.jobs.create(
        model=api.base, training_file=file.id, method=supervised(n_epochs=50), metadata={"budget_max_seconds": "2"}, extra_body=FAST
    )
    assert job.model_extra["budget"] == {"max_seconds": 2.0}
    done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done.status == "succeeded" and done.fine_tuned_model, done.error
    assert done.hyperparameters.n_epochs == 50 and isinstance(done.hyperparameters.learning_rate_multiplier, float)  # "auto" resolved
    events = all_events(client, job.id)
    warning = next(e for e in events if e.message.startswith("Training stopped by the job's budget"))
    assert warning.level == "warn" and "--max-time 2 s reached" in warning.message
    trained = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert [d["step"] for d in trained] == list(range(1, len(trained) + 1)) and len(trained) < trained[-1]["total_steps"]


@pytest.mark.slow
def test_a_bad_file_fails_the_job_with_openais_code_and_the_line(api, tmp_path):
    client = api.client()
    lines = training_file(tmp_path, 12).read_text().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    job = client.fine_tuning.jobs.create(model=api.base, training_file=upload(client, broken).id, extra_body=FAST)
    failed = wait_for(client, job.id, {"failed", "queued", "running", "succeeded"}, timeout=60)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "line 3" in failed.error.message and "assistant" in failed.error.message

    few = client.fine_tuning.jobs.create(model=api.base, training_file=upload(client, training_file(tmp_path, 4, "few.jsonl")).id, extra_body=FAST)
    failed = wait_for(client, few.id, {"failed", "queued", "running", "succeeded"}, timeout=60)
    assert failed.error.code == "invalid_n_examples"
    assert failed.error.message == "Training file has 4 example(s), but must have at least 10 examples."


def test_requests_the_service_cannot_run_are_refused_once_with_a_400_naming_the_parameter(idle_api, tmp_path):
    client = idle_api.client(max_retries=5)  # a retried refusal would show as several requests; a 400 is not retried
    file = upload(client, training_file(tmp_path, 12))
    with pytest.raises(openai.BadRequestError) as dpo:
        client.fine_tuning.jobs.create(model=idle_api.base, training_file=file.id, method={"type": "dpo", "dpo": {}})
    assert "'dpo' is not supported" in dpo.value.message and dpo.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.fine_tuning.jobs.create(model=idle_api.base, training_file="file-nope")
    assert unknown.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as model:
        client.fine_tuning.jobs.create(model="/etc", training_file=file.id)
    assert model.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as extra:
        client.fine_tuning.jobs.create(model=idle_api.base, training_file=file.id, extra_body={"epochs": 3})
    assert "Unrecognized request argument supplied: epochs" in extra.value.message
    with pytest.raises(openai.BadRequestError) as lr:
        client.fine_tuning.jobs.create(model=idle_api.base, training_file=file.id, hyperparameters={"learning_rate_multiplier": -1})
    assert lr.value.body["param"] == "hyperparameters.learning_rate_multiplier"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.APIStatusError) as large:
        client.files.create(file=("big.jsonl", b"x" * 60_000), purpose="fine-tune")
    assert large.value.status_code == 413


def test_job_lists_page_with_has_more_and_filter_by_metadata(idle_api, tmp_path):
    client = idle_api.client()
    file = upload(client, training_file(tmp_path, 12))
    made = [client.fine_tuning.jobs.create(model=idle_api.base, training_file=file.id, metadata={"sweep": "p", "i": str(i)}).id for i in range(7)]
    first = client.fine_tuning.jobs.list(limit=3, metadata={"sweep": "p"})
    assert [j.id for j in first.data] == made[::-1][:3] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=3, metadata={"sweep": "p"})] == made[::-1]  # the client follows the pages
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"i": "4"})] == [made[4]]
    assert client.fine_tuning.jobs.cancel(made[0]).status == "cancelled"  # never started: at once
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert client.fine_tuning.jobs.create(model=idle_api.base, training_file=file.id, method=supervised(**auto)).hyperparameters.n_epochs == "auto"


def test_an_upload_cut_off_midway_leaves_no_file_listed(tmp_path, tiny_model):
    api = start_api(tmp_path / "home", tiny_model, "--workers", "0")
    try:
        body = b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        with socket.create_connection(("127.0.0.1", api.port)) as conn:
            head = f"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body) + 100_000}\r\n\r\n"
            conn.sendall(head.encode() + body + b'{"messages": []}\n' * 2000)
            time.sleep(0.5)
            api.kill()  # the server dies with the upload half received
        api = start_api(tmp_path / "home", tiny_model, "--workers", "0", port=api.port)
        assert list(api.client().files.list()) == []
        stored = tmp_path / "home" / "files"
        assert not stored.exists() or list(stored.iterdir()) == []  # the partial upload was swept at start
    finally:
        api.kill()


@pytest.mark.slow
def test_a_job_killed_with_its_server_and_worker_resumes_and_logs_every_step_once(tmp_path, tiny_model):
    home = tmp_path / "home"
    # the job's process dies inside step 8 (after the checkpoint of step 5's validation), then the server and worker are killed too
    api = start_api(home, tiny_model, env={"TUNESMITH_TEST_KILL_AT": "step:8"})
    try:
        client = api.client()
        file = upload(client, training_file(tmp_path, 30))
        job = client.fine_tuning.jobs.create(model=api.base, training_file=file.id, method=supervised(n_epochs=2, batch_size=4), extra_body=FAST)
        deadline = time.monotonic() + 120
        while max([e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data if e.type == "metrics"] or [0]) < 7:
            assert time.monotonic() < deadline, "no step 7 in 120 s"
            time.sleep(0.2)
        time.sleep(1)
        api.kill()
        api = start_api(home, tiny_model)
        client = api.client()
        done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=180)
        assert done.status == "succeeded", done.error
        events = all_events(client, job.id)
        steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]
        assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > 8
        assert any(e.message == "Resuming the job from its last checkpoint." for e in events)
        run_steps = [json.loads(line)["step"] for line in (home / "runs" / done.model_extra["run_id"] / "metrics.jsonl").read_text().splitlines()]
        assert 8 in run_steps
    finally:
        api.kill()


@pytest.mark.slow
def test_a_job_waits_in_queued_while_every_worker_slot_is_busy(tmp_path, tiny_model):
    with running_api(tmp_path / "home", tiny_model, "--workers", "1") as api:
        client = api.client()
        file = upload(client, training_file(tmp_path, 40))
        first, second = (
            client.fine_tuning.jobs.create(model=api.base, training_file=file.id, method=supervised(n_epochs=50, batch_size=2), extra_body=FAST)
            for _ in range(2)
        )
        _first_step(client, first.id)
        time.sleep(1.5)  # three polls of the worker: it would have started the second job by now if it had a free slot
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
        assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
        client.fine_tuning.jobs.cancel(first.id)
        assert wait_for(client, first.id, {"cancelled", "failed", "succeeded"}, timeout=60).status == "cancelled"


def test_with_a_key_every_route_but_health_needs_it(tmp_path, tiny_model):
    keys = pytest.importorskip("tunesmith.api.keys")  # the keys module (tunesmith api keys) arrives with its own branch
    from tunesmith.api.store import api_db
    from tunesmith.workspace import Workspace

    home = tmp_path / "home"
    _, secret = keys.KeyStore(api_db(Workspace.from_env(home))).create("ci")
    with running_api(home, tiny_model, "--workers", "0") as api:
        with pytest.raises(openai.AuthenticationError) as refused:
            api.client(api_key="wrong").files.list()
        assert refused.value.body["code"] == "invalid_api_key"
        assert list(api.client(api_key=secret).files.list()) == []
        with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/health") as answer:
            assert answer.status == 200


def test_stopping_the_service_stops_its_worker(tmp_path, tiny_model):
    """SIGTERM (what a service manager or `kill` sends) to `tunesmith api` alone: its worker goes too,
    instead of living on and taking jobs with nobody serving them."""
    import signal

    import psutil

    api = start_api(tmp_path / "home", tiny_model)
    try:
        workers = [p for p in psutil.Process(api.process.pid).children() if "worker" in p.cmdline()]
        assert len(workers) == 1
        api.process.send_signal(signal.SIGTERM)
        api.process.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"the worker {alive[0].pid} outlived the service"
    finally:
        api.kill()


@pytest.mark.slow
def test_a_job_on_a_fine_tuned_model_continues_its_run(api, tmp_path):
    """OpenAI's continued fine-tuning: `model` names an `ft:` model; the new job's run starts from that
    job's run (its lineage in run.json) and its model id keeps the original base."""
    client = api.client()
    file = upload(client, training_file(tmp_path, 30))
    first = wait_for(
        client,
        client.fine_tuning.jobs.create(model=api.base, training_file=file.id, method=supervised(n_epochs=1), extra_body=FAST).id,
        {"succeeded", "failed"},
    )
    assert first.status == "succeeded", first.error
    second = client.fine_tuning.jobs.create(model=first.fine_tuned_model, training_file=file.id, method=supervised(n_epochs=1), suffix="more", extra_body=FAST)
    done = wait_for(client, second.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith(f"ft:{api.base}:more:")
    run = json.loads((api.home / "runs" / done.model_extra["run_id"] / "run.json").read_text())
    assert run["parent_run"] == first.model_extra["run_id"]


def test_an_unknown_executor_is_refused_before_the_service_starts(capsys, home):
    from clihelp import run_cli

    result = run_cli(capsys, "api", "--executor", "slurm", "--port", "1")
    assert result.code == 2 and "unknown executor 'slurm'" in result.err and "--executor local" in result.err and "Traceback" not in result.err

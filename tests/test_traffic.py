"""Served traffic: what `tunesmith serve` logs (a real uvicorn on 127.0.0.1, the official openai client),
with PII removed before anything is written; rotation and retention; and the way back into training
(`data from-logs`, review sheet, new dataset version) with the lineage that records it."""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest
from clihelp import run_cli
from conftest import tickets_home, train_tiny
from test_serve import running

EMAIL, PHONE = "jane.doe@example.com", "+1 415-555-0134"
PII_PROMPT = f"my invoice is wrong, write to {EMAIL} or call {PHONE}"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    ws = tickets_home(tmp_path_factory.mktemp("traffic") / "home", 30)
    run = train_tiny(ws, tiny_model, max_steps=4, lr=3e-2, batch_size=4)
    return {"ws": ws, "run": run}


def traffic_lines(home) -> list[dict]:
    return [json.loads(line) for path in sorted((home / "traffic").glob("traffic-*.jsonl")) for line in path.read_text().splitlines()]


def send_traffic(url: str, run: str) -> dict:
    """A chat, a completion, a streamed chat, a refused request (unknown model) and a bad parameter."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    chat = c.chat.completions.create(model=run, messages=[{"role": "user", "content": PII_PROMPT}], temperature=0, max_tokens=12)
    done = c.completions.create(model=run, prompt="refund please, I was charged twice", temperature=0, max_tokens=6)
    chunks = list(c.chat.completions.create(model=run, messages=[{"role": "user", "content": "the app crashes"}], temperature=0, max_tokens=8, stream=True))
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=run, messages=[{"role": "user", "content": "hi"}], temperature=9)
    metrics = httpx.get(url + "/metrics").text
    return {"chat": chat, "completion": done, "stream": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), "metrics": metrics}


def test_every_request_is_logged_with_pii_removed(served, tmp_path):
    import tunesmith

    home = served["ws"].home
    app = tunesmith.serving_app([served["run"]], engine="transformers", workspace=home)  # --log redacted is the default
    with running(app) as url:
        sent = send_traffic(url, served["run"])
    assert "tunesmith_traffic_dropped_total 0.0" in sent["metrics"]
    records = traffic_lines(home)  # running() closed the server: the log is flushed
    assert [(r["endpoint"], r["status"]) for r in records] == [
        ("chat.completions", 200),
        ("completions", 200),
        ("chat.completions", 200),
        ("chat.completions", 404),
        ("chat.completions", 400),
    ]
    chat, completion, stream, missing, bad = records
    text = json.dumps(records)
    assert EMAIL not in text and "415-555-0134" not in text
    assert "<EMAIL>" in chat["messages"][0]["content"] and "<PHONE>" in chat["messages"][0]["content"]
    assert chat["redactions"] >= 2 and chat["log_mode"] == "redacted"
    assert chat["id"] == sent["chat"].id and chat["answer"] == sent["chat"].choices[0].message.content
    assert chat["run_id"] == served["run"] and chat["model"] == served["run"]
    assert chat["completion_tokens"] == sent["chat"].usage.completion_tokens and chat["prompt_tokens"] == sent["chat"].usage.prompt_tokens
    assert chat["finish_reason"] == sent["chat"].choices[0].finish_reason and chat["max_tokens"] == 12 and chat["latency_ms"] > 0
    assert 0 < chat["confidence"] <= 1
    assert completion["prompt"] == "refund please, I was charged twice" and completion["answer"] == sent["completion"].choices[0].text
    assert stream["answer"] == sent["stream"] and stream["finish_reason"] in ("stop", "length")
    assert missing["model"] == "no-such-model" and "does not exist" in missing["error"]
    assert "temperature" in bad["error"]
    # the Python API reads the same records, by model or run id, by time
    assert [r.id for r in tunesmith.traffic(served["run"], workspace=home)] == [chat["id"], completion["id"], stream["id"], bad["id"]]
    assert tunesmith.traffic(since="1h", workspace=home)[0].id == chat["id"]
    assert tunesmith.traffic(since=time.time() + 60, workspace=home) == []


def test_full_keeps_the_text_and_off_writes_nothing(served, tmp_path):
    import tunesmith

    for mode in ("full", "off"):
        home = tmp_path / mode
        home.mkdir()
        folder = served["ws"].run_dir(served["run"])  # served by path from a workspace of its own: each mode's log apart
        app = tunesmith.serving_app([folder], engine="transformers", workspace=home, log=mode)
        with running(app) as url:
            c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
            c.chat.completions.create(model=served["run"], messages=[{"role": "user", "content": PII_PROMPT}], temperature=0, max_tokens=4)
        if mode == "full":
            (record,) = traffic_lines(home)
            assert record["messages"][0]["content"] == PII_PROMPT and record["log_mode"] == "full" and record["redactions"] == 0
        else:
            assert not (home / "traffic").exists()


def test_a_torn_last_line_is_skipped(tmp_path):
    import tunesmith
    from tunesmith.serve.traffic import TrafficRecord, TrafficWriter

    writer = TrafficWriter(tmp_path)
    for n in range(3):
        writer.write(TrafficRecord(id=f"r{n}", time=time.time(), model="m", endpoint="completions", prompt="p", answer="a", latency_ms=1.0))
    with open(next((tmp_path / "traffic").glob("*.jsonl")), "a", encoding="utf-8") as handle:
        handle.write('{"id": "r3", "time": 1, "mod')  # the process died mid-line
    assert [r.id for r in tunesmith.traffic(workspace=tmp_path)] == ["r0", "r1", "r2"]


def test_files_rotate_by_size_and_the_oldest_go(tmp_path):
    from tunesmith.serve.traffic import TrafficRecord, TrafficWriter, read_traffic

    writer = TrafficWriter(tmp_path, max_bytes=400, keep_files=3)
    for n in range(40):
        writer.write(TrafficRecord(id=f"r{n:02d}", time=1000.0 + n, model="m", endpoint="completions", prompt="p" * 50, answer="a", latency_ms=1.0))
    files = sorted((tmp_path / "traffic").glob("traffic-*.jsonl"))
    assert len(files) == 3 and all(f.stat().st_size < 800 for f in files)
    ids = [r.id for r in read_traffic(tmp_path)]
    assert ids == sorted(ids) and ids[-1] == "r39" and len(ids) < 40  # the newest kept, in order; the oldest gone
    # keep_days: a file last written long ago goes when the next file starts
    old = files[0]
    stamp = time.time() - 40 * 86400
    os.utime(old, (stamp, stamp))
    aging = TrafficWriter(tmp_path, max_bytes=400, keep_days=30)
    aging.write(TrafficRecord(id="new", time=2000.0, model="m", endpoint="completions", prompt="p", answer="a", latency_ms=1.0))
    assert not old.exists() and files[1].exists()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    from tunesmith.serve.traffic import TrafficRecord
    from tunesmith.serve.traffic_log import LogSettings, TrafficLog

    log = TrafficLog(tmp_path, LogSettings(mode="full", queue_size=2))
    record = TrafficRecord(id="r", time=1.0, model="m", endpoint="completions", prompt="p", answer="a", latency_ms=1.0)
    with log.writer._lock:  # the disk stalls: the log thread waits, the server must not
        started = time.perf_counter()
        for _ in range(50):
            log.submit(record)
        assert time.perf_counter() - started < 0.5
        assert log.dropped >= 45
    log.close()
    assert log.written + log.dropped == 50
    assert len(traffic_lines(tmp_path)) == log.written


def test_serve_and_api_refuse_an_unknown_log_mode(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    for command in (["serve", "whatever"], ["api"]):
        result = run_cli(capsys, *command, "--log", "verbose")
        assert result.code == 2 and "--log" in result.out + result.err and "redacted" in result.out + result.err, command
    assert not (tmp_path / "traffic").exists()


# ---------------------------------------------------------------- back into training, and the lineage that records it

TICKETS = ["refund please, I was charged twice", "the app crashes on login", "KST-12 is down", "my invoice is wrong", "thanks, great support", "login fails"]


def fill(sheet, choices: dict[int, tuple[str, str | None]]) -> None:
    """A reviewer's work: row n gets preferred (and, for 2, a rewritten answer 2); other rows stay empty."""
    import csv

    with sheet.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for n, (preferred, rewrite) in choices.items():
        rows[n]["preferred"] = preferred
        if rewrite is not None:
            rows[n]["answer_2"] = rewrite
    with sheet.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow  # trains and evaluates a second run: about a minute on two cores
def test_reviewed_traffic_becomes_a_dataset_version_and_the_lineage_shows_both_runs(served, capsys, monkeypatch):
    import tunesmith
    from tunesmith.config import RunSpec
    from tunesmith.eval.review import COLUMNS
    from tunesmith.registry.store import Registry, reindex
    from tunesmith.train.recipe import train

    ws, run = served["ws"], served["run"]
    monkeypatch.setenv("TUNESMITH_HOME", str(ws.home))
    started = time.time()
    app = tunesmith.serving_app([run], engine="transformers", workspace=ws.home)
    with running(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        ids = [c.chat.completions.create(model=run, messages=[{"role": "user", "content": t}], temperature=0, max_tokens=8).id for t in [*TICKETS, PII_PROMPT]]
    # monitor flagged two of them (the alert's shape: INTERFACES.md)
    (ws.home / "monitor").mkdir(exist_ok=True)
    alert = {"id": "al-1", "time": time.time(), "model": run, "run_id": run, "check": "input_drift", "status": "alert", "request_ids": ids[1:3]}
    (ws.home / "monitor" / "alerts.jsonl").write_text(json.dumps(alert) + "\n" + '{"id": "torn', encoding="utf-8")
    alerted = run_cli(capsys, "data", "from-logs", run, "--out", "tickets-alerted", "--only", "alerted", "--since", "10m")
    assert alerted.code == 0, alerted.out + alerted.err
    sheet = ws.home / "reviews" / "from-logs" / "tickets-alerted" / "review.csv"
    assert [r.split(",")[0] for r in sheet.read_text().splitlines()] == [",".join(COLUMNS).split(",")[0], *ids[1:3]]
    nothing = run_cli(capsys, "data", "from-logs", run, "--out", "x", "--only", "low-confidence", "--below", "0.0")
    assert nothing.code == 2 and "nothing to review" in nothing.err

    made = run_cli(capsys, "data", "from-logs", run, "--out", "tickets-logs", "--since", str(started))  # this test's requests only
    assert made.code == 0, made.out + made.err
    folder = ws.home / "reviews" / "from-logs" / "tickets-logs"
    sheet = folder / "review.csv"
    assert sheet.read_text().splitlines()[0] == ",".join(COLUMNS)  # the eval stage's review format, not another
    assert 'textarea id="answer_2-0"' in (folder / "review.html").read_text()
    assert EMAIL not in (folder / "from-logs.json").read_text()  # what was logged redacted stays redacted
    fixed = "billing: duplicate charge, refund it"
    fill(sheet, {0: ("2", fixed), 1: ("1", None), 2: ("tie", None), 3: ("1", None), 4: ("2", "praise"), 5: ("1", None)})  # row 6 not reviewed

    imported = run_cli(capsys, "data", "from-logs", "--import", str(sheet))
    assert imported.code == 0, imported.out + imported.err
    manifest = json.loads((ws.dataset_dir("tickets-logs") / "manifest.json").read_text())
    parent = tunesmith.load_dataset("tickets", workspace=ws.home)
    assert manifest["source_kind"] == "logs" and manifest["parent_dataset"] == f"tickets@{parent.version}"
    window = manifest["traffic_window"]
    assert window["model"] == run and window["run_id"] == run and started - 600 <= window["since"] <= window["until"] <= time.time()
    assert sum(manifest["counts"].values()) == 6
    dataset = tunesmith.load_dataset("tickets-logs", workspace=ws.home)
    answers = {e.messages[-1].content for split in dataset.splits.values() for e in split}
    assert fixed in answers and "praise" in answers
    assert Registry(ws.registry_db).dataset("tickets-logs")["source_kind"] == "logs"

    # the next iteration: continue the served run on the reviewed version, evaluate both, and follow the chain
    child = train(
        RunSpec.model_validate({"model": {"from_run": run}, "data": {"dataset": "tickets-logs"}, "train": {"max_steps": 2, "batch_size": 2}}), ws
    ).info.run_id
    for each in (run, child):
        tunesmith.evaluate(each, split="test", settings={"max_new_tokens": 8}, workspace=ws.home)
    assert Registry(ws.registry_db).run(child)["parent_run"] == run
    reindex(ws.home)  # the folders are the truth: a rebuilt registry knows the lineage too
    assert Registry(ws.registry_db).run(child)["parent_run"] == run and Registry(ws.registry_db).dataset("tickets-logs")["parent_dataset"]

    printed = run_cli(capsys, "runs", "lineage", child)
    assert printed.code == 0, printed.out + printed.err
    text = " ".join(printed.out.split())
    assert child in text and f"← {run}" in text and "tickets-logs" in text and "logs: traffic of" in text and "exact match" in text.lower()
    as_json = run_cli(capsys, "runs", "lineage", child, "--json")
    chain = json.loads(as_json.out)["chain"]
    assert [s["run_id"] for s in chain] == [child, run]
    assert chain[0]["dataset"]["source_kind"] == "logs" and chain[0]["dataset"]["parent_dataset"] == f"tickets@{parent.version}"
    assert chain[1]["dataset"]["source_kind"] == "file" and all(s["metric"] and s["metric"]["split"] == "test" for s in chain)
    assert chain[0]["metric"]["metric"] == chain[1]["metric"]["metric"]  # one metric along the chain, so it reads as a trend


def test_a_registry_from_before_lineage_gains_its_columns(tmp_path):
    import sqlite3

    from tunesmith.registry.store import Registry

    db_path = tmp_path / "registry.db"
    old = sqlite3.connect(db_path)
    old.executescript(
        "CREATE TABLE datasets (name TEXT PRIMARY KEY, version TEXT NOT NULL, path TEXT NOT NULL, format TEXT NOT NULL,"
        " counts TEXT NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL);"
        "INSERT INTO datasets VALUES ('tickets', 'v1', '/x', 'messages', '{}', 'tickets.jsonl', '2026-01-01');"
    )
    old.commit()
    old.close()
    registry = Registry(db_path)
    assert registry.dataset("tickets")["source_kind"] is None  # an older row: no lineage recorded (read as a file)
    window = {"model": "m", "since": 1.0, "until": 2.0}
    registry.add_dataset(
        "tickets-v2", "v2", tmp_path, "messages", {"train": 3}, "r.jsonl", source_kind="logs", parent_dataset="tickets@v1", traffic_window=window
    )
    row = registry.dataset("tickets-v2")
    assert (row["source_kind"], row["parent_dataset"], json.loads(row["traffic_window"])) == ("logs", "tickets@v1", window)

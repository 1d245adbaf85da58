"""`tunesmith monitor`: a tuned ticket router's logged traffic against its training data.

Synthetic traffic (tunesmith.demo.traffic, written with the serving layer's TrafficWriter) drawn from
the training distribution raises no alert; each kind of shift is flagged within SHIFTED_REQUESTS
requests by the check that names it, with examples. The statistics are real (MiniLM embeddings,
scipy, scikit-learn); only the traffic is made up. One test goes through a real `tunesmith serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from apiserver import free_port
from chatserver import ChatCompletions, serve
from clihelp import run_cli
from conftest import tickets_home, train_tiny

from tunesmith.demo.traffic import make_window
from tunesmith.monitor.alerts import read_alerts
from tunesmith.serve.traffic import TrafficWriter

HOUR = 3600.0
# Requests after a shift within which each kind of shift is flagged: benchmarks/monitor_sim.py measures
# the delay (docs/monitoring.md has the table); the tests hold the monitor to it, with a margin.
SHIFTED_REQUESTS = 40
IN_DISTRIBUTION = 120
MODEL = "router"  # the name clients ask the server for


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A workspace with the tickets dataset (300 demo tickets) and a LoRA run of the tiny model on it."""
    folder = tmp_path_factory.mktemp("monitored")
    workspace = tickets_home(folder, 300)
    return folder, train_tiny(workspace, tiny_model, max_steps=2, batch_size=4)  # only the run folder matters here


@pytest.fixture()
def home(trained, tmp_path, monkeypatch) -> Path:
    """A fresh home per test (its own traffic, alerts and reports) sharing the module's run and dataset."""
    folder, _ = trained
    home = tmp_path / "home"
    home.mkdir()
    for name in ("runs", "datasets", "registry.db"):
        if (folder / name).exists():
            (home / name).symlink_to(folder / name)
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    return home


@pytest.fixture()
def run_id(trained) -> str:
    return trained[1]


def write(home: Path, kind: str, n: int, *, hours_ago: float, run_id: str, seed: int, model: str = MODEL) -> list[str]:
    """n requests of `kind` spread over the hour that ended `hours_ago` hours ago; their ids."""
    start = time.time() - (hours_ago + 1) * HOUR + 60  # a minute inside the hour at each end: the monitor's "now" comes later
    records = make_window(kind, n, start=start, seconds=HOUR - 120, model=model, run_id=run_id, seed=seed)
    writer = TrafficWriter(home)
    for record in records:
        writer.write(record)
    return [r.id for r in records]


def test_traffic_from_the_training_distribution_raises_no_alert(home, run_id, capsys):
    write(home, "in_distribution", IN_DISTRIBUTION, hours_ago=1, run_id=run_id, seed=1)
    write(home, "in_distribution", IN_DISTRIBUTION, hours_ago=0, run_id=run_id, seed=2)
    result = run_cli(capsys, "monitor", MODEL, "--since", "1h")
    assert result.code == 0, result.out + result.err
    assert "no alerts" in result.out and f"{IN_DISTRIBUTION} requests" in result.out
    for check in ("input_embedding", "input_length", "input_language", "input_vocabulary", "output_format", "latency_p95"):
        assert check in result.out
    assert read_alerts(home) == []
    assert len(list((home / "monitor" / "reports").glob("router-*.json"))) == 1
    assert len(list((home / "monitor" / "cache").glob("tickets-*.npy"))) == 1  # the dataset is embedded once, not every run


@pytest.mark.parametrize(
    ("kind", "check", "shown"),
    [
        ("new_codes", "input_vocabulary", "unseen in training"),
        ("other_domain", "input_embedding", "nearest training prompt"),
        ("language", "input_language", "language de"),
        ("broken_outputs", "output_format", ""),
    ],
)
def test_a_shift_is_flagged_by_its_check_with_examples(home, run_id, kind, check, shown):
    import tunesmith

    write(home, "in_distribution", IN_DISTRIBUTION, hours_ago=1, run_id=run_id, seed=3)
    ids = write(home, kind, SHIFTED_REQUESTS, hours_ago=0, run_id=run_id, seed=4)
    report = tunesmith.monitor(MODEL, since="1h")
    fired = {a["check"]: a for a in report.alerts}
    assert check in fired, {c.name: c.message for c in report.checks}
    alert = fired[check]
    assert alert["model"] == MODEL and alert["run_id"] == run_id and alert["status"] == "alert"
    assert alert["request_ids"] and set(alert["request_ids"]) <= set(ids)
    assert 1 <= len(alert["examples"]) <= 3 and all(e["id"] in ids and e["prompt"] and e["why"] for e in alert["examples"])
    assert shown in alert["examples"][0]["why"]
    if kind == "broken_outputs":
        assert alert["examples"][0]["answer"] is not None
        assert any(w in alert["examples"][0]["why"] for w in ("not valid JSON", "outside the trained set", "missing field"))
    assert read_alerts(home, model=MODEL) == report.alerts
    assert read_alerts(home, model=run_id) == report.alerts  # the run id finds the same alerts


def test_json_report_has_the_agreed_shape_and_exit_1_on_alert(home, run_id, capsys):
    write(home, "in_distribution", IN_DISTRIBUTION, hours_ago=1, run_id=run_id, seed=5)
    write(home, "language", SHIFTED_REQUESTS, hours_ago=0, run_id=run_id, seed=6)
    result = run_cli(capsys, "monitor", run_id, "--since", "1h", "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert set(report) == {"model", "window", "requests", "checks", "alerts"}
    assert report["model"] == run_id and report["requests"] == SHIFTED_REQUESTS
    assert set(report["window"]) == {"since", "until"} and report["window"]["until"] - report["window"]["since"] == pytest.approx(HOUR)
    for check in report["checks"].values():
        assert {"value", "baseline", "threshold", "status"} <= set(check) and check["status"] in ("ok", "alert", "skipped")
    assert report["checks"]["input_language"]["status"] == "alert" and report["checks"]["quality"]["status"] == "skipped"
    alert = next(a for a in report["alerts"] if a["check"] == "input_language")
    assert set(alert) == {"id", "time", "model", "run_id", "check", "status", "value", "baseline", "threshold", "window", "request_ids", "examples", "message"}
    saved = list((home / "monitor" / "reports").glob(f"{run_id}-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == report
    assert [a["id"] for a in read_alerts(home)] == [a["id"] for a in report["alerts"]]


def test_bad_input_exits_2_and_says_what_to_do(home, run_id, capsys, tmp_path):
    unknown = run_cli(capsys, "monitor", "no-such-model")
    assert unknown.code == 2 and "no run and no served traffic named 'no-such-model'" in unknown.err
    empty = run_cli(capsys, "monitor", run_id, "--since", "1h")
    assert empty.code == 2 and "no traffic for" in empty.err and "--since" in empty.err
    write(home, "in_distribution", 30, hours_ago=0, run_id=run_id, seed=7)
    since = run_cli(capsys, "monitor", MODEL, "--since", "yesterday")
    assert since.code == 2 and "--since 'yesterday'" in since.err
    config = tmp_path / "monitor.yaml"
    config.write_text("thresholds:\n  format_erors: 0.1\n  alpha: 2\ndrift:\n  permutations: 10\n")
    bad = run_cli(capsys, "monitor", MODEL, "--config", str(config))
    text = " ".join(bad.err.split())
    assert bad.code == 2 and "thresholds.format_erors: unknown setting" in text and "thresholds.alpha" in text and "drift.permutations" in text
    scheme = run_cli(capsys, "monitor", MODEL, "--webhook", "file:///etc/passwd")
    assert scheme.code == 2 and "not an http(s) URL" in scheme.err
    assert not (home / "monitor" / "alerts.jsonl").exists()


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 - the stdlib's name
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_receives_the_alerts(home, run_id, capsys):
    write(home, "in_distribution", IN_DISTRIBUTION, hours_ago=1, run_id=run_id, seed=8)
    write(home, "broken_outputs", SHIFTED_REQUESTS, hours_ago=0, run_id=run_id, seed=9)
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        result = run_cli(capsys, "monitor", MODEL, "--since", "1h", "--webhook", url)
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 1
    assert len(_Receiver.bodies) == 1
    body = _Receiver.bodies[0]
    assert body["model"] == MODEL and body["alerts"] == read_alerts(home)
    assert "output_format" in {a["check"] for a in body["alerts"]}
    # a receiver that is down: the alerts are kept, the user is told, the exit status still says "alert"
    port = free_port()
    down = run_cli(capsys, "monitor", MODEL, "--since", "1h", "--webhook", f"http://127.0.0.1:{port}/hook")
    assert down.code == 1 and "not delivered to the webhook" in down.err
    assert len(read_alerts(home)) == 2 * len(body["alerts"])


class _Grader(ChatCompletions):
    """Grades 5 for a routing (a JSON object with a known team and a priority), 1 otherwise."""

    def reply(self, body: dict) -> str | None:
        from tunesmith.demo.tickets import TEAMS

        answer = body["messages"][-1]["content"].split("[Answer to grade]\n", 1)[1]
        try:
            routed = json.loads(answer)
        except ValueError:
            routed = None
        good = isinstance(routed, dict) and routed.get("team") in TEAMS and "priority" in routed
        score = 5 if good else 1
        return json.dumps({"scores": {"correctness": score, "helpfulness": score}, "reason": "routed" if good else "not a routing"})


def test_quality_is_graded_by_the_configured_judge(home, run_id, tmp_path):
    import tunesmith

    write(home, "in_distribution", 30, hours_ago=1, run_id=run_id, seed=10)
    write(home, "broken_outputs", 30, hours_ago=0, run_id=run_id, seed=11)
    with serve(_Grader) as url:
        config = tmp_path / "monitor.yaml"
        config.write_text(f"judge:\n  url: {url}\n  model: grader\n  rubric: [correctness, helpfulness]\n  sample: 12\n")
        good = tunesmith.monitor(MODEL, since=time.time() - 2 * HOUR, until=time.time() - HOUR, config=config).check("quality")
        bad = tunesmith.monitor(MODEL, since="1h", config=config).check("quality")
        assert _Grader.calls == 24
    assert good.status == "ok" and good.value == 5.0 and good.baseline is None and good.threshold == 3.0
    assert bad.status == "alert" and bad.value < 3.0 and "12 sampled answers" in bad.message
    assert bad.evidence and "judge: correctness 1" in bad.evidence[0].why


def test_a_served_base_model_gets_output_health_only(home, capsys):
    """A model that is not a run (a base model served by name) has no training data: drift is skipped, said why."""
    write(home, "broken_outputs", 30, hours_ago=0, run_id=None, seed=13, model="smollm2-135m-instruct")
    result = run_cli(capsys, "monitor", "smollm2-135m-instruct", "--since", "1h", "--json")
    report = json.loads(result.out)
    assert result.code == 1 and report["requests"] == 30
    assert report["checks"]["input_embedding"]["status"] == "skipped" and "not a run" in report["checks"]["input_embedding"]["message"]
    assert report["checks"]["output_format"]["status"] == "skipped"
    assert [a["check"] for a in report["alerts"]] == ["output_refusals"]


def test_read_alerts_filters_by_model_and_time(home, run_id):
    import tunesmith

    write(home, "language", 30, hours_ago=0, run_id=run_id, seed=12)
    before = time.time()
    report = tunesmith.monitor(MODEL, since="1h")
    assert report.alerts and read_alerts(home, since=before) == report.alerts
    assert read_alerts(home, since=time.time() + 1) == [] and read_alerts(home, model="another") == []
    with open(home / "monitor" / "alerts.jsonl", "a") as handle:
        handle.write('{"torn": ')  # a crash mid-line
    assert read_alerts(home) == report.alerts


@pytest.mark.slow
def test_served_traffic_end_to_end_after_logging_lands(home, run_id, capsys):
    """Needs the traffic helper's logging (`tunesmith serve --log redacted` writing <home>/traffic/): a real
    server answers ticket prompts through the openai client; monitor reads what it logged. The tiny
    random model cannot answer in JSON, so the trained format is broken and the alert shows its answers."""
    import openai

    from tunesmith.demo.tickets import SYSTEM_PROMPT, generate

    port = free_port()
    argv = [sys.executable, "-m", "tunesmith", "serve", run_id, "--port", str(port), "--log", "redacted"]
    process = subprocess.Popen(argv, env={**os.environ, "TUNESMITH_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        said = []
        for line in process.stdout:
            said.append(line)
            if "OpenAI-compatible API at" in line:
                break
        assert process.poll() is None, "".join(said)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        prompts = [r["messages"][1]["content"] for r in generate(25, seed=3)]
        ids = [
            client.chat.completions.create(
                model=run_id, messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p}], max_tokens=12
            ).id
            for p in prompts
        ]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    result = run_cli(capsys, "monitor", run_id, "--since", "1h", "--json")
    report = json.loads(result.out)
    assert report["requests"] == len(prompts)
    assert report["checks"]["input_language"]["status"] == "ok" and report["checks"]["input_vocabulary"]["status"] == "ok"
    broken = [a for a in report["alerts"] if a["check"] in ("output_format", "output_truncated")]
    assert result.code == 1 and broken and set(broken[0]["request_ids"]) <= set(ids)

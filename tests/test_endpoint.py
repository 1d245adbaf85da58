"""The HTTP client that judges and paraphrasers share, against real servers on 127.0.0.1: the key
never follows a redirect to another origin, transient failures are retried (bounded), and no more
than the allowed number of requests are in flight at once."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
from chatserver import ChatCompletions, serve
from clihelp import run_cli

from tunesmith.errors import UserError
from tunesmith.eval.judge import JudgeItem, endpoint_judge, grade

GOOD = '{"scores": {"correctness": 5}, "reason": "ok"}'


def _chat_payload(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class _Elsewhere(BaseHTTPRequestHandler):
    """Another origin: records the Authorization header of whatever reaches it, by any method, and
    answers like a chat endpoint (so a client that follows the redirect would not even notice)."""

    calls = 0
    seen_keys: list[str | None] = []

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).calls += 1
        type(self).seen_keys.append(self.headers.get("Authorization"))
        payload = _chat_payload(GOOD)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815 - the stdlib's names

    def log_message(self, *args):
        pass


def _redirector(target: str, status: int) -> type[BaseHTTPRequestHandler]:
    class _Redirect(BaseHTTPRequestHandler):
        calls = 0
        seen_keys: list[str | None] = []

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            type(self).calls += 1
            type(self).seen_keys.append(self.headers.get("Authorization"))
            self.send_response(status)
            self.send_header("Location", target + "/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return _Redirect


@pytest.mark.parametrize("status", [302, 307])
def test_the_judge_key_never_follows_a_redirect_to_another_origin(status, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret")
    with serve(_Elsewhere) as elsewhere, serve(_redirector(elsewhere, status)) as url:
        with pytest.raises(UserError) as info:
            grade([JudgeItem(prompt="q", answer="a")], criteria=["correctness"], ask=endpoint_judge(url, "m", api_key_env="JUDGE_KEY"))
    assert not any(_Elsewhere.seen_keys), "the key reached another origin"
    message = info.value.render()
    assert f"redirect (HTTP {status})" in message and elsewhere in message and "JUDGE_KEY" in message


def test_the_paraphraser_key_never_follows_a_redirect_and_prepare_says_why(capsys, home, tickets_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with serve(_Elsewhere) as elsewhere, serve(_redirector(elsewhere, 302)) as url:
        result = run_cli(capsys, "data", "prepare", str(tickets_file), "--pii", "off", "--augment", "1", "--augment-url", url)
    assert not any(_Elsewhere.seen_keys), "the key reached another origin"
    assert result.code == 2 and "Traceback" not in result.err
    err = " ".join(result.err.split())
    assert "paraphrase endpoint" in err and "redirect (HTTP 302)" in err and elsewhere in err
    assert not (home / "datasets" / "tickets").exists()


class _MovedWithin(ChatCompletions):
    """Redirects /v1/... to /v2/... on the same origin, which answers."""

    def do_POST(self):  # noqa: N802
        if self.path.startswith("/v1/"):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(307)
            self.send_header("Location", "/v2/" + self.path[len("/v1/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_POST()

    def reply(self, body: dict) -> str | None:
        return GOOD


def test_a_redirect_within_the_same_origin_is_followed_with_the_key(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret")
    with serve(_MovedWithin) as url:
        grades = grade([JudgeItem(prompt="q", answer="a")], criteria=["correctness"], ask=endpoint_judge(url, "m", api_key_env="JUDGE_KEY"))
    assert grades[0].scores == {"correctness": 5}
    assert _MovedWithin.seen_keys == ["Bearer sk-secret"]


class _Flaky(ChatCompletions):
    """503 twice, then answers."""

    def do_POST(self):  # noqa: N802
        with type(self).lock:
            type(self).calls += 1
            failing = type(self).calls <= 2
        if failing:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_error(503, "overloaded")
            return
        type(self).calls -= 1  # ChatCompletions counts this one again
        super().do_POST()

    def reply(self, body: dict) -> str | None:
        return GOOD


def test_transient_failures_are_retried_then_answered():
    with serve(_Flaky) as url:
        grades = grade([JudgeItem(prompt="q", answer="a")], criteria=["correctness"], ask=endpoint_judge(url, "m"))
    assert grades[0].scores == {"correctness": 5}
    assert _Flaky.calls == 3


class _Down(ChatCompletions):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        with type(self).lock:
            type(self).calls += 1
        self.send_error(503, "overloaded")


def test_retries_are_bounded_and_the_error_says_how_many_tries():
    from tunesmith.models.endpoint import ChatEndpoint

    with serve(_Down) as url:
        endpoint = ChatEndpoint(url, "m", role="judge", retries=2, backoff=0.01)
        with pytest.raises(UserError, match=r"HTTP 503.*after 3 tries"):
            endpoint([{"role": "user", "content": "hi"}])
    assert _Down.calls == 3


class _Slow(ChatCompletions):
    """Takes 0.3 s per request and measures how many are in flight at once."""

    in_flight = 0
    most = 0

    def reply(self, body: dict) -> str | None:
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        time.sleep(0.3)
        with cls.lock:
            cls.in_flight -= 1
        answer = body["messages"][-1]["content"].rsplit("\n", 1)[-1]
        return json.dumps({"scores": {"correctness": int(answer)}})


def test_requests_run_in_parallel_but_never_more_than_allowed():
    _Slow.in_flight = _Slow.most = 0
    items = [JudgeItem(id=str(i), prompt="q", answer=str(1 + i % 5)) for i in range(10)]
    started = time.perf_counter()
    with serve(_Slow) as url:
        grades = grade(items, criteria=["correctness"], ask=endpoint_judge(url, "m", concurrency=3))
    elapsed = time.perf_counter() - started
    assert _Slow.most == 3 and _Slow.calls == 10
    assert [g.scores["correctness"] for g in grades] == [1 + i % 5 for i in range(10)]  # replies stay in order
    assert elapsed < 10 * 0.3  # in parallel: 4 rounds of 0.3 s, not 10

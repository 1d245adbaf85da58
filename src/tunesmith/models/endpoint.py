"""Chat completions at an OpenAI-compatible endpoint: the one HTTP client that the judge
(eval/judge.py) and the paraphraser (data/augment.py) share.

- The key (from an environment variable, never a file) goes only to the origin (scheme, host,
  port) of the URL it was given for. A redirect within that origin is followed; a redirect
  anywhere else is refused with the target named, before anything is sent there. httpx is used
  with `follow_redirects=False` so that this rule is ours and visible here, not a default of a
  library (urllib, used before, re-sent the key on a 302 to any host).
- Timeouts on every request; 408/429/5xx answers and connection errors are retried a bounded
  number of times with exponential backoff (a `Retry-After` in seconds is honoured, capped).
- `many` sends a list of conversations with at most `concurrency` requests in flight and
  returns the replies in order.

Foundation-level: imports nothing from data/, train/ or eval/.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tunesmith.errors import UserError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER_S = 30.0


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default_port


class ChatEndpoint:
    """`endpoint(messages) -> reply text`, `endpoint.many([messages, ...]) -> [reply text, ...]`.

    `role` names the caller in errors ("judge", "paraphrase"); `fix` is the fix line for errors
    that the user's settings can cure; `params` go into every request body (temperature, ...)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        role: str,
        api_key_env: str = "OPENAI_API_KEY",
        fix: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        concurrency: int = 4,
        **params: Any,
    ):
        if concurrency < 1 or retries < 0:
            raise UserError(f"{role} endpoint: concurrency must be at least 1 and retries at least 0", fix="pass concurrency >= 1, retries >= 0")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        try:
            self._origin = origin(httpx.URL(self.endpoint))
        except httpx.InvalidURL as exc:
            raise UserError(f"{role} endpoint URL {url!r} is not a URL: {exc}", fix="give a base URL such as http://127.0.0.1:8000/v1") from None
        if self._origin[0] not in ("http", "https"):
            raise UserError(f"{role} endpoint URL {url!r} is not http(s)", fix="give a base URL such as http://127.0.0.1:8000/v1")
        self.model, self.role, self.api_key_env, self.params = model, role, api_key_env, params
        self.fix = fix or f"check the {role} URL, the model name {model!r} and the key in ${api_key_env}"
        self.retries, self.backoff, self.concurrency = retries, backoff, concurrency
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        )

    def __call__(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, **self.params}
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.retries + 1):
            tries = f" after {attempt + 1} tries" if attempt else ""
            try:
                response = self._post(body, headers)
            except httpx.TransportError as exc:  # refused, reset, timed out
                if attempt < self.retries:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise UserError(
                    f"{self.role} endpoint {self.endpoint} failed{tries}: {type(exc).__name__}: {exc}",
                    fix=f"check that the server is running at {self.endpoint} and speaks the OpenAI chat-completions API",
                ) from None
            if response.status_code in RETRY_STATUS and attempt < self.retries:
                time.sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            if response.is_error:
                raise UserError(f"{self.role} endpoint {self.endpoint} answered HTTP {response.status_code} {response.reason_phrase}{tries}", fix=self.fix)
            return self._content(response)
        raise AssertionError("unreachable")  # the loop returns or raises

    def many(self, conversations: list[list[dict]]) -> list[str]:
        """Replies in the order of `conversations`, at most `concurrency` requests at a time; the
        first error stops the rest (requests not yet sent are dropped)."""
        if self.concurrency == 1 or len(conversations) <= 1:
            return [self(c) for c in conversations]
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"{self.role}-http")
        try:
            futures = [pool.submit(self, c) for c in conversations]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------

    def _post(self, body: dict, headers: dict) -> httpx.Response:
        """POST, following redirects only within the origin the key was given for."""
        response = self._client.post(self.endpoint, json=body, headers=headers)
        for _ in range(MAX_REDIRECTS):
            following = response.next_request
            if following is None:
                return response
            if origin(following.url) != self._origin:
                raise UserError(
                    f"{self.role} endpoint {self.endpoint} answered with a redirect (HTTP {response.status_code}) to "
                    f"{following.url}, another origin; it was not followed, so the key in ${self.api_key_env} is only ever "
                    f"sent to {self._origin[0]}://{self._origin[1]}:{self._origin[2]}",
                    fix=f"if {following.url} is the server you mean, give its base URL instead of {self.endpoint.rsplit('/chat/completions', 1)[0]}",
                )
            response = self._client.send(following)
        if response.next_request is not None:
            raise UserError(f"{self.role} endpoint {self.endpoint} redirected more than {MAX_REDIRECTS} times", fix=self.fix)
        return response

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:  # an HTTP date: fall back to our own backoff
                pass
        return self.backoff * 2**attempt

    def _content(self, response: httpx.Response) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(
                f"{self.role} endpoint {self.endpoint} did not answer in the chat-completions format ({type(exc).__name__}: {exc})",
                fix=f"check that the server at {self.endpoint} speaks the OpenAI chat-completions API",
            ) from None
        return content if isinstance(content, str) else ""

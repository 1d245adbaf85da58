"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests of code that talks
to such endpoints (judges, paraphrasers). Subclasses decide the reply; this serves it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatCompletions(BaseHTTPRequestHandler):
    """Records every request's Authorization header; `reply` returns the text, or None for HTTP 401.
    Requests are served in threads (clients send several at once), so counters take the lock."""

    calls = 0
    seen_keys: list[str | None] = []
    lock = threading.Lock()

    def reply(self, body: dict) -> str | None:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with type(self).lock:
            type(self).calls += 1
            type(self).seen_keys.append(self.headers.get("Authorization"))
        text = self.reply(body)
        if text is None:
            self.send_error(401, "invalid key")
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep test output clean
        pass


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The server's base URL (…/v1) while the block runs; counters start from zero."""
    handler.calls, handler.seen_keys = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()

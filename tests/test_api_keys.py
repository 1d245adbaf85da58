"""API keys of the fine-tuning service: `tunesmith api keys create|list|revoke`, stored as hashes in
api.db, and the HTTP gate that refuses every route but /health without an active key."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from clihelp import run_cli
from test_serve import running


@pytest.fixture()
def keys_cli(capsys, home):
    """`tunesmith api keys ...` through the real entry point."""
    return lambda *args: run_cli(capsys, "api", "keys", *args)


def db_bytes(home) -> bytes:
    """Every file SQLite keeps for api.db (with WAL, recent writes live in api.db-wal)."""
    return b"".join(path.read_bytes() for path in sorted(home.glob("api.db*")))


def test_create_shows_the_secret_once_and_stores_only_its_hash(keys_cli, home):
    from tunesmith.api.keys import KeyStore

    made = keys_cli("create", "--name", "ci")
    assert made.code == 0, made.err
    secret = made.out.strip()
    assert secret.startswith("ts-") and len(secret) > 40 and "\n" not in secret
    assert "will not be shown again" in " ".join(made.err.split())  # the console wraps at its width
    assert secret.encode() not in db_bytes(home) and secret[8:].encode() not in db_bytes(home)
    listed = keys_cli("list")
    assert listed.code == 0 and "ci" in listed.out + listed.err and secret[:8] in listed.out + listed.err
    assert secret[8:] not in listed.out + listed.err
    store = KeyStore(home / "api.db")
    assert store.any_active() and store.verify(secret)
    assert not store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not store.verify("")


def test_revoke_by_name_or_id_makes_the_key_fail(keys_cli, home):
    from tunesmith.api.keys import KeyStore

    first = keys_cli("create", "--name", "alice").out.strip()
    second = keys_cli("create", "--name", "bob").out.strip()
    store = KeyStore(home / "api.db")
    bob_id = next(k.id for k in store.list() if k.name == "bob")
    assert keys_cli("revoke", "alice").code == 0
    assert not KeyStore(home / "api.db").verify(first) and KeyStore(home / "api.db").verify(second)
    gone = keys_cli("revoke", bob_id)
    assert gone.code == 0 and "no active API key is left" in gone.err
    fresh = KeyStore(home / "api.db")
    assert not fresh.verify(second) and not fresh.any_active()
    listed = keys_cli("list").out
    assert listed.count("Z") >= 4  # created and revoked times of both keys, in UTC
    # A revoked name is free again.
    assert keys_cli("create", "--name", "alice").code == 0


def test_bad_input_exits_2_naming_it(keys_cli):
    unknown = keys_cli("revoke", "nobody")
    assert unknown.code == 2 and "nobody" in unknown.err and "keys list" in unknown.err
    bad = keys_cli("create", "--name", "../etc")
    assert bad.code == 2 and "--name" in bad.err and "../etc" in bad.err
    assert keys_cli("create", "--name", "ci").code == 0
    twice = keys_cli("create", "--name", "ci")
    assert twice.code == 2 and "already named 'ci'" in twice.err
    assert keys_cli("create").code == 2  # --name is required: typer's usage error


def gated_app(keys):
    from fastapi import FastAPI

    from tunesmith.serve.app import Gate

    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/v1/models")(lambda: {"object": "list", "data": []})
    app.add_middleware(Gate, keys=keys)
    app.state.server = type("NoEngine", (), {"close": lambda self: None})()
    return app


def test_gate_over_the_key_store(home):
    from tunesmith.api.keys import KeyStore

    store = KeyStore(home / "api.db")
    with running(gated_app(store)) as url:
        assert httpx.get(url + "/v1/models").status_code == 200  # no key created yet: open
        _, secret = store.create("ci")
        with pytest.raises(openai.AuthenticationError) as missing:
            openai.OpenAI(base_url=url + "/v1", api_key="ts-wrong", max_retries=0).models.list()
        assert missing.value.status_code == 401 and missing.value.body["code"] == "invalid_api_key"
        bare = httpx.get(url + "/v1/models")
        assert bare.status_code == 401 and bare.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/nowhere").status_code == 401  # unknown routes too: nothing is told without a key
        openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0).models.list()
        # revoked from another process (a KeyStore of its own): the server's cached view expires within a second
        KeyStore(home / "api.db").revoke("ci")
        _, other = KeyStore(home / "api.db").create("other")
        deadline = time.monotonic() + 3
        while httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key still works after 3 s"
            time.sleep(0.1)
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_gate_with_a_checking_function():
    with running(gated_app(lambda secret: secret == "let-me-in")) as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer let-me-in"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer é".encode()}).status_code == 401  # not ASCII: refused, not a 500

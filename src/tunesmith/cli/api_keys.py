"""`tunesmith api keys`: the fine-tuning service's API keys (api/keys.py). While any key is active,
every route of `tunesmith api` but /health needs one, as `Authorization: Bearer KEY`."""

from __future__ import annotations

import typer

from tunesmith.cli.common import current_workspace
from tunesmith.ui import console, out

keys_app = typer.Typer(help="API keys of the fine-tuning service: while any key is active, every request needs one.", no_args_is_help=True)


def _store():
    from tunesmith.api.keys import KeyStore
    from tunesmith.api.store import api_db

    return KeyStore(api_db(current_workspace()))


@keys_app.command("create")
def keys_create(name: str = typer.Option(..., "--name", help="what the key is for, e.g. ci or alice (letters, digits, '.', '_', '-')")) -> None:
    """A new key. Its secret is printed once, on stdout, and cannot be shown again: only its hash is kept."""
    key, secret = _store().create(name)
    console.print(f"created API key {key.id} ({key.name}); copy the secret now: it will not be shown again")
    typer.echo(secret)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, name, the secret's first characters, when it was created and revoked."""
    from rich.table import Table

    keys = _store().list()
    if not keys:
        console.print("no API keys: the service's routes are open to anyone who can reach it (`tunesmith api keys create --name NAME`)")
        return
    table = Table("id", "name", "prefix", "created", "revoked")
    for key in keys:
        table.add_row(key.id, key.name, key.prefix + "...", key.created_text(), key.revoked_text())
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="the key's id, or the name of an active key")) -> None:
    """Revoke a key: requests with it are refused from now on (within a second in a running server)."""
    store = _store()
    revoked = store.revoke(key)
    console.print(f"revoked API key {revoked.id} ({revoked.name}), revoked at {revoked.revoked_text()}")
    if not store.any_active():
        console.print("[yellow]no active API key is left: the service's routes are open to anyone who can reach it")

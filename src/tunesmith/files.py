"""Reading files back from the workspace (run folders, datasets, checkpoints, configs, review sheets).

A file can be truncated by a full disk or a kill, edited by hand, copied half-way or saved by a
spreadsheet in another encoding. Each format is read in one place here, and damage becomes a
UserError that names the file and says what to do, instead of a library's traceback."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

# Byte-order marks, longest first: UTF-32-LE's starts with UTF-16-LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing", fix=fix) from None
    except OSError as exc:  # a folder where a file should be, no permission, an I/O error
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", fix=fix) from None


def _guess_utf16(data: bytes) -> str | None:
    """UTF-16 saved without a byte-order mark: every other byte of ASCII text is zero."""
    if len(data) < 4 or len(data) % 2 or b"\x00" not in data[:200]:
        return None
    even, odd = data[0:200:2].count(0), data[1:200:2].count(0)
    if odd > len(data[1:200:2]) * 0.4 and even == 0:
        return "utf-16-le"
    if even > len(data[0:200:2]) * 0.4 and odd == 0:
        return "utf-16-be"
    return None


def decode(data: bytes, path: Path, *, fallbacks: tuple[str, ...] = (), fix: str = "save it as UTF-8 (in an editor: Save As, encoding UTF-8)") -> str:
    """Text by its byte-order mark (UTF-8/16/32), else UTF-8, else UTF-16 without a mark, else each of
    `fallbacks` in turn (e.g. cp1252, what a spreadsheet on Windows saves as CSV); else a UserError."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} starts like {encoding.upper()} text but byte {exc.start} does not decode", fix=fix) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        first_error = exc
    for encoding in filter(None, (_guess_utf16(data), *fallbacks)):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    line = data[: first_error.start].count(b"\n") + 1
    raise UserError(f"{path} is not UTF-8 text: byte 0x{data[first_error.start]:02x} on line {line} does not decode", where=f"{path}:{line}", fix=fix) from None


def read_text(path: Path, *, fix: str, fallbacks: tuple[str, ...] = ()) -> str:
    """A text file of ours or the user's, whatever its Unicode encoding; \\r\\n read as \\n."""
    text = decode(_read_bytes(Path(path), fix), Path(path), fallbacks=fallbacks)
    return text.replace("\r\n", "\n")


def read_json(path: Path, *, fix: str) -> Any:
    path = Path(path)
    text = read_text(path, fix=fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        state = "is empty" if not text.strip() else f"is damaged: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
        raise UserError(f"{path} {state}", where=f"{path}:{exc.lineno}" if text.strip() else None, fix=fix) from None


def read_yaml(path: Path, *, fix: str) -> Any:
    import yaml

    path = Path(path)
    text = read_text(path, fix=fix)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=f"{path}:{mark.line + 1}" if mark else str(path), fix=fix) from None


def read_model(path: Path, cls: Any, *, fix: str) -> Any:
    """A JSON file checked against a pydantic model (run.json, manifest.json): each wrong field named."""
    from pydantic import ValidationError

    data = read_json(path, fix=fix)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5]]
        raise UserError(f"{path} is damaged or was written by another version:\n" + "\n".join(f"  - {p}" for p in problems), fix=fix) from None


def load_torch(path: Path, *, fix: str) -> Any:
    """A torch file (trainer state) with weights_only, so nothing in it runs."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing", fix=fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip (RuntimeError), empty (EOFError), foreign objects (UnpicklingError): all unusable
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is damaged and cannot be read ({reason})", fix=fix) from None


def safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file cannot be used (truncated, not safetensors), or None. Reads only the header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            return None
    except Exception as exc:  # SafetensorError, OSError: the header or the data it promises is missing
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_model_folder(folder: Path, *, fix: str) -> None:
    """Every safetensors and JSON file of a model, adapter or checkpoint folder is whole, or a
    UserError names the broken one (the libraries' own errors name neither file nor fix)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.safetensors")):
        reason = safetensors_damage(file)
        if reason is not None:
            raise UserError(f"{file} is damaged ({reason})", fix=fix)
    for file in sorted(folder.glob("*.json")):
        read_json(file, fix=fix)


def load_safetensors(path: Path, *, fix: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    reason = safetensors_damage(path)
    if reason is not None:
        raise UserError(f"{path} is damaged ({reason})", fix=fix)
    return load_file(str(path))

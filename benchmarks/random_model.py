"""A model folder with the embedded model's architecture and tokenizer but freshly initialised weights.

    python benchmarks/random_model.py OUT [--like FOLDER]

For the GPU run of train_bench.py (`--model OUT`): the embedded model's 98 MB weights file does not
fit the 64 MiB a device-machine call may carry, while its config and tokenizer (4 MB) do. Speed,
memory and MFU depend on the architecture and the data, not on the weights' values; held-out
losses from such a folder are not comparable with the embedded model's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", type=Path, help="folder with config.json and the tokenizer (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--config-only", action="store_true", help="copy the config and tokenizer, write no weights")
    args = parser.parse_args()
    if args.like is None:
        from tunesmith.models.loading import resolve_model_path

        args.like = Path(resolve_model_path("smollm2-135m-instruct"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", *TOKENIZER_FILES):
        if (args.like / name).is_file():
            shutil.copy2(args.like / name, args.out / name)
    if args.config_only:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.out), dtype=torch.float32)
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights, in {args.out}")


if __name__ == "__main__":
    main()

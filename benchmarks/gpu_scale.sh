#!/bin/bash
# Training at the scale users train (issue 22), on the device machine, in two calls of a few minutes each:
#   bash benchmarks/gpu_scale.sh 1b   # the Llama-3.2-1B shape, chats of 512-4096 tokens: LoRA r16, then full
#                                     # fine-tuning; tunesmith, HF Trainer + PEFT (SDPA; + Liger), TRL packed
#   bash benchmarks/gpu_scale.sh 8b   # the Llama-3.1-8B shape, LoRA r16 at 3.5k-4k tokens: tunesmith with and
#                                     # without gradient checkpointing, and HF (which may not fit)
# Before the first call, here: `bash benchmarks/gpu_prepare.sh` (fills .whl and .gpu); the call carries both:
#   run(command="bash benchmarks/gpu_scale.sh 1b", carry=[".whl", ".gpu"], timeout_s=540)
# Random weights made on the GPU (benchmarks/random_model.py --shape): nothing is downloaded. Each config runs
# in its own process under its own time limit, so one that fails or does not fit costs only itself; its line
# says why. Under $OUT: each phase's table (train_scale_<phase>.json) and tunesmith's profile (kernel time by
# op, a few steps after the warm-up).
#
# `bash benchmarks/gpu_scale.sh 1b --cpu-trial` runs the same script here in minutes (one layer of the shape,
# fp32, a handful of short chats, this environment's python and packages): a check of the script itself
# before device time is spent on it.
set -u
OUT=${OUT:-/tmp/out}
PHASE=${1:?usage: gpu_scale.sh 1b|8b [--cpu-trial]}
TRIAL=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$TRIAL" = --cpu-trial ]; then
    PYTHON=${PYTHON:-python3}
    device=(--device cpu --dtype float32 --threads 2) shape=(--layers 1 --device cpu --dtype float32) scale=(--examples 6 --batch 2 --profile-steps 1)
    lengths() { echo 64-256; }
    root=/tmp/scale-trial
else
    PYTHON=python3
    if [ ! -d /tmp/site/trl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    fi
    export PYTHONPATH=/tmp/site:$PWD/src
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    device=(--device cuda --dtype bfloat16) shape=(--device cuda --dtype bfloat16) scale=()
    lengths() { echo "$1"; }
    root=/tmp
fi
"$PYTHON" -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"

model=$root/llama-$PHASE
[ -f "$model/model.safetensors.index.json" ] || [ -f "$model/model.safetensors" ] ||
    "$PYTHON" benchmarks/random_model.py "$model" --shape "llama-$PHASE" --like .gpu/smollm2-arch "${shape[@]}" 2>&1 | tail -1

bench() {  # bench NAME LIMIT_S CONFIGS [train_bench args]: one folder per NAME, one process per config
    local name=$1 limit=$2 configs=$3
    shift 3
    local folder=$root/scale-$name data=$root/scale-data-$PHASE
    mkdir -p "$folder"
    [ -f "$data/train.jsonl" ] && cp "$data"/*.jsonl "$folder/"
    local common=("${device[@]}" --model "$model" --folder "$folder" "$@" "${scale[@]}")
    for config in ${configs//,/ }; do
        [ "$TRIAL" = --cpu-trial ] && limit=600
        timeout "$limit" "$PYTHON" benchmarks/train_bench.py "${common[@]}" --configs "$config" --out "$folder/partial.json" 2>&1 |
            grep -E "^round|failed|Error|error:|out of memory" | cut -c1-300 | tail -3
        mkdir -p "$data" && cp -n "$folder"/train.jsonl "$folder"/val.jsonl "$data/" 2>/dev/null
    done
    [ -f "$folder/tunesmith.profile.txt" ] && cp "$folder/tunesmith.profile.txt" "$OUT/profile-$name.txt"
    local measured
    measured=$(for config in ${configs//,/ }; do [ -f "$folder/$config.json" ] && printf '%s,' "$config"; done)
    [ -n "$measured" ] && "$PYTHON" benchmarks/train_bench.py "${common[@]}" --configs "${measured%,}" --out "$OUT/train_scale_$name.json" 2>&1 | tail -8
}

if [ "$PHASE" = 1b ]; then
    # 256 chats of 512-4096 tokens (mean ~2.3k), batch 8: 32 steps, the first 3 left out of the timing.
    bench 1b-lora 75 tunesmith,hf_padded,trl_packed --examples 256 --batch 8 --lengths "$(lengths 512-4096)" --profile-steps 3
    bench 1b-lora-liger 75 hf_padded --examples 256 --batch 8 --lengths "$(lengths 512-4096)" --liger
    bench 1b-full 90 tunesmith,hf_padded,trl_packed --examples 256 --batch 8 --lengths "$(lengths 512-4096)" --method full --profile-steps 3
else
    # 96 chats of 3.5k-4k tokens, batch 8: 12 steps; gradient checkpointing where the activations would not fit.
    bench 8b-lora 150 tunesmith,hf_padded --examples 96 --batch 8 --lengths "$(lengths 3584-4096)" --warmup-steps 2 --profile-steps 2
    bench 8b-lora-gc 150 tunesmith,hf_padded --examples 96 --batch 8 --lengths "$(lengths 3584-4096)" --warmup-steps 2 --gradient-checkpointing
fi
ls "$OUT"

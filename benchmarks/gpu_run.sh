#!/bin/bash
# The whole GPU measurement as one device-machine call (the lease is short: one prepared script).
#   carry: .whl (wheels the GPU image lacks), .gpu (model config + tokenizer, the bench data)
# Writes gpu_check.json and the bench results under $OUT. Each config runs on its own, under a
# time limit, and the results already measured are kept: a config that fails or hangs costs
# only itself.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, transformers, peft, trl, liger_kernel; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
timeout 150 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v -i warn | tail -30
python3 benchmarks/random_model.py /tmp/smollm2-random --like .gpu/smollm2-arch 2>&1 | tail -1

bench() {  # bench FOLDER OUTFILE SECONDS_PER_CONFIG CONFIGS [extra args]
    local folder=$1 out=$2 limit=$3 configs=$4
    shift 4
    mkdir -p "$folder" && cp .gpu/data/train.jsonl .gpu/data/val.jsonl "$folder/"
    local common=(--device cuda --dtype bfloat16 --batch 64 --folder "$folder" --model /tmp/smollm2-random "$@")
    for config in ${configs//,/ }; do
        timeout "$limit" python3 benchmarks/train_bench.py "${common[@]}" --configs "$config" --out "$folder/partial.json" 2>&1 | grep -E "^$config|failed|Error|error:" | tail -5
    done
    local done_configs
    done_configs=$(for config in ${configs//,/ }; do [ -f "$folder/$config.json" ] && printf '%s,' "$config"; done)
    [ -n "$done_configs" ] && python3 benchmarks/train_bench.py "${common[@]}" --configs "${done_configs%,}" --out "$out" 2>&1 | tail -8
}

bench /tmp/bench-sdpa "$OUT/train_bench_h200.json" 120 tunesmith,hf_padded,trl_packed,trl_padfree,trl_default
bench /tmp/bench-liger "$OUT/train_bench_h200_liger.json" 120 hf_padded,trl_packed --liger

#!/bin/bash
# The GPU measurement in two device-machine calls (a lease is short; each call is one prepared script).
#   bash benchmarks/gpu_run.sh 1   # wheels, correctness check, then tunesmith, hf_padded, trl_packed
#   bash benchmarks/gpu_run.sh 2   # trl_padfree, trl_default, then hf_padded and trl_packed with Liger
# carry: .whl (wheels the GPU image lacks), .gpu (the embedded model's config and tokenizer, the
# bench data). Results go under $OUT: per-config JSONs and each phase's table. Each config runs on
# its own under a time limit and results already measured are kept (a failure costs only itself);
# a warm machine keeps /tmp between the calls, a fresh one redoes the set-up.
set -u
OUT=${OUT:-/tmp/out}
PHASE=${1:-1}
mkdir -p "$OUT"
if [ ! -d /tmp/site/trl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers, peft, trl, liger_kernel; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
[ "$PHASE" = 1 ] && timeout 90 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | grep -v -i warn | tail -28
[ -f /tmp/smollm2-random/model.safetensors ] || python3 benchmarks/random_model.py /tmp/smollm2-random --like .gpu/smollm2-arch 2>&1 | tail -1

bench() {  # bench FOLDER OUTFILE CONFIGS [extra args]
    local folder=$1 out=$2 configs=$3
    shift 3
    mkdir -p "$folder" && cp .gpu/data/train.jsonl .gpu/data/val.jsonl "$folder/"
    local common=(--device cuda --dtype bfloat16 --batch 64 --folder "$folder" --model /tmp/smollm2-random "$@")
    for config in ${configs//,/ }; do
        local limit=120
        [ "$config" = tunesmith ] && limit=180
        timeout "$limit" python3 benchmarks/train_bench.py "${common[@]}" --configs "$config" --out "$folder/partial.json" 2>&1 | grep -E "^$config |failed|Error|error:" | cut -c1-400 | tail -4
        [ -f "$folder/$config.json" ] && cp "$folder/$config.json" "$OUT/$(basename "$folder")-$config.json"
    done
    local measured
    measured=$(for config in tunesmith hf_padded trl_default trl_padfree trl_packed; do [ -f "$folder/$config.json" ] && printf '%s,' "$config"; done)
    [ -n "$measured" ] && python3 benchmarks/train_bench.py "${common[@]}" --configs "${measured%,}" --out "$out" 2>&1 | tail -8
}

if [ "$PHASE" = 1 ]; then
    bench /tmp/sdpa "$OUT/train_bench_h200.json" tunesmith,hf_padded,trl_packed
else
    bench /tmp/sdpa "$OUT/train_bench_h200.json" trl_padfree,trl_default
    bench /tmp/liger "$OUT/train_bench_h200_liger.json" hf_padded,trl_packed --liger
fi

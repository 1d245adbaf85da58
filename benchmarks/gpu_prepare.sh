#!/bin/bash
# Run HERE (not on the device machine), once, before benchmarks/gpu_scale.sh or gpu_run.sh: fills the two
# git-ignored folders a device call carries. The device machine reaches no network; its image has torch,
# transformers, peft, accelerate, numpy, pandas, pyarrow and the rest of the usual stack, but not these.
#   .whl  wheels: TRL and datasets (the peers), liger-kernel (HF's fused kernels), and what tunesmith
#         imports that the image lacks (pydantic and its parts, ftfy; typing-extensions new enough for pydantic-core)
#   .gpu  the embedded model's config and tokenizer (the random models take its tokenizer)
# Both stay under the 64 MiB a call may carry (about 20 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
rm -rf .whl && mkdir -p .whl .gpu
# cp312 manylinux wheels: the device image's python is 3.12 on x86-64.
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
pure="trl==1.16.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18 liger-kernel==0.8.5 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 ftfy==6.3.1 wcwidth==0.9.4 typing-extensions==4.16.0"
binary="pydantic-core==2.50.5 xxhash==4.1.0"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl $pure $binary
"$PY" - <<'EOF'
import shutil
from pathlib import Path

from tunesmith.models.loading import resolve_model_path

source, target = Path(resolve_model_path("smollm2-135m-instruct")), Path(".gpu/smollm2-arch")
target.mkdir(parents=True, exist_ok=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    if (source / name).is_file():
        shutil.copy2(source / name, target / name)
EOF
du -sh .whl .gpu
ls .whl

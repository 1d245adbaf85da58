#!/usr/bin/env bash
# Installs torch into the environment of the given python before tunesmith itself, because
# an unpinned `pip install torch` on Linux pulls a multi-GB CUDA build even where no GPU exists.
# A CUDA machine gets PyPI's default (CUDA) build; a CPU-only machine gets a CPU build.
set -euo pipefail
PY=${1:?usage: install_torch.sh PATH/TO/python}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed; keeping it"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch"
  "$PY" -m pip install -q "torch>=2.6"
  exit 0
fi
echo "no GPU found: installing the CPU build of torch $TORCH_VERSION"
# A CPU wheel already on this machine (pip's find-links) costs no download: install it alone,
# then its dependencies from the usual index (torch itself is then already satisfied).
# Otherwise PyTorch's own CPU index, whose +cpu build sorts above PyPI's CUDA build.
if "$PY" -m pip install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
else
  "$PY" -m pip install -q "torch==$TORCH_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu
fi

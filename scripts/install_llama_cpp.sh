#!/usr/bin/env bash
# Installs llama-cpp-python (the version pyproject.toml pins) into the environment of the given python,
# compiled for any x86-64 CPU with AVX2 instead of for this one. A native build (llama.cpp's default)
# on a CPU that reports AMX under a hypervisor that does not enable it dies with "Illegal instruction"
# (AMX tilezero in libggml-cpu) the first time a quantised GGUF is decoded: seen on this project's
# 2-core machines. Without GGML_NATIVE, ggml builds SSE4.2/AVX/AVX2/FMA/F16C/BMI2 and nothing newer;
# on ARM the flag means a generic ARMv8 build.
#
# Only the libraries llama_cpp's Python code loads are compiled (libllama, libggml*), a third less work:
# llama-cpp-python also builds libmtmd (images and audio for multimodal chat handlers; LLAVA_BUILD=OFF
# leaves it out, and llama_cpp imports it only for those handlers) and forces llama.cpp's `common`
# library on (argument parsing, chat parsers, an HTTP client: for llama.cpp's own programs, which this
# build does not make, and loaded by nothing in llama_cpp). A CMake file read right after llama.cpp's
# project() turns `common` back off, after llama-cpp-python's FORCE and before llama.cpp reads it.
# The converter `export --to gguf` runs comes from the sdist, not from this build (export/gguf.py).
#
# The wheel is built once into a folder of its own and installed from there: pip's wheel cache is keyed
# by the sdist, not by CMAKE_ARGS, so it would hand back a native build made earlier on the machine. The
# folder's name says what was built, so a machine holding an earlier build (with mtmd and common) builds
# this one once rather than keep that.
set -euo pipefail
PY=${1:?usage: install_llama_cpp.sh PATH/TO/python}
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/tunesmith/wheels/llama-cpp-python-$VERSION-portable-textonly"

if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "compiling llama.cpp $VERSION for any AVX2 CPU (minutes, once per machine; kept in $WHEELS)"
  rm -rf "$WHEELS.partial" && mkdir -p "$WHEELS.partial"
  NO_COMMON=$(mktemp -d)/no-common.cmake  # CMAKE_ARGS is split on spaces: a path under $HOME may hold one
  echo 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp: build common utils library" FORCE)' >"$NO_COMMON"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$NO_COMMON ${CMAKE_ARGS:-}" "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION" -w "$WHEELS.partial"
  rm -rf "$(dirname "$NO_COMMON")" "$WHEELS" && mv "$WHEELS.partial" "$WHEELS"
fi
# Its dependencies come with `pip install -e '.[dev]'` next, which finds llama-cpp-python itself installed.
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl

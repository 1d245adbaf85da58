"""On glibc, training on a CPU keeps freed memory for reuse: new activations do not fault in fresh pages."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from tunesmith.train.kernels.cpu_memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for step in range(8):
    before = faults()
    tokens = (995, 952, 232)[step % 3]  # forward passes of different lengths
    sizes = [tokens * (1536 if i % 3 else 576) * 4 for i in range(30)]  # their activations, in bytes
    blocks = [libc.malloc(size) for size in sizes]
    for block, size in zip(blocks, sizes):
        ctypes.memset(block, 1, size)
    for block in reversed(blocks):  # freed by the backward pass
        libc.free(block)
    counts.append(faults() - before)
print(sum(counts[3:]))  # steps after the first few, which fault the peak in once
"""


def _page_faults(mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc" not in (ctypes.util.find_library("c") or ""), reason="glibc's mallopt")
def test_reallocating_activation_sized_blocks_faults_in_no_new_pages():
    plain, kept = _page_faults("plain"), _page_faults("keep")
    assert plain > 50_000  # ~100 MB of 4 KB pages a step, when freed memory goes back to the system
    assert kept < plain / 20


def test_switching_kernels_on_keeps_freed_memory_on_cpu_only(monkeypatch, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.train import kernels

    calls = []
    monkeypatch.setattr(kernels, "keep_freed_memory", lambda: calls.append(True) or True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    kernels.switch_on(model, torch.device("cpu"))
    assert calls == [True]
    kernels.switch_on(model, torch.device("meta"))
    assert calls == [True]

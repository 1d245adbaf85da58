"""The GPU-scale benchmark's model shapes and FLOP count (benchmarks/random_model.py, train_bench.py):
its figures are only as true as these numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def train_bench():
    sys.path.insert(0, str(BENCH))
    try:
        import train_bench

        yield train_bench
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(
    ("shape", "linear", "head"),
    # Llama-3.2-1B: 16 layers of 60,817,408 linear weights and a tied 128,256 x 2048 head (1.24B in all);
    # Llama-3.1-8B: 32 layers of 218,103,808 and its own 128,256 x 4096 head (8.03B with the embedding).
    [("llama-1b", 16 * 60_817_408 + 262_668_288, 262_668_288), ("llama-8b", 32 * 218_103_808 + 525_336_576, 525_336_576)],
)
def test_the_llama_shapes_have_the_published_weights_and_flops(train_bench, tmp_path, shape, linear, head):
    from dataclasses import dataclass

    folder = tmp_path / shape
    made = subprocess.run([sys.executable, str(BENCH / "random_model.py"), str(folder), "--shape", shape, "--config-only"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr

    @dataclass
    class Item:  # an encoded chat: 1,000 tokens, the last 250 trained
        input_ids: list
        labels: list

    items = [Item(list(range(1000)), [-100] * 750 + list(range(250)))]
    for method, factor in (("lora", 4), ("full", 6)):
        flops = train_bench.model_flops_per_token(str(folder), items, method)
        assert flops["linear_weights"] == linear and flops["head_weights"] == head and flops["trained_share"] == 0.25
        assert flops["weights"] == round(factor * (linear - head + head / 4))  # the head only where the loss reads logits
        layers, width = (16, 2048) if shape == "llama-1b" else (32, 4096)
        assert flops["attention"] == 6 * width * layers * 1000  # causal: 2·s·d a token a layer forward, x3 with backward

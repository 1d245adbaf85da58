"""Shared fixtures: a tiny random-weight Llama and a small BPE tokenizer built in code, so every
stage runs end to end on CPU in seconds with no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# `make test` runs two pytest-xdist workers on two cores. Each worker, and every process it starts (they
# inherit the variable), gets one compute thread: two workers of two threads each fight over the cores,
# and torch's waiting threads spin, which measured up to 10x slower on busy cores than one thread each.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(folder: Path, corpus: list[str]) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained on `corpus`; pad == eos
    (as in SmolLM2), the setting that silently stops models from learning to end their turn."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    # initializer_range 0.2, not the usual 0.02: a 32-wide model's logits would otherwise stay
    # near uniform whatever the adapters do, and LoRA tests could not see the loss fall.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_records(n: int = 60, seed: int = 0) -> list[dict]:
    """A small, learnable chat task: the demo's ticket router, shortened."""
    from tunesmith.demo.tickets import generate

    return generate(n, seed)


def tickets_home(folder: Path, n_records: int = 30):
    """A workspace at `folder` holding the `tickets` dataset: `n_records` demo tickets split 70/10/20,
    PII off (the demo has none). For module fixtures that train once and share the run."""
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "tickets.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in tiny_records(n_records)), encoding="utf-8")
    workspace = Workspace.from_env(folder)
    prepare_dataset(source, workspace, name="tickets", seed=0, ratios=(0.7, 0.1, 0.2), options=PrepareSpec(pii="off"))
    return workspace


def train_tiny(workspace, tiny_model: Path, **train) -> str:
    """One LoRA run of the tiny model on `tickets` with these train settings; its run id."""
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train as run_training

    spec = RunSpec.model_validate({"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": train})
    return run_training(spec, workspace).info.run_id


# ---------------------------------------------------------------- a run's records: metrics.jsonl and the run id


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl, in the order written: per-step training records
    (with "loss"), validations (with "val_loss"), probe records ("gen/...", "forgetting/...") and
    events (with "event")."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_steps(run_dir: Path) -> list[dict]:
    """The per-step training records (step, epoch, loss, lr, ...), in order."""
    return [r for r in read_metrics(run_dir) if "loss" in r]


def step_losses(run_dir: Path) -> list[float]:
    """The training loss of each step, in order."""
    return [r["loss"] for r in train_steps(run_dir)]


def validations(run_dir: Path) -> list[dict]:
    """The validation records (step, epoch, val_loss and, for a classifier, val_accuracy, val_f1_macro ...), in order."""
    return [r for r in read_metrics(run_dir) if "val_loss" in r]


def events(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The event records (resumed, stopped, early_stop, diverged, overfitting), in order; only those of `kind` if given."""
    return [r for r in read_metrics(run_dir) if "event" in r and kind in (None, r["event"])]


def run_id_from(output: str) -> str:
    """The run id `tunesmith train` prints: its stdout carries that alone (the rest goes to stderr)."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"train's stdout should be the run id alone, got {output!r}"
    return lines[0]


def only_run(home: Path, besides: set[str] | frozenset[str] = frozenset()) -> Path:
    """The one run folder under `home`/runs (leaving out the runs named in `besides`, those there
    before); fails saying what it found if there are none or several."""
    runs = sorted(p for p in (home / "runs").iterdir() if p.name not in besides) if (home / "runs").is_dir() else []
    assert len(runs) == 1, f"expected one new run under {home / 'runs'}, found {[p.name for p in runs]}"
    return runs[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [m["content"] for r in tiny_records(200, 1) for m in r["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), corpus)


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """An empty TUNESMITH_HOME per test, so tests never see each other's registry."""
    folder = tmp_path / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(folder))
    return folder


@pytest.fixture()
def tickets_file(tmp_path) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_records(60)), encoding="utf-8")
    return path


# ---------------------------------------------------------------- classification: a tiny BERT and a learnable text/label task

CLASS_WORDS = {
    "billing": ["invoice", "refund", "charged twice", "payment failed", "price went up", "receipt"],
    "bug": ["crashes", "error 500", "is broken", "freezes", "fails to load", "shows a blank page"],
    "praise": ["love it", "great work", "thanks a lot", "awesome", "excellent support", "very happy"],
}
FILLER = ["hello", "so", "today", "the app", "my account", "our team", "again", "please", "this week", "on my phone", "after the update", "honestly"]


def classification_records(n: int = 90, seed: int = 0) -> list[dict]:
    """Texts whose class is given away by one key phrase among filler: learnable in a few steps."""
    import random

    rng = random.Random(seed)
    labels = sorted(CLASS_WORDS)
    records = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.sample(FILLER, 2)
        words.insert(rng.randrange(3), rng.choice(CLASS_WORDS[label]))
        records.append({"text": " ".join(words), "label": label})
    return records


def build_tiny_bert(folder: Path, corpus: list[str]) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer trained on `corpus`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=128
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)  # an encoder without a head, like all-MiniLM-L6-v2
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), [r["text"] for r in classification_records(300, 1)])


@pytest.fixture()
def classes_file(tmp_path) -> Path:
    path = tmp_path / "classes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in classification_records(90)), encoding="utf-8")
    return path

"""What the traffic is compared with: the run's training prompts (the drift reference), a held-out
set scored the same way as a window (so each test's null distribution is the training distribution's
own, typos and rare words included), and the answer format the run learned."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.data.dataset import Dataset
from tunesmith.data.example import Example
from tunesmith.errors import UserError
from tunesmith.monitor.answers import AnswerFormat, answer_format
from tunesmith.monitor.text import Encoder, languages, tokens
from tunesmith.workspace import Workspace

MIN_HELD_OUT = 20
LANGUAGE_SHARE = 0.05  # a language at least this common among training prompts is a trained language


@dataclass
class Reference:
    dataset: str
    train_prompts: list[str]
    held_prompts: list[str]
    vocab: set[str]  # token shapes of the training prompts (text.tokens)
    languages: set[str]
    held_languages: list[str]
    lengths: np.ndarray  # of every prompt in the dataset (train and held out)
    embeddings: np.ndarray  # a seeded sample of the dataset's prompts, unit-normed
    answers: AnswerFormat
    eval_quality: dict[str, float] | None  # the training-time judge's rubric means, when the run has them


def prompt_of(example: Example) -> str:
    return "\n".join(m.content for m in example.prompt_messages if m.role == "user" and m.content)


def build_reference(workspace: Workspace, run_dir: Path, encoder: Encoder, *, sample: int, seed: int) -> Reference:
    """The run's training data as a Reference; UserError when its dataset is not in this workspace."""
    from tunesmith.data.dataset import load_dataset
    from tunesmith.registry.runfolder import load_run_info

    info = load_run_info(run_dir)
    dataset = load_dataset(workspace, info.dataset)
    cache = workspace.home / "monitor" / "cache" / f"{dataset.name}-{dataset.version[:16]}-{sample}-{seed}.npy"
    return dataset_reference(dataset, encoder, labels=info.labels, sample=sample, seed=seed, eval_quality=_eval_quality(run_dir), cache=cache)


def dataset_reference(
    dataset: Dataset,
    encoder: Encoder,
    *,
    labels: list[str] | None = None,
    sample: int = 500,
    seed: int = 0,
    eval_quality: dict[str, float] | None = None,
    cache: Path | None = None,
) -> Reference:
    """`cache`: where the dataset's embeddings are kept between runs (a dataset version never changes),
    so an hourly cron does not embed the training prompts every hour."""
    train = list(dataset.iter_split("train"))
    held = [e for split in ("validation", "test") for e in dataset.iter_split(split)]
    references = [e.reference for e in train if e.reference is not None]
    rng = random.Random(seed)
    if len(held) < MIN_HELD_OUT:  # too few held out: hold out a fifth of train (its words are then not "seen")
        rng.shuffle(train)
        cut = max(MIN_HELD_OUT, len(train) // 5)
        held, train = train[:cut], train[cut:]
    train_prompts = [p for p in map(prompt_of, train) if p]
    held_prompts = [p for p in map(prompt_of, held) if p]
    if len(train_prompts) < MIN_HELD_OUT or len(held_prompts) < MIN_HELD_OUT // 2:
        raise UserError(
            f"dataset {dataset.name} has {len(train_prompts)} training and {len(held_prompts)} held-out prompts: too few to test drift against",
            fix=f"train on at least {2 * MIN_HELD_OUT} examples to have input drift checked",
        )
    train_langs = languages(train_prompts)
    counts = Counter(train_langs)
    trained = {lang for lang, n in counts.items() if n >= LANGUAGE_SHARE * len(train_langs)} or {counts.most_common(1)[0][0]}
    # Length and embeddings are compared with every prompt of the dataset: a bigger reference strays less
    # from the distribution it samples, and a window is tested against that distribution, not one draw of it.
    every = train_prompts + held_prompts
    chosen = sorted(rng.sample(range(len(every)), min(sample, len(every))))
    return Reference(
        dataset=f"{dataset.name}@{dataset.version[:12]}",
        train_prompts=train_prompts,
        held_prompts=held_prompts,
        vocab={t.shape for p in train_prompts for t in tokens(p)},
        languages=trained,
        held_languages=languages(held_prompts),
        lengths=np.array([len(p) for p in every], dtype=float),
        embeddings=_cached(cache, lambda: encoder.embed([every[i] for i in chosen]), len(chosen)),
        answers=answer_format(references, labels),
        eval_quality=eval_quality,
    )


def _cached(path: Path | None, compute: Callable[[], np.ndarray], rows: int) -> np.ndarray:
    if path is not None and path.is_file():
        try:
            found = np.load(path, allow_pickle=False)
            if found.ndim == 2 and len(found) == rows:
                return found
        except (OSError, ValueError):
            pass  # damaged: computed again below
    value = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npy")
        np.save(tmp, value, allow_pickle=False)
        tmp.replace(path)
    return value


def _eval_quality(run_dir: Path) -> dict[str, float] | None:
    """The rubric means `tunesmith eval judge RUN` recorded (test split first), if it was run."""
    import json

    path = run_dir / "eval" / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    judged = report.get("judge") if isinstance(report, dict) else None
    for split in ("test", "validation"):
        rubric = (judged or {}).get(split, {}).get("rubric") if isinstance(judged, dict) else None
        if isinstance(rubric, dict) and isinstance(rubric.get("mean"), dict):
            means = {k: float(v) for k, v in rubric["mean"].items() if isinstance(v, (int, float))}
            return means or None
    return None

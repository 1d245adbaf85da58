"""Preference pairs scored by a model: each answer's log-probability given the prompt, the
objectives that turn those into a loss (DPO, SimPO, ORPO) and the implicit rewards, and the
held-out reward accuracy `tunesmith eval` reports. Training (train/tasks/preference.py) reads the
same functions, so a pair is encoded, scored and rewarded one way everywhere.

A pair is encoded twice through the one chat-template renderer: prompt + preferred answer, and
prompt + rejected answer. Only the final answer's tokens (with its end-of-turn token) carry a
label; assistant turns inside the prompt are context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat_template import IGNORE, Encoded, collate, collate_flat, encode
from tunesmith.data.example import Example
from tunesmith.errors import UserError

# The base model's log-probabilities of every pair, {split: {example id: [chosen, rejected]}}, in a DPO run's folder.
REFERENCE_FILE = "reference_logps.json"


@dataclass
class Pair:
    """One encoded preference pair; `input_ids` (both rows' tokens) and `n_trained` (1: the step
    averages over pairs) are what the shared batching and optimiser step read of any item."""

    chosen: Encoded
    rejected: Encoded
    example_id: str
    reference: tuple[float, float] | None = None  # the base model's log-probabilities of (chosen, rejected)
    input_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.input_ids = self.chosen.input_ids + self.rejected.input_ids

    @property
    def n_trained(self) -> int:
        return 1


@dataclass(frozen=True)
class _Turns:
    """A conversation for chat_template.encode: the prompt's own answers as context, the last one trained."""

    id: str
    messages: list[Any]

    @property
    def prompt_messages(self) -> list[Any]:
        return self.messages[:-1]


def _as_context(messages: list[Any]) -> list[Any]:
    return [m.model_copy(update={"weight": 0}) if m.role == "assistant" else m for m in messages]


def encode_pair(tokenizer: Any, example: Example, max_seq_len: int) -> Pair | None:
    """The pair's two rows, or None when truncation to max_seq_len leaves either answer no token."""
    if example.rejected is None:
        raise ValueError(f"example {example.id} is not a preference pair")
    prompt = _as_context(example.prompt_messages)
    chosen = encode(tokenizer, _Turns(example.id, [*prompt, example.messages[-1].model_copy(update={"weight": None})]), max_seq_len)
    rejected = encode(tokenizer, _Turns(example.id, [*prompt, example.rejected.model_copy(update={"weight": None})]), max_seq_len)
    if chosen.n_trained == 0 or rejected.n_trained == 0:
        return None
    return Pair(chosen, rejected, example.id)


def encode_pairs(tokenizer: Any, examples: list[Example], max_seq_len: int) -> tuple[list[Pair], list[str]]:
    """Encoded pairs, and the ids of those left with an answer of no tokens after truncation."""
    kept, dropped = [], []
    for example in examples:
        pair = encode_pair(tokenizer, example, max_seq_len)
        if pair is None:
            dropped.append(example.id)
        else:
            kept.append(pair)
    return kept, dropped


def pair_tensors(pairs: list[Pair], pad_id: int, flat: bool = False) -> dict[str, torch.Tensor]:
    """The chosen sequences, then the rejected ones, in one forward pass: padded rows, or (`flat`) one
    row of them end to end with their boundaries for per-example attention (kernels/segments.py:
    no padding, no attention across sequences; the layout's choice, as for supervised batches)."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    tensors = _flat(sequences) if flat else collate(sequences, pad_id)
    if all(p.reference is not None for p in pairs):
        tensors["reference"] = torch.tensor([p.reference for p in pairs], dtype=torch.float32)
    return tensors


def _flat(sequences: list[Encoded]) -> dict[str, torch.Tensor]:
    """The training's flat row, and which sequence owns each token (the log-probabilities are summed per sequence)."""
    tensors = collate_flat(sequences)
    lengths = torch.tensor([len(item.input_ids) for item in sequences])
    tensors["sequence"] = torch.repeat_interleave(torch.arange(len(sequences)), lengths)
    return tensors


def response_logps(model: Any, tensors: dict[str, torch.Tensor], select_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the answer tokens' log-probabilities, number of answer tokens) for every row.
    `select_head`: run the output projection only on the answer's positions (the caller knows
    whether the model allows skipping its own forward: train/tasks/causal_lm.py)."""
    targets = tensors["labels"][:, 1:]
    selected = targets != IGNORE
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k") if k in tensors}
    if "cu_seq_lens_q" in inputs:
        inputs["max_length_q"] = inputs["max_length_k"] = int(torch.diff(inputs["cu_seq_lens_q"]).max())
    if select_head:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][selected]
        logits = base.get_output_embeddings()(hidden)
    else:
        # Prompt tuning returns logits for its virtual tokens first; the input's are the last ones.
        logits = model(**inputs, use_cache=False).logits[:, -tensors["input_ids"].shape[1] :][:, :-1][selected]
    token_logps = -F.cross_entropy(logits.float(), targets[selected], reduction="none")
    if "sequence" in tensors:  # one flat row: a target position belongs to the sequence of the token it predicts
        owners, n = tensors["sequence"][1:][selected[0]], len(tensors["cu_seq_lens_q"]) - 1
    else:
        owners, n = selected.nonzero()[:, 0], targets.shape[0]
    logps = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(0, owners, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=token_logps.device).index_add(0, owners, torch.ones_like(owners))
    return logps, counts


def pair_losses(
    objective: str, beta: float, logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None, simpo_gamma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen reward, rejected reward) per pair, from response_logps of chosen rows then rejected rows.

    dpo: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), rewards beta * (pi - ref) (Rafailov et al. 2023).
    simpo: -log sigmoid(beta * (avg_c - avg_r) - gamma) on per-token averages, rewards beta * avg (Meng et al. 2024).
    orpo: NLL of the chosen answer (per token) - beta * log sigmoid(log odds ratio), rewards beta * avg (Hong et al. 2024).
    The formulas are TRL's (DPOTrainer sigmoid loss, CPOTrainer simpo, ORPOTrainer)."""
    n = logps.shape[0] // 2
    chosen, rejected = logps[:n], logps[n:]
    if objective == "dpo":
        if reference is None:
            raise ValueError("dpo needs the reference log-probabilities of every pair")
        reward_c, reward_r = beta * (chosen - reference[:, 0]), beta * (rejected - reference[:, 1])
        return -F.logsigmoid(reward_c - reward_r), reward_c.detach(), reward_r.detach()
    avg_c, avg_r = chosen / counts[:n].clamp(min=1), rejected / counts[n:].clamp(min=1)
    reward_c, reward_r = beta * avg_c.detach(), beta * avg_r.detach()
    if objective == "simpo":
        return -F.logsigmoid(beta * (avg_c - avg_r) - simpo_gamma), reward_c, reward_r
    if objective == "orpo":
        # log(p / (1 - p)) for each answer's per-token probability; p < 1 always, clamped against rounding
        log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c).clamp(max=1 - 1e-6)) - torch.log1p(-torch.exp(avg_r).clamp(max=1 - 1e-6)))
        return -avg_c - beta * F.logsigmoid(log_odds), reward_c, reward_r
    raise ValueError(f"unknown preference objective {objective!r}")


@torch.no_grad()
def score_pairs(
    model: Any, pairs: list[Pair], pad_id: int, device: torch.device, batch_size: int, select_head: bool = False, flat: bool = False
) -> list[tuple[float, float, int, int]]:
    """(log-prob of chosen, of rejected, their token counts) for every pair, in order; `flat`: each
    batch's sequences in one row with per-example attention (a model switched to segments.py's)."""
    was_training = model.training
    model.eval()
    out: list[tuple[float, float, int, int]] = []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            tensors = {k: v.to(device) for k, v in pair_tensors(chunk, pad_id, flat).items() if k != "reference"}
            logps, counts = response_logps(model, tensors, select_head)
            n = len(chunk)
            out += [(float(logps[i]), float(logps[n + i]), int(counts[i]), int(counts[n + i])) for i in range(n)]
    finally:
        model.train(was_training)
    return out


def validation_metrics(losses: list[float], reward_c: list[float], reward_r: list[float]) -> dict[str, float]:
    """What a preference run logs at each validation (TRL's rewards/* in tunesmith's val_ naming)."""
    n = max(1, len(losses))
    margins = [c - r for c, r in zip(reward_c, reward_r)]
    return {
        "val_loss": round(sum(losses) / n, 5),
        "val_reward_accuracy": round(sum(_won(m) for m in margins) / n, 4),
        "val_reward_margin": round(sum(margins) / n, 5),
        "val_chosen_reward": round(sum(reward_c) / n, 5),
        "val_rejected_reward": round(sum(reward_r) / n, 5),
    }


def _won(margin: float) -> float:
    """A pair counts as right when the preferred answer has the higher reward; a tie is half right."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def preference_rows(scored: list[tuple[float, float, int, int]], reference: list[tuple[float, float] | None], beta: float) -> list[dict[str, float]]:
    """Per held-out pair: the model's log-probabilities, whether it gives the preferred answer the higher
    one (preference_accuracy), and its implicit DPO reward against the reference (the base model's
    log-probabilities): reward_margin and reward_accuracy. The base model is its own reference: every
    reward is 0, each pair a tie, its reward accuracy 0.5 by definition; its preference_accuracy is
    the figure to compare."""
    rows = []
    for (logp_c, logp_r, n_c, n_r), ref in zip(scored, reference):
        ref_c, ref_r = ref if ref is not None else (logp_c, logp_r)
        margin = beta * ((logp_c - ref_c) - (logp_r - ref_r))
        rows.append(
            {
                "chosen_logp": round(logp_c, 4),
                "rejected_logp": round(logp_r, 4),
                "preference_accuracy": 1.0 if logp_c > logp_r else 0.0,
                "reward_margin": round(margin, 5),
                "reward_accuracy": _won(margin),
            }
        )
    return rows


def preference_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each preference figure over the pairs that have it."""
    found = {}
    for name in ("reward_accuracy", "preference_accuracy", "reward_margin"):
        values = [r[name] for r in rows if name in r]
        if values:
            found[name] = round(sum(values) / len(values), 4)
    return found


def read_reference(run_dir: Path) -> dict[str, dict[str, list[float]]] | None:
    """A run's stored reference log-probabilities, or None when it has none (a reference-free objective)."""
    path = run_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["pairs"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read {path} ({exc})", fix="delete it: `tunesmith train --resume` computes it again from the base weights") from None


class HeldOutPairs:
    """`tunesmith eval` on a preference run: each model's log-probabilities of the held-out pairs, and its
    implicit reward against the base (the run's stored reference log-probabilities; for a reference-free
    run, the base's own, when the base is evaluated first, as `--compare-base` does). Prompt variants of
    the base (few-shot, system) change the prompt the pairs are scored under, so they are left out."""

    def __init__(self, run_dir: Path, split: str, max_seq_len: int, beta: float, batch_size: int):
        self.split, self.max_seq_len, self.beta, self.batch_size = split, max_seq_len, beta, batch_size
        self.reference: dict[str, tuple[float, float]] = {k: (v[0], v[1]) for k, v in ((read_reference(run_dir) or {}).get(split) or {}).items()}

    def add(self, model_id: str, model: Any, tokenizer: Any, examples: list[Example], rows: list[dict], metrics: dict[str, float]) -> None:
        if model_id in ("few-shot", "system"):
            return
        pairs, _ = encode_pairs(tokenizer, [e for e in examples if e.rejected is not None], self.max_seq_len)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        device = next(model.parameters()).device
        scored = score_pairs(model, pairs, pad_id, device, self.batch_size)
        if model_id == "base" and not self.reference:
            self.reference = {p.example_id: (c, r) for p, (c, r, _, _) in zip(pairs, scored)}
        own = model_id == "base"  # the base is its own reference: every reward 0
        found = preference_rows(scored, [None if own else self.reference.get(p.example_id) for p in pairs], self.beta)
        if not own and not self.reference:
            for row in found:  # no reference to reward against: only the model's own preference is reported
                del row["reward_margin"], row["reward_accuracy"]
        by_id = {p.example_id: extra for p, extra in zip(pairs, found)}
        for row in rows:
            row.update(by_id.get(row["id"], {}))
        metrics.update(preference_metrics(rows))

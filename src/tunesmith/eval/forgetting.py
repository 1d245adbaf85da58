"""Did fine-tuning cost general skills? A small probe of questions with checkable answers (facts,
arithmetic, following simple instructions, output formats), shipped with the package, scored on
the base and the tuned model. Greedy decoding and rule-based checks keep the score reproducible
and free of any judge.

`run_probe(model, tokenizer)` scores one model, with a Wilson interval; `probe_drop(base, tuned)` is
the paired difference of two such results with its bootstrap interval (the same questions answered by
both models, so the pairs are resampled together); `probe_callback()` gives the probe in the
(model, tokenizer, step) -> metrics shape of a during-training callback.

The probe (eval/probes/general_skills.jsonl) holds questions the embedded base model answers right
about half the time across six kinds of skill: a probe the base fails everywhere cannot show
forgetting. Its size and speed are in docs/forgetting.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import scipy.stats

from tunesmith.chat_template import end_of_turn_ids
from tunesmith.data.example import Example, Message
from tunesmith.errors import UserError
from tunesmith.eval.judge import json_objects
from tunesmith.eval.significance import compare_paired
from tunesmith.models.generate import generate_batched
from tunesmith.registry.runfolder import write_json
from tunesmith.ui import console

PROBE_FILE = "general_skills.jsonl"
MAX_NEW_TOKENS = 32  # the longest expected answer (three bullet points) fits; a rambling model is cut short


def load_probes(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The shipped probe set, or a JSONL file of {id, category, question, check, answer} lines."""
    text = Path(path).read_text(encoding="utf-8") if path else resources.files("tunesmith.eval").joinpath("probes", PROBE_FILE).read_text(encoding="utf-8")
    probes = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [p.get("id", i) for i, p in enumerate(probes) if p.get("check") not in CHECKS or not p.get("question")]
    if bad:
        raise UserError(f"probe(s) {bad[:5]} have no question or an unknown check", where=str(path or PROBE_FILE), fix=f"use checks {', '.join(CHECKS)}")
    return probes


def _clean(text: str) -> str:
    return text.strip().strip("`\"'").rstrip(".!").strip()


def _exact(output: str, answer: str) -> bool:
    # Case matters only when the expected answer has capitals ("APPLE" asked in capitals).
    got = _clean(output)
    return got == answer if answer != answer.lower() else got.lower() == answer.lower()


def _contains(output: str, answers: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", output, re.IGNORECASE) for a in answers)


def _number(output: str, answer: float) -> bool:
    numbers = [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", output)]
    return bool(numbers) and numbers[-1] == float(answer)  # the last number is the result in "7 + 5 = 12"


def _json_value(output: str, answer: Any) -> bool:
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(output) if ch in "[{"):
        try:
            value, _ = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            continue
        return value == answer
    return False


def _json_keys(output: str, answer: dict[str, Any]) -> bool:
    found = json_objects(output)
    return bool(found) and all(found[0].get(k) == v for k, v in answer.items())


def _bullets(output: str, count: int) -> bool:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return len(lines) == count and all(re.match(r"^([-*•]|\d+[.)])\s+\S", line) for line in lines)


def _uppercase(output: str, _answer: Any) -> bool:
    letters = [c for c in output if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


CHECKS: dict[str, Callable[[str, Any], bool]] = {
    "exact": _exact,
    "contains": _contains,
    "number": _number,
    "json_value": _json_value,
    "json_keys": _json_keys,
    "bullets": _bullets,
    "uppercase": _uppercase,
    "one_of": lambda out, answers: any(_exact(out, a) for a in answers),
    "max_words": lambda out, n: 0 < len(out.split()) <= n,
    "starts_with": lambda out, prefix: _clean(out).lower().startswith(prefix.lower()),
}


def run_probe(
    model: Any, tokenizer: Any, *, probes: list[dict[str, Any]] | None = None, batch_size: int = 64, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict[str, Any]:
    """{score, per_category, rows}: the share of probes answered correctly, overall and per category."""
    probes = probes if probes is not None else load_probes()
    examples = [Example(id=p["id"], messages=[Message(role="user", content=p["question"])]) for p in probes]
    outputs, seconds = generate_batched(model, tokenizer, examples, end_of_turn_ids(tokenizer), max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = [
        {"id": p["id"], "category": p["category"], "question": p["question"], "output": out, "correct": bool(CHECKS[p["check"]](out, p["answer"]))}
        for p, out in zip(probes, outputs)
    ]
    per_category: dict[str, float] = {}
    for category in dict.fromkeys(r["category"] for r in rows):
        scored = [r["correct"] for r in rows if r["category"] == category]
        per_category[category] = round(sum(scored) / len(scored), 4)
    correct = sum(r["correct"] for r in rows)
    low, high = wilson_interval(correct, len(rows))
    return {
        "score": round(correct / len(rows), 4),
        "low": round(low, 4),
        "high": round(high, 4),
        "n": len(rows),
        "per_category": per_category,
        "rows": rows,
        "seconds": round(seconds, 2),
    }


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share: unlike the normal approximation it stays inside [0, 1] and
    is honest near 0 and 1 with a few hundred questions."""
    if n == 0:
        return 0.0, 1.0
    found = scipy.stats.binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(found.low), float(found.high)


def probe_drop(base_result: dict[str, Any], tuned_result: dict[str, Any], *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """How much the probe fell from base to tuned, with a paired interval: {drop, low, high, base, tuned,
    n, regressed, improved, p_value, confidence}. drop = base - tuned (positive: skills lost); low/high
    bound it by a seeded paired bootstrap over the questions both models answered (the base and tuned
    answers to one question stay together, so their correlation narrows the interval as it should);
    p_value is the exact McNemar test on the questions where the two disagree. regressed counts
    questions the base got right and the tuned model wrong; improved the reverse."""
    tuned_by_id = {r["id"]: r["correct"] for r in tuned_result["rows"]}
    shared = [r for r in base_result["rows"] if r["id"] in tuned_by_id]
    if not shared:
        raise UserError("the two probe results share no question", fix="score the base and the tuned model on the same probe set")
    base = [float(r["correct"]) for r in shared]
    tuned = [float(tuned_by_id[r["id"]]) for r in shared]
    found = compare_paired(base, tuned, n_boot=n_boot, seed=seed, alpha=1 - confidence)
    return {
        "drop": round(-found.delta, 4),
        "low": round(-found.ci_high, 4),
        "high": round(-found.ci_low, 4),
        "base": round(found.mean_a, 4),
        "tuned": round(found.mean_b, 4),
        "n": found.n,
        "regressed": found.regressed,
        "improved": found.improved,
        "p_value": found.p_value,
        "confidence": confidence,
        "method": "paired bootstrap (percentile), exact McNemar",
        "n_boot": n_boot,
        "seed": seed,
    }


def probe_callback(probes: list[dict[str, Any]] | None = None, *, batch_size: int = 64) -> Callable[[Any, Any, int], dict[str, float]]:
    """The probe as a during-training callback: (model, tokenizer, step) -> {"probe_score": ..., "probe.<category>": ...}.
    The model's train/eval mode and the tokenizer's padding side are restored afterwards."""
    chosen = probes if probes is not None else load_probes()

    def callback(model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        was_training, side = model.training, tokenizer.padding_side
        try:
            result = run_probe(model, tokenizer, probes=chosen, batch_size=batch_size)
        finally:
            model.train(was_training)
            tokenizer.padding_side = side
        return {"probe_score": result["score"], **{f"probe.{k}": v for k, v in result["per_category"].items()}}

    return callback


def signed(value: float, digits: int = 2) -> str:
    """A change with its sign; + 0.0 after rounding makes no change read +0.00, not -0.00."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def save_forgetting(run_dir: Path, probes: dict[str, dict[str, Any]], threshold: float) -> dict[str, Any]:
    """eval/forgetting-<model>.jsonl and a `forgetting` section in eval/report.json; warns past the threshold."""
    folder = run_dir / "eval"
    folder.mkdir(exist_ok=True)
    for model_id, result in probes.items():
        (folder / f"forgetting-{model_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result["rows"]), encoding="utf-8")
    section: dict[str, Any] = {m: {k: v for k, v in r.items() if k != "rows"} for m, r in probes.items()}
    section["threshold"] = threshold
    if "base" in probes and "tuned" in probes:
        change = probe_drop(probes["base"], probes["tuned"])
        drop = change["drop"]
        section["drop"], section["warning"] = drop, drop > threshold
        section["drop_interval"] = {k: change[k] for k in ("low", "high", "confidence", "p_value", "regressed", "improved", "method")}
        worst = {c: round(probes["base"]["per_category"][c] - probes["tuned"]["per_category"].get(c, 0.0), 4) for c in probes["base"]["per_category"]}
        section["drop_per_category"] = worst
        message = (
            f"general-skills probe: base {probes['base']['score']:.2f}, tuned {probes['tuned']['score']:.2f} "
            f"(drop {signed(drop)}, 95% interval {signed(change['low'])} to {signed(change['high'])}; threshold {threshold:.2f})"
        )
        console.print(
            f"[yellow]warning: forgetting[/] {message}; train with a larger --keep-general share (self-distilled replay; 0.2 by default, 0 is off) or data.keep_general.target: distribution, or mix your own general data in with data.replay; a lower learning rate or rank alone only slows the loss (docs/forgetting.md)"
            if section["warning"]
            else message
        )
    summary_path = folder / "report.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    summary["forgetting"] = section
    write_json(summary_path, summary)
    return section

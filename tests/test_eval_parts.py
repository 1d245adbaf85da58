"""The evaluation pieces on their own: the forgetting probe and its checks, reference perplexity,
every-metric comparisons and verdicts, prompting baselines, and the commands' help."""

from __future__ import annotations

import json
import math

import pytest
from clihelp import run_cli

from tunesmith.data.example import Example, Message
from tunesmith.errors import UserError
from tunesmith.eval.forgetting import CHECKS, load_probes


def _ideal(probe) -> str:
    check, answer = probe["check"], probe["answer"]
    return {
        "exact": lambda: answer,
        "contains": lambda: f"It is {answer[0]}.",
        "number": lambda: f"The result is {answer}",
        "json_keys": lambda: json.dumps(answer),
        "json_value": lambda: json.dumps(answer),
        "bullets": lambda: "\n".join(["- item"] * answer),
        "uppercase": lambda: "GOOD MORNING!",
        "one_of": lambda: answer[0],
        "max_words": lambda: " ".join(["word"] * answer),
        "starts_with": lambda: f"{answer}, blue.",
    }[check]()


def test_the_shipped_probe_set_is_checkable():
    probes = load_probes()
    assert len(probes) >= 200 and len({p["id"] for p in probes}) == len(probes)
    assert {p["category"] for p in probes} == {"facts", "arithmetic", "instructions", "formatting", "reasoning", "language"}
    for probe in probes:
        assert CHECKS[probe["check"]](_ideal(probe), probe["answer"]), probe  # the right answer passes
        assert not CHECKS[probe["check"]]("zzz " * 12, probe["answer"]), probe  # a wrong one fails


def test_probe_checks_read_answers_like_a_person():
    assert CHECKS["number"]("7 + 5 = 12", 12) and not CHECKS["number"]("12? no, 13", 12)
    assert CHECKS["contains"]("The capital is Paris.", ["Paris"]) and not CHECKS["contains"]("Parisian food", ["Paris"])
    assert CHECKS["exact"]("Yes.", "yes") and not CHECKS["exact"]("apple", "APPLE")
    assert CHECKS["json_keys"]('Here: ```json\n{"name": "Ada"}\n```', {"name": "Ada"}) and not CHECKS["json_keys"]('{"name": "Bob"}', {"name": "Ada"})
    assert CHECKS["bullets"]("- a\n- b\n- c", 3) and not CHECKS["bullets"]("a, b, c", 3)


def test_probe_callback_restores_the_training_state(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.eval.forgetting import probe_callback

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    model.train()
    tokenizer.padding_side = "right"
    probes = load_probes()[:6]
    metrics = probe_callback(probes)(model, tokenizer, 10)
    assert 0.0 <= metrics["probe_score"] <= 1.0 and set(metrics) == {"probe_score", "probe.facts"}
    assert model.training and tokenizer.padding_side == "right"


def test_reference_perplexity_scores_only_the_final_answer(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.chat_template import encode
    from tunesmith.eval.perplexity import final_turn_only, perplexity, reference_nll

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    example = Example(
        id="x",
        messages=[
            Message(role="user", content="hi"),
            Message(role="assistant", content="hello there"),
            Message(role="user", content="route GW-9"),
            Message(role="assistant", content='{"team": "NET"}'),
        ],
    )
    short = Example(id="y", messages=[Message(role="user", content="a"), Message(role="assistant", content="b")])
    (nll, tokens), (nll2, tokens2) = reference_nll(model, tokenizer, [example, short])
    encoded = encode(tokenizer, final_turn_only(example), 512)
    all_assistant = encode(tokenizer, example, 512)
    assert tokens == encoded.n_trained < all_assistant.n_trained  # the earlier answer is context, not scored
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
    assert nll / tokens == pytest.approx(float(loss), rel=1e-4)  # batched with padding, same as the model's own loss
    assert perplexity([(nll, tokens), (nll2, tokens2)]) == pytest.approx(math.exp((nll + nll2) / (tokens + tokens2)))


def _rows(scores, nll=None):
    return [
        {
            "id": str(i),
            "prediction": "the cat sat on the mat today" if s else "x",
            "reference": "the cat sat on the mat today",
            "exact_match": float(s),
            "ref_nll": (nll or [2.0] * len(scores))[i] * 3,
            "ref_tokens": 3,
        }
        for i, s in enumerate(scores)
    ]


def test_every_metric_compared_with_its_direction():
    from tunesmith.eval.compare import compare_rows, verdict_line

    base = _rows([i % 2 for i in range(40)], nll=[3.0] * 40)
    tuned = _rows([1] * 40, nll=[1.0] * 40)
    result = compare_rows(base, tuned, {"exact_match": 1.0, "perplexity": 2.7, "bleu": 50.0})
    em = result["exact_match"]
    assert em["delta"] == pytest.approx(0.5) and em["ci_low"] > 0 and em["significant"] and len(em["improved_ids"]) == 20
    nll = result["ref_nll"]
    assert nll["delta"] == pytest.approx(-2.0) and nll["higher_is_better"] is False and len(nll["improved_ids"]) == 40
    assert nll["improved"] == 40 and nll["regressed"] == 0  # lower is better: every example improved
    ppl = result["perplexity"]
    assert ppl["mean_a"] == pytest.approx(math.exp(3)) and ppl["ci_high"] < 0 and ppl["test"] == "paired_permutation"
    assert result["bleu"]["delta"] > 0
    assert verdict_line(em, "exact match", "tuned", "base").startswith("tuned beat base")
    assert verdict_line(compare_rows(tuned, base, {})["exact_match"], "exact match", "tuned", "base").startswith("base beat tuned")
    same = compare_rows(base, base, {})["exact_match"]
    assert "did not beat" in verdict_line(same, "exact match", "tuned", "base")
    with pytest.raises(UserError):
        compare_rows(base, tuned[:-1], {})


def test_prompting_baselines_build_the_prompts():
    from tunesmith.eval.baselines import few_shot, parse_baselines, with_system_prompt

    def ex(i, system=None):
        msgs = ([Message(role="system", content=system)] if system else []) + [
            Message(role="user", content=f"q{i}"),
            Message(role="assistant", content=f"a{i}"),
        ]
        return Example(id=str(i), messages=msgs)

    shots = few_shot([ex(0, "be brief")], [ex(i, "train system") for i in range(1, 6)], k=2, seed=0)[0]
    roles = [m.role for m in shots.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert shots.messages[0].content == "be brief" and shots.reference == "a0" and shots.messages[2].weight == 0.0
    assert few_shot([ex(0)], [ex(i) for i in range(1, 6)], k=2, seed=0)[0].messages == shots.messages[1:]  # seeded
    system = with_system_prompt([ex(0, "old")], "new prompt")[0]
    assert [m.content for m in system.messages] == ["new prompt", "q0", "a0"]
    assert parse_baselines("few-shot, system") == ["few-shot", "system"]
    with pytest.raises(UserError):
        parse_baselines("zero-shot")
    with pytest.raises(UserError):
        with_system_prompt([ex(0)], None)
    with pytest.raises(UserError):
        few_shot([ex(0)], [ex(1)], k=3)


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        (["eval"], "--baselines"),
        (["eval"], "--temperature"),
        (["eval", "judge"], "--judge-url"),
        (["eval", "judge"], "--pairwise"),
        (["eval", "review-export"], "--fraction"),
        (["eval", "review-import"], "rater"),
        (["runs", "compare"], "two or more"),
    ],
)
def test_eval_commands_have_help(capsys, command, mentions):
    result = run_cli(capsys, *command, "--help")
    assert result.code == 0 and mentions in " ".join(result.out.split())


@pytest.mark.slow
def test_probe_on_the_embedded_model_runs_in_a_few_short_batches_and_is_not_empty():
    """What keeps the probe quick (docs/forgetting.md measures it: 45 s for the base model on 2 cores) is the
    work it asks for: batches of 64 questions, at most 32 new tokens each. Counted here on the real model's
    generate calls rather than timed, so a busy machine cannot fail it."""
    import math

    from tunesmith.config import ModelSpec
    from tunesmith.eval.forgetting import MAX_NEW_TOKENS, load_probes, run_probe
    from tunesmith.models.loading import load_model

    model, tokenizer, _ = load_model(ModelSpec())
    calls = []
    generate = model.generate

    def counted(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["max_new_tokens"]))
        return generate(*args, **kwargs)

    model.generate = counted
    result = run_probe(model, tokenizer)
    n = len(load_probes())
    assert MAX_NEW_TOKENS <= 32 and len(calls) == math.ceil(n / 64)
    assert sum(rows for rows, _ in calls) == n and all(tokens == MAX_NEW_TOKENS for _, tokens in calls)
    assert 0.1 <= result["score"] <= 0.95  # SmolLM2-135M knows some of it (Paris), not all
    assert next(r for r in result["rows"] if r["id"] == "facts-01")["correct"]


SENTENCES = [
    f"Restart the {thing} and check the {part} before you call support {n}"
    for n, (thing, part) in enumerate(
        [(a, b) for a in ("router", "printer", "laptop", "phone", "modem", "scanner") for b in ("cable", "battery", "screen", "fan", "light")]
    )
]


def _scored(preds: list[str], refs: list[str]):
    """Rows and metrics as `tunesmith eval` makes them, without a model."""
    from tunesmith.eval.metrics import aggregate, compute_metrics, example_scores, resolve_metric_names, score_example

    names = resolve_metric_names(None, refs)
    rows = [
        {"id": str(i), "prompt": "q", "reference": r, "prediction": p, **e, **score_example(p, r, None)}
        for i, (p, r, e) in enumerate(zip(preds, refs, example_scores(preds, refs, names)))
    ]
    metrics = aggregate(rows, 2.0)
    metrics.update({k: round(v, 4) for k, v in compute_metrics(preds, refs, names).items() if isinstance(v, float)})
    return rows, metrics


def test_free_text_verdicts_are_given_on_rouge_l_not_exact_match():
    """Free-text answers: no model ever matches exactly, but the tuned one paraphrases the reference. The
    verdict and the best prompt are judged on the task's headline metric (ROUGE-L), and say so."""
    from tunesmith.config import EvalSpec
    from tunesmith.eval.results import compare_models

    refs = SENTENCES
    tuned = [r.replace("Restart the", "Please restart your") for r in refs]
    base = ["No idea" for _ in refs]
    few_shot = [r if i < 3 else "Contact us" for i, r in enumerate(refs)]  # three exact copies, nothing else
    scored = {"base": _scored(base, refs), "few-shot": _scored(few_shot, refs), "tuned": _scored(tuned, refs)}
    assert scored["tuned"][1]["exact_match"] == 0 < scored["few-shot"][1]["exact_match"]
    record = compare_models(EvalSpec(split="test"), {m: r for m, (r, _) in scored.items()}, {m: v for m, (_, v) in scored.items()})
    assert record["task"] == "text" and record["headline"]["metric"] == "rougeL"
    assert record["verdicts"][0].startswith("tuned beat base: ROUGE-L")
    assert record["prompting_verdict"]["best_prompt"] == "few-shot" and record["prompting_verdict"]["metric"] == "rougeL"
    assert "Fine-tuning vs the best prompt (few-shot): tuned beat few-shot: ROUGE-L" in record["prompting_verdict"]["text"]
    assert record["table"][0]["name"] == "rougeL"  # the headline leads every table


def test_runs_list_shows_each_runs_headline_metric(capsys, home):
    """`runs list` shows the headline metric of the run's latest evaluation, named, with the tuned and base
    values of that one evaluation (never a base row from an earlier evaluation beside a newer tuned one)."""
    from tunesmith.registry.store import Registry
    from tunesmith.workspace import Workspace

    ws = Workspace.from_env(home)
    registry = Registry(ws.registry_db)
    registry.start_run("notes-1", None, "tiny", "lora", "notes", "v1", home / "runs" / "notes-1")
    registry.add_evaluations(
        "notes-1", "test", "e1", "rougeL", [("base", 5, {"exact_match": 0.0, "rougeL": 0.12}), ("tuned", 5, {"exact_match": 0.0, "rougeL": 0.34})]
    )
    listed = run_cli(capsys, "runs", "list")
    assert listed.code == 0 and "headline metric" in listed.out
    line = next(row for row in listed.out.splitlines() if "notes-1" in row)
    assert "rougeL (test)" in line and "0.340" in line and "0.120" in line
    registry.add_evaluations("notes-1", "test", "e2", "rougeL", [("tuned", 5, {"exact_match": 0.0, "rougeL": 0.5})])
    line = next(row for row in run_cli(capsys, "runs", "list").out.splitlines() if "notes-1" in row)
    assert "0.500" in line and "0.120" not in line  # e1's base is not e2's


def test_a_split_too_small_is_said_beside_the_verdict():
    """Five examples can never give a significant paired test (p >= 2/2**5); a few more can, but not for a
    small, noisy difference: the verdict says so, with roughly how many examples would be needed."""
    from tunesmith.config import EvalSpec
    from tunesmith.eval.compare import needed_examples, smallest_significant_n
    from tunesmith.eval.results import compare_models

    assert smallest_significant_n() == 6
    refs = SENTENCES[:5]
    tiny = {"base": _scored(["No idea"] * 5, refs), "tuned": _scored(refs, refs)}
    record = compare_models(EvalSpec(split="test"), {m: r for m, (r, _) in tiny.items()}, {m: v for m, (_, v) in tiny.items()})
    assert "did not beat" in record["verdicts"][0] and "5 examples are too few for any difference to be significant (at least 6)" in record["verdicts"][0]
    refs = SENTENCES
    noisy = [r if i % 3 else r.split(" and ")[0] for i, r in enumerate(refs)]
    small = [r if i % 3 != 1 and i != 2 else r.split(" and ")[0] for i, r in enumerate(refs)]  # one more miss than tuned
    pair = {"base": _scored(small, refs), "tuned": _scored(noisy, refs)}
    record = compare_models(EvalSpec(split="test"), {m: r for m, (r, _) in pair.items()}, {m: v for m, (_, v) in pair.items()})
    plan = record["power"]["base"]
    assert plan["metric"] == "rougeL" and plan["n"] == 30
    assert not record["versus"]["base"]["rougeL"]["significant"] and record["versus"]["base"]["rougeL"]["delta"] > 0
    assert f"roughly {plan['needed']} would find it 80% of the time" in record["verdicts"][0] and plan["needed"] > 30
    comparison = {"n": 100, "delta": 0.1, "ci_low": 0.0, "ci_high": 0.2, "confidence": 0.95, "significant": False}
    assert needed_examples(comparison)["needed"] == pytest.approx(100 * ((1.96 + 0.8416) * (0.2 / 3.92) / 0.1) ** 2, rel=0.01)


def test_a_headline_that_did_not_move_names_the_metrics_that_did():
    """key=value answers: tuned gets the machine and priority right but never the whole answer, so exact
    match stays 0 for both. The verdict must not read as "tuning did nothing": it names field accuracy."""
    from tunesmith.config import EvalSpec
    from tunesmith.eval.results import compare_models

    machines = ["LN-3 press", "Velora mixer", "KX-12 lathe", "Orbis conveyor", "T-40 kiln"]
    refs = [f"machine={machines[i % 5]}; action=step {i}; priority={'high' if i % 2 else 'normal'}" for i in range(30)]
    base = ["I am not sure what to do." for _ in refs]
    tuned = [r.replace(f"action=step {i}", "action=call support") for i, r in enumerate(refs)]
    pair = {"base": _scored(base, refs), "tuned": _scored(tuned, refs)}
    record = compare_models(EvalSpec(split="test"), {m: r for m, (r, _) in pair.items()}, {m: v for m, (_, v) in pair.items()})
    verdict = record["verdicts"][0]
    assert record["headline"]["metric"] == "exact_match" and "did not beat" in verdict
    assert "Changed beyond chance on other metrics: field accuracy 0.000 -> 0.667 (better)" in verdict, verdict

"""`tunesmith eval` end to end on the tiny model: other runs, prompting baselines, forgetting probe,
perplexity, configured metrics, sampling, the judge against a real local HTTP server, human review
export/import, the HTML report, and `runs compare`."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import yaml
from chatserver import ChatCompletions, serve
from clihelp import run_cli


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model):
    """Two LoRA runs of the tiny model on the same dataset (trained once for the whole module)."""
    from conftest import tickets_home, train_tiny

    home = tmp_path_factory.mktemp("eval-home")
    ws = tickets_home(home, 60)
    return home, [train_tiny(ws, tiny_model, epochs=epochs, lr=lr, batch_size=4) for lr, epochs in ((3e-2, 2), (1e-3, 1))]


@pytest.fixture()
def ws_home(two_runs, monkeypatch):
    home, ids = two_runs
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    return home, ids


def _report(home, run_id):
    return json.loads((home / "runs" / run_id / "eval" / "report.json").read_text())


def test_eval_against_other_run_baselines_and_probe(capsys, ws_home, tmp_path, monkeypatch):
    home, (run1, run2) = ws_home
    (tmp_path / "mymetric.py").write_text("def brace_share(preds, refs):\n    return sum(p.startswith('{') for p in preds) / len(preds)\n")
    monkeypatch.chdir(tmp_path)
    result = run_cli(
        capsys,
        "eval",
        run1,
        "--compare",
        run2,
        "--baselines",
        "few-shot,system",
        "--shots",
        "2",
        "--system-prompt",
        "Route the ticket as JSON.",
        "--forgetting",
        "--forgetting-threshold",
        "0.5",
        "--metrics",
        "exact_match,valid_json,rouge",
        "--custom",
        "mymetric:brace_share",
        "--limit",
        "8",
        "--max-new-tokens",
        "8",
    )
    assert result.code == 0, result.err
    report = _report(home, run1)
    assert set(report["test"]) == {"tuned", "base", "few-shot", "system", run2}
    tuned = report["test"]["tuned"]["metrics"]
    assert tuned["n"] == 8 and math.isfinite(tuned["perplexity"]) and tuned["perplexity"] > 1
    assert {"rouge1", "brace_share", "valid_json"} <= set(tuned)
    # the few-shot prompt really differs: the same base weights find the references more or less likely
    assert report["test"]["few-shot"]["metrics"]["perplexity"] != report["test"]["base"]["metrics"]["perplexity"]
    versus = report["versus"]["test"]
    assert set(versus) == {"base", "few-shot", "system", run2}
    for name in ("exact_match", "rouge1", "ref_nll", "perplexity", "brace_share"):
        c = versus[run2][name]
        assert c["ci_low"] <= c["delta"] + 1e-9 and c["delta"] <= c["ci_high"] + 1e-9, (name, c)
        assert 0 < c["p_value"] <= 1
    assert versus[run2]["perplexity"]["higher_is_better"] is False
    assert versus[run2]["perplexity"]["test"] == "paired_permutation"
    verdict = report["prompting_verdict"]["test"]
    assert verdict["best_prompt"] in ("base", "few-shot", "system") and "best prompt" in verdict["text"]
    assert "Fine-tuning vs the best prompt" in result.err
    forgetting = report["forgetting"]
    assert 0 <= forgetting["base"]["score"] <= 1 and set(forgetting["base"]["per_category"]) == {
        "facts",
        "arithmetic",
        "instructions",
        "formatting",
        "reasoning",
        "language",
    }
    assert forgetting["drop"] == pytest.approx(forgetting["base"]["score"] - forgetting["tuned"]["score"], abs=1e-4)
    assert forgetting["threshold"] == 0.5
    folder = home / "runs" / run1 / "eval"
    for name in ("test-tuned.jsonl", "test-few-shot.jsonl", f"test-{run2}.jsonl", "forgetting-base.jsonl", "forgetting-tuned.jsonl"):
        assert (folder / name).is_file(), name
    row = json.loads((folder / "test-tuned.jsonl").read_text().splitlines()[0])
    assert row["ref_tokens"] > 0 and row["ref_nll"] > 0 and "rouge1" in row
    page = (home / "runs" / run1 / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # metric bars, confusion matrix, loss curves
    assert "Confusion matrix" in page and "General skills" in page and "best prompt" in page
    interval = forgetting["drop_interval"]  # the page shows the drop with its paired interval and the questions it moved
    assert f"95% interval {round(interval['low'], 3) + 0.0:+.3f} to {round(interval['high'], 3) + 0.0:+.3f}" in page
    assert f"{interval['regressed']} questions lost, {interval['improved']} gained" in page


def test_metrics_named_in_the_run_config_and_sampling_is_seeded(capsys, ws_home):
    home, (_, run2) = ws_home
    config_path = home / "runs" / run2 / "config.yaml"
    original = config_path.read_text()
    config = yaml.safe_load(original)
    config["eval"]["metrics"] = ["exact_match", "length"]
    config_path.write_text(yaml.safe_dump(config))
    try:
        outputs = []
        for args in (("--temperature", "1.0", "--seed", "7"), ("--temperature", "1.0", "--seed", "7"), ()):
            result = run_cli(capsys, "eval", run2, "--limit", "6", "--max-new-tokens", "10", "--no-perplexity", *args)
            assert result.code == 0, result.err
            rows = (home / "runs" / run2 / "eval" / "test-tuned.jsonl").read_text().splitlines()
            outputs.append([json.loads(r)["prediction"] for r in rows])
        metrics = _report(home, run2)["test"]["tuned"]["metrics"]
        assert "length_words" in metrics and "rouge1" not in metrics and "perplexity" not in metrics
        assert outputs[0] == outputs[1]  # the same seed samples the same answers
        assert outputs[0] != outputs[2]  # and sampling is not greedy decoding
    finally:
        config_path.write_text(original)
    bad = run_cli(capsys, "eval", run2, "--temperature", "-1")
    assert bad.code == 2 and "temperature" in bad.err


class Judge(ChatCompletions):
    """Grades every answer 4/3/5, except answers to a question mentioning 'RMA' (unreadable); always
    prefers the answer shown first in pairwise prompts, so a position-swapped verdict is a tie."""

    def reply(self, body):
        text = body["messages"][-1]["content"]
        if "[Answer A]" in text:
            return "Answer A is more precise. [[A]]"
        if "RMA" in text.split("[Answer")[0]:
            return "I cannot decide."
        return '{"scores": {"correctness": 4, "helpfulness": 3, "tone": 5}, "reason": "fine"}'


def test_judge_rubric_and_pairwise_against_an_http_endpoint(capsys, ws_home, monkeypatch):
    home, (run1, _) = ws_home
    assert run_cli(capsys, "eval", run1, "--compare-base", "--limit", "6", "--max-new-tokens", "6", "--no-perplexity").code == 0
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    with serve(Judge) as url:
        graded = run_cli(capsys, "eval", "judge", run1, "--judge-url", url, "--judge-model", "m", "--api-key-env", "JUDGE_KEY")
        assert graded.code == 0, graded.err
        pair = run_cli(capsys, "eval", "judge", run1, "--judge-url", url, "--judge-model", "m", "--pairwise", "base", "--api-key-env", "JUDGE_KEY")
        assert pair.code == 0, pair.err
        assert Judge.seen_keys and all(k == "Bearer sk-test" for k in Judge.seen_keys)
    rows = [json.loads(r) for r in (home / "runs" / run1 / "eval" / "test-tuned.jsonl").read_text().splitlines()]
    unreadable = sum("RMA" in r["prompt"] for r in rows)
    judged = _report(home, run1)["judge"]["test"]
    assert judged["rubric"]["n"] == 6 and judged["rubric"]["unparseable"] == unreadable
    if unreadable < 6:
        assert judged["rubric"]["mean"] == {"correctness": 4.0, "helpfulness": 3.0, "tone": 5.0}
    pairwise = judged["pairwise-base"]
    assert pairwise["n"] == 6 and pairwise["ties"] == 6 and pairwise["order_disagreements"] == 6 and pairwise["wins_b"] == 0
    assert "tuned wins 0" in pair.out and "ties 6" in pair.out
    assert (home / "runs" / run1 / "eval" / "judge-test-rubric.json").is_file()
    assert (home / "runs" / run1 / "eval" / "judge-test-pairwise-base.json").is_file()
    assert "LLM judge" in (home / "runs" / run1 / "report.html").read_text()


def test_judge_with_a_local_model_and_bad_usage(capsys, ws_home, tiny_model):
    home, (run1, run2) = ws_home
    assert run_cli(capsys, "eval", run1, "--limit", "3", "--max-new-tokens", "4", "--no-perplexity").code == 0
    local = run_cli(capsys, "eval", "judge", run1, "--judge-local", str(tiny_model), "--rubric", "correctness", "--max-new-tokens", "8")
    # a random model cannot follow the grading format: no verdict, the likely cause and the way out, exit 1
    assert local.code == 1, local.err
    said = " ".join(local.err.split())
    assert "unparseable 3" in said and "no verdict" in said and "too small" in said and "--judge-url" in said and "Traceback" not in said
    kept = json.loads((home / "runs" / run1 / "eval" / "judge-test-rubric.json").read_text())  # the replies, for a look
    assert kept["summary"]["n"] == 3 and kept["summary"]["unparseable"] == 3 and kept["summary"]["judge"] == str(tiny_model)
    assert _report(home, run1).get("judge", {}).get("test", {}).get("rubric", {}).get("judge") != str(tiny_model)  # not reported as a verdict
    neither = run_cli(capsys, "eval", "judge", run1)
    assert neither.code == 2 and "give exactly one judge" in neither.err
    # run2's answers are kept from an earlier evaluation of the test split; on validation none exist
    missing = run_cli(capsys, "eval", "judge", run1, "--judge-local", str(tiny_model), "--pairwise", run2, "--split", "validation")
    assert missing.code == 2 and f"--compare {run2}" in " ".join(missing.err.split())


def test_review_export_and_import(capsys, ws_home, tmp_path):
    home, (run1, _) = ws_home
    assert run_cli(capsys, "eval", run1, "--compare-base", "--limit", "8", "--max-new-tokens", "6", "--no-perplexity").code == 0
    exported = run_cli(capsys, "eval", "review-export", run1, "--fraction", "0.5")
    assert exported.code == 0, exported.err
    folder = home / "runs" / run1 / "eval" / "review"
    key = json.loads((folder / "review-key.json").read_text())["order"]
    page = (folder / "review.html").read_text()
    assert len(key) == 4 and "<script" in page and 'src="http' not in page and "<link" not in page  # works offline
    sheet = list(csv.DictReader((folder / "review.csv").open()))
    assert len(sheet) == 4 and "tuned" not in (folder / "review.csv").read_text()  # blinded
    filled = []
    for rater, prefer in (("a", "tuned"), ("b", "tuned")):
        rows = [dict(r, preferred=str(key[r["id"]].index(prefer) + 1), rating_1="3", rating_2="4") for r in sheet]
        if rater == "b":
            rows[0]["preferred"] = "tie"
        path = tmp_path / f"rater-{rater}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(sheet[0]))
            writer.writeheader()
            writer.writerows(rows)
        filled.append(str(path))
    imported = run_cli(capsys, "eval", "review-import", run1, *filled)
    assert imported.code == 0, imported.err
    review = _report(home, run1)["human_review"]
    assert review["raters"] == 2 and review["tuned_wins"] == 7 and review["ties"] == 1 and review["win_rate_tuned"] == 0.875
    assert review["agreement"] == 0.75 and "rater agreement 0.75" in imported.out
    assert "Human review" in (home / "runs" / run1 / "report.html").read_text()
    no_key = run_cli(capsys, "eval", "review-import", run1, str(tmp_path / "nothing.csv"))
    assert no_key.code == 2


def test_runs_compare_side_by_side(capsys, ws_home):
    home, (run1, run2) = ws_home
    result = run_cli(capsys, "runs", "compare", run1, run2)
    assert result.code == 0, result.err
    assert run1[:15] in result.out and run2[:15] in result.out
    assert "0.03" in result.out and "0.001" in result.out and "dataset@version" in result.out
    one = run_cli(capsys, "runs", "compare", run1)
    assert one.code == 2 and "two or more" in one.err


def _printed_rows(text: str) -> dict[str, list[str]]:
    """metric -> cells of the tables `tunesmith eval` printed (rich box drawing, one row per line)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) > 2 and cells[0] and not set(cells[0]) <= set("━─┃│╇╈┡┩"):
            rows[cells[0].removesuffix(" (headline)")] = cells
    return rows


def test_printed_deltas_are_the_reports(capsys, ws_home):
    """`eval RUN1 --compare RUN2` prints tuned - RUN2 for every metric, as report.json and report.html do."""
    home, (run1, run2) = ws_home
    result = run_cli(capsys, "eval", run1, "--compare", run2, "--limit", "8", "--max-new-tokens", "8", "--metrics", "exact_match,rouge,bleu,chrf,length")
    assert result.code == 0, result.err
    report = _report(home, run1)
    versus, models = report["versus"]["test"][run2], report["test"]
    printed = _printed_rows(result.out)
    seen = 0
    for name in ("exact_match", "rouge1", "rougeL", "bleu", "chrf", "perplexity"):
        tuned, other = models["tuned"]["metrics"][name], models[run2]["metrics"][name]
        assert versus[name]["delta"] == pytest.approx(tuned - other, abs=2e-3), name
        assert printed[name][-1] == f"{versus[name]['delta']:+.3f}", (name, printed[name])
        seen += abs(tuned - other) > 1e-3
    assert seen, "the two runs answered alike: the sign of a delta is not tested"
    table = {r["name"]: r for r in report["table"]["test"]}
    assert all(printed[n][-1] == ("-" if r["deltas"][run2]["delta"] is None else f"{r['deltas'][run2]['delta']:+.3f}") for n, r in table.items())
    page = (home / "runs" / run1 / "report.html").read_text()
    assert f"{versus['bleu']['delta']:+.3f}" in page
    # speed and length sit in tables of their own: no delta colouring for a description
    assert table["examples_per_s"]["kind"] == "speed" and table["length_chars"]["kind"] == "description"
    assert table["length_chars"]["deltas"][run2]["change"] is None and versus["length_chars"]["improved"] is None
    quality_table = result.out.split("speed")[0]
    assert "examples_per_s" not in quality_table and "length_chars" not in quality_table


def _runs_list_line(capsys, run_id):
    listed = run_cli(capsys, "runs", "list")
    assert listed.code == 0, listed.err
    return next(line for line in listed.out.splitlines() if run_id in line)


def test_a_killed_eval_leaves_the_previous_results_and_registry(capsys, ws_home):
    """SIGKILL after the first model's answers of a new evaluation: the previous answers, report and
    registry pairing are as they were; the next evaluation sweeps the leftovers and pairs only its own rows."""
    from clihelp import tunesmith

    from tunesmith.registry.store import Registry

    home, (run1, _) = ws_home
    folder = home / "runs" / run1 / "eval"
    first = run_cli(capsys, "eval", run1, "--compare-base", "--limit", "4", "--max-new-tokens", "6", "--no-perplexity")
    assert first.code == 0, first.err
    before = {p.name: p.read_bytes() for p in folder.glob("*.jsonl")}
    report_before, line_before = (folder / "report.json").read_bytes(), _runs_list_line(capsys, run1)
    assert {"test-base.jsonl", "test-tuned.jsonl"} <= set(before)
    killed = tunesmith("eval", run1, "--compare-base", "--limit", "6", "--max-new-tokens", "6", "--no-perplexity", kill_at="eval:1")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in folder.glob("*.jsonl")} == before
    assert (folder / "report.json").read_bytes() == report_before
    assert _runs_list_line(capsys, run1) == line_before
    rows = [e for e in Registry(home / "registry.db").evaluations(run1) if e["split"] == "test"]
    assert {e["model_id"] for e in rows} == {"base", "tuned"} and {e["n"] for e in rows} == {4} and len({e["evaluation_id"] for e in rows}) == 1
    again = run_cli(capsys, "eval", run1, "--limit", "3", "--max-new-tokens", "6", "--no-perplexity")  # the tuned model alone
    assert again.code == 0, again.err
    assert not list(folder.glob(".staging-*"))
    rows = [e for e in Registry(home / "registry.db").evaluations(run1) if e["split"] == "test"]
    assert [e["model_id"] for e in rows] == ["tuned"] and rows[0]["n"] == 3  # never the older evaluation's base beside it
    assert _runs_list_line(capsys, run1).rstrip(" │").endswith("-")
    assert len(_report(home, run1)["evaluations"]) >= 2  # the earlier evaluation is kept
    # and its base and tuned answers, evaluated together, are still there to review side by side
    exported = run_cli(capsys, "eval", "review-export", run1, "--fraction", "1")
    assert exported.code == 0, exported.err
    key = json.loads((home / "runs" / run1 / "eval" / "review" / re.search(r"keep it\): .*/(review-key[-\d]*\.json)", exported.out).group(1)).read_text())
    assert len(key["order"]) == 4  # the 4 examples base and tuned answered in the same evaluation


def test_evaluations_and_review_keys_accumulate(capsys, ws_home, tmp_path):
    """--baselines after --compare-base keeps both in the report (each kind's latest on top); a second
    review export writes a second key beside the first, and each filled sheet is unblinded with its own key."""
    home, (run1, _) = ws_home
    assert run_cli(capsys, "eval", run1, "--compare-base", "--limit", "6", "--max-new-tokens", "6", "--no-perplexity").code == 0
    first = run_cli(capsys, "eval", "review-export", run1, "--fraction", "0.5", "--seed", "1")
    assert first.code == 0, first.err
    assert run_cli(capsys, "eval", run1, "--baselines", "few-shot", "--shots", "2", "--limit", "6", "--max-new-tokens", "6", "--no-perplexity").code == 0
    report = _report(home, run1)
    kinds = [e["kind"] for e in report["evaluations"]]
    assert kinds[:2] == ["test: tuned vs base, few-shot", "test: tuned vs base"]
    page = (home / "runs" / run1 / "report.html").read_text()
    assert page.index("test: tuned vs base, few-shot") < page.index("test: tuned vs base (")
    folder = home / "runs" / run1 / "eval" / "review"
    first_key = folder / re.search(r"keep it\): .*/(review-key[-\d]*\.json)", first.out).group(1)
    first_bytes = first_key.read_bytes()
    second = run_cli(capsys, "eval", "review-export", run1, "--fraction", "0.5", "--seed", "2")
    assert second.code == 0, second.err
    newest = folder / re.search(r"keep it\): .*/(review-key[-\d]*\.json)", second.out).group(1)
    assert newest != first_key and first_key.read_bytes() == first_bytes  # the first key is kept as it was
    filled = []
    for key_path in (first_key, newest):
        sheet_path = folder / json.loads(key_path.read_text())["sheet"]
        order = json.loads(key_path.read_text())["order"]
        sheet = list(csv.DictReader(sheet_path.open()))
        path = tmp_path / f"filled-{key_path.stem}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(sheet[0]))
            writer.writeheader()
            writer.writerows(dict(r, preferred=str(order[r["id"]].index("tuned") + 1)) for r in sheet)
        filled.append(str(path))
    imported = run_cli(capsys, "eval", "review-import", run1, *filled)
    assert imported.code == 0, imported.err
    review = _report(home, run1)["human_review"]
    assert review["base_wins"] == 0 and review["tuned_wins"] == review["rated"] == 6  # unblinded right: every sheet preferred tuned
    stranger = tmp_path / "stranger.csv"
    stranger.write_text("id,prompt,reference,answer_1,answer_2,preferred,rating_1,rating_2,comment\nnot-an-id,p,r,a,b,1,,,\n")
    refused = run_cli(capsys, "eval", "review-import", run1, str(stranger))
    assert refused.code == 2 and "no review key holds the ids" in refused.err and "--key" in refused.err

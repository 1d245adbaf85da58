"""compute_metrics equals the reference libraries on the same inputs, chooses metrics by task, and runs custom metrics."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from tunesmith.errors import UserError
from tunesmith.eval.metrics import INVALID, aggregate, compute_metrics, detect_task, score_example

TEXT_PREDS = ["The cats are sitting on the mat.", "It rained all day in Paris", "", "Order #42 shipped today"]
TEXT_REFS = ["The cat sat on the mat.", "It was raining all day in Paris.", "Nothing to report.", "Order #42 has shipped."]


def test_text_metrics_equal_rouge_score_and_sacrebleu():
    metrics = compute_metrics(TEXT_PREDS, TEXT_REFS, None)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(TEXT_PREDS, TEXT_REFS)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(sum(s[key].fmeasure for s in scores) / len(scores))
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(TEXT_PREDS, [TEXT_REFS]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(TEXT_PREDS, [TEXT_REFS]).score)
    assert metrics["exact_match"] == 0.0
    assert metrics["length_chars"] == pytest.approx(sum(map(len, TEXT_PREDS)) / 4)
    assert metrics["length_words"] == pytest.approx(sum(len(p.split()) for p in TEXT_PREDS) / 4)
    # Stemming is on: "cats" and "cat" share the stem "cat".
    assert compute_metrics(["cats"], ["cat"], ["rouge"])["rouge1"] == 1.0


def test_corpus_metric_intervals_are_the_librarys_score_on_every_resample(monkeypatch):
    """compare_rows sums each example's counts per resample for BLEU, chrF and macro-F1 instead of rescoring
    the rows (minutes on a large split): the interval and p-value must be what sacrebleu and sklearn give
    rescoring each resample, a class that a resample leaves out included."""
    from sklearn.metrics import f1_score

    from tunesmith.eval import compare
    from tunesmith.eval.compare import _bleu, _chrf, _corpus_comparison, _macro_f1

    monkeypatch.setattr(compare, "N_BOOT", 200)  # the fewest resamples it takes; rescoring 2 x 1000 of them takes a while
    a = [{"prediction": p, "reference": r} for p, r in zip(TEXT_PREDS * 2, TEXT_REFS * 2)]
    b = [{"prediction": r if i % 3 else "", "reference": r} for i, r in enumerate(TEXT_REFS * 2)]

    def rescored(corpus):
        return lambda rows: float(corpus([r["prediction"] for r in rows], [[r["reference"] for r in rows]]).score)

    def sklearn_macro_f1(rows):
        truth = [r["label"] for r in rows]
        return float(f1_score(truth, [r["predicted_label"] for r in rows], labels=sorted(set(truth)), average="macro", zero_division=0))

    truth = ["bug"] * 5 + ["billing"] * 4 + ["praise"]  # one praise: many resamples leave it out
    classes_a = [
        {"label": t, "predicted_label": p} for t, p in zip(truth, ["bug", "bug", "billing", "bug", "praise", "billing", "bug", "billing", "billing", "bug"])
    ]
    classes_b = [{"label": t, "predicted_label": p} for t, p in zip(truth, ["bug"] * 4 + ["billing"] * 5 + ["praise"])]
    cases = [
        (_bleu(), rescored(sacrebleu.corpus_bleu), a, b),
        (_chrf(), rescored(sacrebleu.corpus_chrf), a, b),
        (_macro_f1(sorted(set(truth))), sklearn_macro_f1, classes_a, classes_b),
    ]
    for counted, library, rows_a, rows_b in cases:
        fast, slow = _corpus_comparison(counted, rows_a, rows_b, seed=3), _corpus_comparison(library, rows_a, rows_b, seed=3)
        assert fast["mean_a"] == slow["mean_a"] == library(rows_a) and fast["mean_b"] == slow["mean_b"]
        assert (fast["ci_low"], fast["ci_high"], fast["p_value"]) == (slow["ci_low"], slow["ci_high"], slow["p_value"])
        assert slow["ci_low"] < slow["ci_high"] and slow["p_value"] < 1


def test_classification_metrics_equal_sklearn():
    refs = ["billing", "tech", "billing", "account", "tech", "billing", "account", "tech"]
    preds = ["billing", "tech", "tech", "account", " tech ", "no idea", "billing", "tech"]
    metrics = compute_metrics(preds, refs, None)
    labels = sorted(set(refs))
    cleaned = [p.strip() if p.strip() in labels else INVALID for p in preds]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(refs, cleaned))
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(refs, cleaned, labels=labels, average=average, zero_division=0)
        assert (metrics[f"precision_{average}"], metrics[f"recall_{average}"], metrics[f"f1_{average}"]) == pytest.approx((p, r, f))
    p, r, f, s = precision_recall_fscore_support(refs, cleaned, labels=labels, average=None, zero_division=0)
    for i, label in enumerate(labels):
        assert metrics["per_class"][label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == [*labels, INVALID]
    assert cm["matrix"] == confusion_matrix(refs, cleaned, labels=[*labels, INVALID]).tolist()
    json.dumps(metrics)  # nested results are plain JSON


def test_named_metrics_and_aliases():
    metrics = compute_metrics(["a", "b"], ["a", "c"], ["exact_match", "precision", "confusion"])
    assert metrics["exact_match"] == 0.5 and "f1_macro" in metrics and "confusion_matrix" in metrics
    assert "accuracy" not in metrics and "bleu" not in metrics
    with pytest.raises(UserError, match="unknown metric 'blue'"):
        compute_metrics(["a"], ["a"], ["blue"])
    with pytest.raises(UserError, match="perplexity"):
        compute_metrics(["a"], ["a"], ["perplexity"])
    with pytest.raises(UserError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"], None)


def test_json_metrics_schema_and_field_accuracy(tmp_path):
    refs = ['{"team": "billing", "urgent": true}', '{"team": "tech", "urgent": false}', '{"team": "tech", "urgent": true}']
    preds = ['{"urgent": true, "team": "billing"}', '{"team": "tech", "urgent": "no"}', "sorry, I cannot"]
    schema = {"type": "object", "required": ["team", "urgent"], "properties": {"urgent": {"type": "boolean"}}}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    metrics = compute_metrics(preds, refs, None, json_schema=path)
    assert metrics["exact_match"] == pytest.approx(1 / 3)  # key order does not matter
    assert metrics["valid_json"] == pytest.approx(2 / 3)
    assert metrics["field_accuracy.team"] == pytest.approx(2 / 3)
    assert metrics["field_accuracy.urgent"] == pytest.approx(1 / 3)
    assert metrics["field_accuracy"] == pytest.approx(3 / 6)
    assert metrics["schema_valid"] == pytest.approx(1 / 3)  # "no" is not a boolean; prose is not JSON
    assert compute_metrics(preds, refs, ["json_schema"], json_schema=schema) == {"schema_valid": pytest.approx(1 / 3)}
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": 5}')
    with pytest.raises(UserError, match="not a valid JSON Schema") as info:
        compute_metrics(preds, refs, None, json_schema=bad)
    assert info.value.where == str(bad)
    with pytest.raises(UserError, match="needs a schema"):
        compute_metrics(preds, refs, ["json_schema"])


@pytest.mark.parametrize(
    "refs, task",
    [
        (['{"a": 1}', '{"a": 2}'], "json"),
        (["yes", "no", "yes", "no", "yes"], "classification"),
        (["yes", "no"], "text"),  # two answers, no repetition: not enough to call it a classification
        (["A long free-text answer about returns.", "Another different answer here.", "Third one."], "text"),
        (["team=billing; priority=high", "team=bug; priority=low", "team=bug; priority=high"], "fields"),
        (["team: billing\npriority: high", "team: bug\npriority: low"], "fields"),
        (["Note: call back tomorrow", "Step 1: restart; Step 2: retry"], "text"),  # one field, or keys that are words: prose
    ],
)
def test_task_is_chosen_from_the_references(refs, task):
    assert detect_task(refs) == task


def test_custom_metric_module_function(tmp_path, monkeypatch):
    (tmp_path / "mymetrics_ts.py").write_text(
        "def share_upper(predictions, references):\n    return sum(p.isupper() for p in predictions) / len(predictions)\n"
        "def several(predictions, references):\n    return {'n': len(predictions), 'same': sum(p == r for p, r in zip(predictions, references))}\n"
        "def wrong(predictions, references):\n    return ['not', 'a', 'number']\n"
        "def broken(predictions, references):\n    raise RuntimeError('boom')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    metrics = compute_metrics(["A", "b"], ["a", "b"], ["exact_match"], custom=["mymetrics_ts:share_upper", "mymetrics_ts:several"])
    assert metrics == {"exact_match": 0.5, "share_upper": 0.5, "several.n": 2.0, "several.same": 1.0}
    for spec, message in [
        ("mymetrics_ts:wrong", "returned list"),
        ("mymetrics_ts:broken", "raised RuntimeError: boom"),
        ("mymetrics_ts:missing", "has no 'missing'"),
        ("no_such_module_ts:f", "cannot import module"),
        ("mymetrics_ts", "is not module:function"),
    ]:
        with pytest.raises(UserError, match=message) as info:
            compute_metrics(["a"], ["a"], ["exact_match"], custom=spec)
        assert spec in str(info.value)


def test_run_scoring_is_unchanged():
    row = score_example('{"team": "tech"}', '{"team": "tech"}', "tech")
    assert row == {"exact_match": 1.0, "valid_json": 1.0, "fields": {"team": 1.0}, "label": "tech", "predicted_label": "tech"}
    metrics = aggregate([row, score_example("nope", '{"team": "billing"}', "billing")], 2.0)
    assert metrics["exact_match"] == 0.5 and metrics["field_accuracy.team"] == 0.5 and metrics["examples_per_s"] == 1.0


def test_key_value_answers_get_per_field_accuracy():
    """`key=value; key=value` answers (and `key: value` lines) are scored field by field, like JSON answers,
    so a user sees which field fails; exact match reads the fields, not their spacing."""
    refs = ["team=billing; priority=high", "team=bug; priority=low", "team=bug; priority=high", "team=praise; priority=low"]
    preds = ["team=billing;priority=low", "team=bug; priority=high", "team = bug; priority=high", "team: praise\npriority: low"]
    metrics = compute_metrics(preds, refs)
    assert metrics["field_accuracy.team"] == 1.0 and metrics["field_accuracy.priority"] == 0.5
    assert metrics["exact_match"] == 0.5 and metrics["field_accuracy"] == 0.75
    row = score_example(preds[0], refs[0], None)
    assert row["fields"] == {"team": 1.0, "priority": 0.0} and row["exact_match"] == 0.0
    assert aggregate([score_example(p, r, None) for p, r in zip(preds, refs)], 1.0)["field_accuracy.priority"] == 0.5

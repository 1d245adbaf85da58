"""`tunesmith data prepare` end to end: every step runs, reports, and lands in the manifest."""

from __future__ import annotations

import json

from clihelp import run_cli

PLANTED = ["jane.doe@example.com", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "123-45-6789", "192.168.1.20", "AKIAIOSFODNN7EXAMPLE"]


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_prepare_redacts_dedups_groups_and_writes_its_report(capsys, home, tmp_path):
    records = []
    for i in range(60):
        secret = PLANTED[i % len(PLANTED)] if i % 5 == 0 else ""
        records.append(
            {
                "messages": [
                    {"role": "user", "content": f"Customer {i % 12} asks about order {i * 7} {secret}".strip()},
                    {"role": "assistant", "content": f"Order {i * 7} ships  on day {i % 9}."},
                ],
                "meta": {"customer_id": f"c{i % 12}"},
            }
        )
    records.append(records[3])  # an exact duplicate
    source = write_records(tmp_path / "orders.jsonl", records)
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "redact", "--no-pii-ner", "--group-by", "customer_id", "--out", "orders")
    assert result.code == 0, result.err
    folder = home / "datasets" / "orders"
    text = "".join((folder / f"{s}.jsonl").read_text() for s in ("train", "validation", "test"))
    assert not any(p in text for p in PLANTED) and "<EMAIL>" in text and "<US_SSN>" in text
    assert "ships on day" in text  # whitespace normalised by the clean step
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"]] == ["clean", "pii", "dedup", "leakage"]
    assert manifest["removed"]["dedup"] >= 1 and manifest["settings"]["group_by"] == "customer_id"
    groups = {
        s: {json.loads(line)["meta"]["customer_id"] for line in (folder / f"{s}.jsonl").read_text().splitlines()} for s in ("train", "validation", "test")
    }
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    assert (folder / "report.html").is_file() and "Overlap check" in (folder / "report.html").read_text()


def test_stats_of_a_file_and_of_a_dataset(capsys, home, tickets_file):
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--pii", "off", "--out", "t").code == 0
    for source in ("t", str(tickets_file)):
        result = run_cli(capsys, "data", "stats", source)
        assert result.code == 0 and "labels" in result.out and "IAM" in result.out
    assert run_cli(capsys, "data", "stats", "no-such-dataset").code == 2


def _read(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_a_test_split_too_small_to_compare_models_is_warned_about_with_the_size_needed(capsys, home, tmp_path):
    # 149 rows written from a handful of templates: dedup removes most, leaving a test split of a few.
    records = [
        {"prompt": f"Reset the password for account {i % 50}", "completion": f"Open settings, then security, then reset ({i % 50})."} for i in range(149)
    ]
    source = write_records(tmp_path / "support.jsonl", records)
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "off", "--out", "support")
    assert result.code == 0, result.err
    manifest = json.loads((home / "datasets" / "support" / "manifest.json").read_text())
    err = " ".join(result.err.split())
    assert f"dedup: removed {149 - manifest['steps'][1]['examples_out']} of 149 example(s)" in err and "99 exact duplicate(s)" in err
    assert any(w.startswith("dedup_removed_many: dedup removed 99 of 149") for w in manifest["warnings"])
    small = [w for w in manifest["warnings"] if w.startswith("small_test_split")]
    assert small and f"on {manifest['counts']['test']} example" in small[0] and "needs about 155" in small[0] and "McNemar" in small[0]
    assert "small_test_split" in err
    assert "small_test_split" in (home / "datasets" / "support" / "report.html").read_text()


def test_the_power_rule_behind_the_warning():
    from tunesmith.data.split import min_significant_size, paired_sample_size, small_split_warning

    assert paired_sample_size() == 155  # 10 points at 95% / 80%, 20% of answers changing
    assert paired_sample_size(0.2) < paired_sample_size(0.1) < paired_sample_size(0.05)
    assert min_significant_size() == 6  # 2 * 0.5**5 = 0.0625 > 0.05, 2 * 0.5**6 < 0.05
    assert "can be significant" in small_split_warning("test", 5) and small_split_warning("test", 155) is None


def test_examples_longer_than_the_training_length_stay_out_of_validation_and_test(capsys, home, tmp_path, tiny_model):
    records = [{"prompt": f"question number {i} about orders", "completion": f"answer {i}"} for i in range(40)]
    records += [{"prompt": f"long question {i} " + "with many extra words " * 40, "completion": f"long answer {i}"} for i in range(20)]
    source = write_records(tmp_path / "mixed.jsonl", records)
    result = run_cli(
        capsys, "data", "prepare", str(source), "--pii", "off", "--no-near-dedup", "--model", str(tiny_model), "--max-seq-len", "64", "--out", "mixed"
    )
    assert result.code == 0, result.err
    folder = home / "datasets" / "mixed"
    assert not [r for s in ("validation", "test") for r in _read(folder, s) if "long question" in r["messages"][0]["content"]]
    assert len([r for r in _read(folder, "train") if "long question" in r["messages"][0]["content"]]) == 20
    manifest = json.loads((folder / "manifest.json").read_text())
    length = next(s for s in manifest["steps"] if s["step"] == "length")
    moved = sum(len(v) for v in length["report"]["moved_to_train"].values())
    assert moved > 0 and length["settings"]["max_seq_len"] == 64
    assert "moved to train" in result.err


def test_a_given_test_file_is_never_cut_its_repeats_leave_train_and_its_own_duplicates_are_named(capsys, home, tmp_path):
    import random

    rng = random.Random(0)
    words = [f"w{n}" for n in range(400)]
    train = [{"prompt": " ".join(rng.sample(words, 12)), "completion": f"Go to menu {i}."} for i in range(60)]
    test = [{"prompt": " ".join(rng.sample(words, 12)), "completion": f"In billing {i}."} for i in range(97)]
    test += [
        {"prompt": train[5]["prompt"], "completion": "Go to menu 5."},  # the same prompt as a training example
        {"prompt": train[7]["prompt"] + " please", "completion": "Go to menu 7."},  # a near copy
        dict(test[10]),
    ]  # a duplicate inside the test file, at line 100 of line 11
    source, given = write_records(tmp_path / "train.jsonl", train), write_records(tmp_path / "held.jsonl", test)
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "off", "--test-file", str(given), "--out", "given")
    assert result.code == 0, result.err
    folder = home / "datasets" / "given"
    assert len(_read(folder, "test")) == 100  # every line of the user's file
    train_prompts = {r["messages"][0]["content"] for r in _read(folder, "train") + _read(folder, "validation")}
    assert train[5]["prompt"] not in train_prompts and train[7]["prompt"] not in train_prompts
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["removed"]["train_repeating_test_file"] == 2 and "test_leaked_into_train" not in manifest["removed"]
    err = " ".join(result.err.split())
    assert "removed from train" in err and "held-100 repeats held-11" in err
    assert any(w.startswith("duplicates_in_test_file") and "held-100 repeats held-11" in w for w in manifest["warnings"])


def _support_csv(path, n=150, empty_at=None):
    """A support team's export: question,answer columns; `empty_at` (a data row, 1-based) has no answer."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        for i in range(1, n + 1):
            writer.writerow(
                [
                    f"ticket {i}: my order {i * 13} has not arrived after {i % 7 + 2} days, item {i * 31}",
                    "" if i == empty_at else f"We resent order {i * 13} by courier {i % 5}; tracking code T{i * 97}.",
                ]
            )
    return path


def test_one_empty_answer_is_refused_with_a_fix_that_fits_or_left_out_with_skip_invalid(capsys, home, tmp_path):
    source = _support_csv(tmp_path / "support.csv", empty_at=36)  # data row 36 is line 37 of the file
    refused = run_cli(capsys, "data", "prepare", str(source), "--map", "prompt=question", "completion=answer", "--pii", "off")
    assert refused.code == 2
    err = " ".join(refused.err.split())
    assert f"{source}:37:" in err and "fill in the empty or missing fields" in err and "--skip-invalid" in err
    assert "--format" not in err  # the format was found; naming it would not help
    assert "field 'completion' (your 'answer')" in err  # the column the user knows, beside the name tunesmith uses
    result = run_cli(capsys, "data", "prepare", str(source), "--map", "prompt=question", "completion=answer", "--pii", "off", "--skip-invalid", "--out", "s")
    assert result.code == 0, result.err
    assert "left out 1 line(s)" in " ".join(result.err.split())
    manifest = json.loads((home / "datasets" / "s" / "manifest.json").read_text())
    assert [(s["line"], s["code"]) for s in manifest["skipped"]] == [(37, "missing_field")] and sum(manifest["counts"].values()) <= 149
    assert any(w.startswith("skipped_invalid: 1 line(s)") for w in manifest["warnings"])
    assert "Lines left out (--skip-invalid)" in (home / "datasets" / "s" / "report.html").read_text()


def test_an_unmapped_csv_is_one_problem_said_once_with_its_count_and_a_fix_that_names_map(capsys, home, tmp_path):
    source = _support_csv(tmp_path / "support.csv")
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "off")
    assert result.code == 2
    err = " ".join(result.err.split())
    assert err.count("unknown format") == 1 and "(150 lines: 2, 3, 4, 5, 6, ...)" in err
    assert "--map prompt=question completion=answer" in err and "--format" in err
    validated = run_cli(capsys, "data", "validate", str(source))
    assert validated.code == 2 and validated.out.count("no known format") == 1 and "(150 lines)" in validated.out


def test_train_on_a_file_passes_skip_invalid_to_the_prepare_it_runs(capsys, home, tmp_path, tiny_model):
    source = _support_csv(tmp_path / "support.csv", n=40, empty_at=5)
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model}}}\ndata: {{path: {source}, prepare: {{mapping: {{prompt: question, completion: answer}}, pii: 'off'}}}}\n")
    refused = run_cli(capsys, "train", "--config", str(config), "--dry-run")
    assert refused.code == 2 and "--skip-invalid" in refused.err
    result = run_cli(capsys, "train", "--config", str(config), "--dry-run", "--skip-invalid")
    assert result.code == 0, result.err


def test_a_generic_file_name_gets_its_folder_in_the_dataset_name(capsys, home, tmp_path, tickets_file):
    folder = tmp_path / "support"
    folder.mkdir()
    source = folder / "train.jsonl"
    source.write_text(tickets_file.read_text())
    result = run_cli(capsys, "data", "prepare", str(source), "--pii", "off")
    assert result.code == 0, result.err
    assert (home / "datasets" / "support-train" / "manifest.json").is_file()
    assert "dataset name: support-train" in " ".join(result.err.split())
    # a telling file name stays as it is
    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--pii", "off").code == 0 and (home / "datasets" / "tickets").is_dir()


def test_train_on_a_file_keeps_examples_it_would_truncate_out_of_validation_and_test(capsys, home, tmp_path, tiny_model):
    records = [{"prompt": f"question number {i} about orders", "completion": f"answer {i}"} for i in range(40)]
    records += [{"prompt": f"long question {i} " + "with many extra words " * 40, "completion": f"long answer {i}"} for i in range(20)]
    source = write_records(tmp_path / "mixed.jsonl", records)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {source}, prepare: {{pii: 'off', near_dedup: false}}}}\ntrain: {{max_seq_len: 64, max_steps: 1, batch_size: 4}}\n"
    )
    result = run_cli(capsys, "train", "--config", str(config))
    assert result.code == 0, result.err
    folder = home / "datasets" / "mixed"
    assert not [r for s in ("validation", "test") for r in _read(folder, s) if "long question" in r["messages"][0]["content"]]
    assert "moved to train" in result.err

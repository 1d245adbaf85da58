"""`tunesmith export`: a run written for another runtime, loaded there with plain transformers (and PEFT),
answers as `tunesmith generate` does; what a target cannot take is refused with exit 2 and what to use
instead; an export that does not behave as trained fails verification with exit 1, naming the first
differing example. The runs train on tickets whose answers are short labels, every example with the
demo's system prompt and a third of them with an earlier exchange (multi-turn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelp import run_cli

from tunesmith.errors import ExportMismatch


def _records(n: int) -> list[dict]:
    from conftest import tiny_records

    records = tiny_records(n)
    rows = []
    for i, record in enumerate(records):
        system, user, _ = record["messages"]
        messages = [system]
        if i % 3 == 0:  # an earlier exchange: the prompt is every turn before the last answer
            earlier = records[(i + 1) % n]
            messages += [earlier["messages"][1], {"role": "assistant", "content": earlier["label"]}]
        rows.append({"messages": [*messages, user, {"role": "assistant", "content": record["label"]}]})
    return rows


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    folder = tmp_path_factory.mktemp("export-home")
    source = folder / "tickets.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _records(30)), encoding="utf-8")
    workspace = Workspace.from_env(folder)
    prepare_dataset(source, workspace, name="tickets", seed=0, ratios=(0.7, 0.1, 0.2), options=PrepareSpec(pii="off"))
    return workspace


@pytest.fixture(scope="module")
def runs(ws, tiny_model) -> dict[str, str]:
    """One short run per method (their answers need not be good: the export must only answer the same)."""
    from tunesmith.config import RunSpec
    from tunesmith.train.recipe import train

    def trained(method: str, lr: float) -> str:
        train_settings = {"method": method, "max_steps": 3, "batch_size": 4, "lr": lr}
        spec = RunSpec.model_validate(
            {"model": {"name": str(tiny_model)}, "data": {"dataset": "tickets"}, "train": train_settings, "eval": {"max_new_tokens": 24}}
        )
        return train(spec, ws).info.run_id

    return {method: trained(method, lr) for method, lr in {"full": 1e-4, "lora": 1e-2, "dora": 1e-2, "prompt_tuning": 3e-2}.items()}


@pytest.fixture()
def cli_home(ws, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(ws.home))
    return ws


def _export(capsys, *args: str):
    result = run_cli(capsys, "export", *args)
    return result, (Path(result.out.strip()) if result.code == 0 else None)


def _plain_answer(folder: Path, messages: list[dict], max_new_tokens: int) -> str:
    """What a program with only transformers gets from the folder: its template, its generation_config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**encoded, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_merged_lora_answers_as_tunesmith_generate(cli_home, runs, capsys):
    run = runs["lora"]
    result, folder = _export(capsys, run, "--to", "merged")
    assert result.code == 0, result.err
    assert folder == cli_home.run_dir(run) / "exports" / "merged"
    assert "verification:" in result.err and "identical" in result.err and "passed" in result.err

    from tunesmith.data.dataset import load_dataset

    system = load_dataset(cli_home, "tickets").system_prompt
    assert system and system.startswith("Route this Nimbus support ticket")
    for prompt in ("my dock RMA-275 is cracked", "the widget wdg-941 crashes since this morning"):
        said = run_cli(capsys, "generate", run, "--prompt", prompt, "--max-new-tokens", "20")
        assert said.code == 0, said.err
        assert _plain_answer(folder, [{"role": "system", "content": system}, {"role": "user", "content": prompt}], 20) == said.out.strip()

    # a multi-turn prompt, as the Python API's chat asks it
    import tunesmith

    chat = tunesmith.load_run(run, workspace=cli_home).chat(max_new_tokens=20)
    first = chat.reply("Hello, ticket re RMA-275")
    second = chat.reply("and wdg-941 is broken too")
    history = [{"role": "system", "content": system}, {"role": "user", "content": "Hello, ticket re RMA-275"}, {"role": "assistant", "content": first}]
    assert _plain_answer(folder, [*history, {"role": "user", "content": "and wdg-941 is broken too"}], 20) == second

    generation = json.loads((folder / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    from tunesmith.chat_template import end_of_turn_ids

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert generation["eos_token_id"] == end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert generation["pad_token_id"] == tokenizer.pad_token_id and generation["do_sample"] is False
    assert not {"temperature", "top_p", "top_k", "repetition_penalty"} & set(generation)

    record = json.loads((folder / "export.json").read_text())
    manifest = json.loads((cli_home.run_dir(run) / "dataset.json").read_text())
    assert record["format"] == "merged" and record["runtime"] == "transformers" and record["quantization"] is None
    assert record["source_run"]["run_id"] == run and record["source_run"]["method"] == "lora"
    assert record["dataset"] == {"name": "tickets", "version": manifest["version"]}
    assert record["tunesmith_version"] == tunesmith.__version__ and record["system_prompt"] == system
    assert {f["path"] for f in record["files"]} >= {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"}
    assert all((folder / f["path"]).stat().st_size == f["bytes"] for f in record["files"])
    assert record["total_bytes"] == sum(f["bytes"] for f in record["files"])
    v = record["verification"]
    assert v["passed"] and v["examples"] == 6 and v["prompt_ids_identical"] == 6 and v["identical_rate"] == 1.0 and v["new_runaways"] == 0
    assert str(folder) in record["usage"] and "--override-generation-config" in record["usage"]
    assert not list(folder.parent.glob(".*")), "no staging folder left behind"


@pytest.mark.parametrize("method", ["dora", "full"])
def test_every_mergeable_method_exports_merged_and_verifies(cli_home, runs, capsys, method):
    result, folder = _export(capsys, runs[method], "--to", "merged", "--verify-examples", "4")
    assert result.code == 0, result.err
    record = json.loads((folder / "export.json").read_text())
    assert record["source_run"]["method"] == method
    assert record["verification"]["passed"] and record["verification"]["examples"] == 4


def test_lora_adapter_for_vllm_loads_with_peft(cli_home, runs, capsys):
    run = runs["lora"]
    result, folder = _export(capsys, run, "--to", "adapter")
    assert result.code == 0, result.err
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "base" / "model.safetensors").is_file()
    record = json.loads((folder / "export.json").read_text())
    assert record["runtime"] == "vllm" and record["verification"]["passed"]
    assert f"--lora-modules {run}={folder / 'adapter'}" in record["usage"] and record["usage"].startswith(f"vllm serve {folder / 'base'}")
    # the weights linked to the base's, not copied (other exports of the same base add links); the config written
    assert (folder / "base" / "model.safetensors").stat().st_nlink >= 2 and (folder / "base" / "config.json").stat().st_nlink == 1
    assert any("hard links" in note and "never edit them in place" in note for note in record["notes"])
    base_generation = json.loads((folder / "base" / "generation_config.json").read_text())
    assert base_generation["eos_token_id"] == record["end_of_turn_ids"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), folder / "adapter")
    assert plain.active_peft_config.peft_type == "LORA"


@pytest.mark.parametrize(
    ("method", "to", "said"),
    [
        ("prompt_tuning", "merged", ["prompt_tuning", "no weights to merge", "tunesmith serve", "--to adapter --runtime peft"]),
        ("prompt_tuning", "adapter", ["vLLM serves LoRA adapters only", "tunesmith serve", "--runtime peft"]),
        ("dora", "adapter", ["vLLM does not serve DoRA", "--to merged", "--runtime peft"]),
        ("full", "adapter", ["full fine-tune", "no adapter", "--to merged"]),
        ("lora", "gguf", ["does not know this model's tokenizer", "--to merged"]),
    ],
)
def test_what_a_target_cannot_take_is_refused_with_what_to_use(cli_home, runs, capsys, method, to, said):
    run = runs[method]
    result, _ = _export(capsys, run, "--to", to)
    assert result.code == 2, result.err
    text = " ".join(result.err.split())
    assert all(s in text for s in said), text
    assert "Traceback" not in result.err
    assert not (cli_home.run_dir(run) / "exports" / to).exists()


def test_bad_flags_are_named(cli_home, runs, capsys):
    run = runs["lora"]
    cases = [
        (("--to", "onnx"), "unknown export target 'onnx'"),
        (("--to", "merged", "--quantize", "q8_0"), "--to merged does not take --quantize q8_0"),
        (("--to", "merged", "--runtime", "peft"), "--to merged does not take --runtime peft"),
        (("--to", "adapter", "--runtime", "ollama"), "does not take --runtime ollama"),
    ]
    for args, said in cases:
        result, _ = _export(capsys, run, *args)
        assert result.code == 2 and said in " ".join(result.err.split()), (args, result.err)


def test_a_dora_adapter_goes_to_peft_when_asked(cli_home, runs, capsys, tmp_path):
    result, folder = _export(capsys, runs["dora"], "--to", "adapter", "--runtime", "peft", "--out", str(tmp_path / "dora"), "--verify-examples", "3")
    assert result.code == 0, result.err
    record = json.loads((folder / "export.json").read_text())
    assert record["runtime"] == "peft" and record["verification"]["passed"] and record["details"]["adapter_type"] == "LORA"
    assert "PeftModel.from_pretrained" in record["usage"]


def test_no_verify_and_an_occupied_out(cli_home, runs, capsys, tmp_path):
    import tunesmith

    out = tmp_path / "plain"
    result = tunesmith.export(runs["full"], to="merged", out=out, verify=False, workspace=cli_home)
    assert result.verification == {"skipped": True, "why": "--no-verify"}
    assert json.loads((out / "export.json").read_text())["verification"]["skipped"] is True
    assert callable(tunesmith.export) and tunesmith.export.__name__ == "tunesmith.export"  # the function and still the package

    refused, _ = _export(capsys, runs["full"], "--to", "merged", "--out", str(out), "--no-verify")
    assert refused.code == 2 and "already holds files" in refused.err and "--force" in refused.err
    replaced, folder = _export(capsys, runs["full"], "--to", "merged", "--out", str(out), "--no-verify", "--force")
    assert replaced.code == 0 and folder == out and "verification: skipped" in replaced.err

    run_dir = cli_home.run_dir(runs["full"])
    for dangerous in (run_dir / "model", run_dir, cli_home.home):  # --force must never remove the run, its weights or the workspace
        refused, _ = _export(capsys, runs["full"], "--to", "merged", "--out", str(dangerous), "--no-verify", "--force")
        assert refused.code == 2 and "could overwrite them" in " ".join(refused.err.split()), refused.err
    assert (run_dir / "model" / "model.safetensors").is_file()


def _tamper_template(folder: Path) -> None:
    template = folder / "chat_template.jinja"
    text = template.read_text()
    assert "'<|im_start|>assistant\n'" in text
    template.write_text(text.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n\n'"), encoding="utf-8")  # one more newline before each answer


def _tamper_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if "embed_tokens" in n)
    weights[name] = weights[name].flip(0).contiguous()  # every token now looks like another
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(("tamper", "why"), [(_tamper_template, "prompt token ids differ"), (_tamper_weights, "answers differ")])
def test_a_broken_export_fails_verification_naming_the_first_difference(cli_home, runs, tmp_path, tamper, why):
    from tunesmith.export.pipeline import export_run, verify_export

    out = tmp_path / "broken"
    export_run(runs["lora"], cli_home, "merged", out, verify=False)
    tamper(out)
    with pytest.raises(ExportMismatch) as raised:
        verify_export(out, cli_home)
    assert raised.value.exit_code == 1
    message = raised.value.render()
    record = json.loads((out / "export.json").read_text())
    first = record["verification"]["first_difference"]
    assert record["verification"]["passed"] is False and first["why"] == why
    assert f"first difference, example {first['example']} ({why})" in message and repr(first["prompt"]) in message
    assert "tunesmith:" in message and "export:" in message and str(out) in message


def test_a_verified_export_verifies_again(cli_home, runs, tmp_path):
    from tunesmith.export.pipeline import export_run, verify_export

    out = tmp_path / "again"
    export_run(runs["lora"], cli_home, "merged", out, verify=False)
    again = verify_export(out, cli_home, verify_examples=2)
    assert again.verification["passed"] and again.verification["examples"] == 2


def test_compare_counts_runaways_and_holds_quantised_exports_to_the_metric():
    from tunesmith.export.base import Answer
    from tunesmith.export.verify import compare_answers

    ours = [Answer([1, 2], "A", True), Answer([1, 3], "B", True), Answer([1, 4], "C B A", False)]
    runaway = [Answer([1, 2], "A", True), Answer([1, 3], "B and on and on", False), Answer([1, 4], "C B A", False)]
    found = compare_answers(ours, runaway, runtime="x", max_new_tokens=8, ids=["a", "b", "c"], conversations=[[{"role": "user", "content": p}] for p in "pqr"])
    assert not found.passed and found.new_runaways == 1 and found.export_runaways == 2 and found.tunesmith_runaways == 1
    assert found.first_difference["example"] == "b" and found.first_difference["why"] == "ran to max_new_tokens"
    assert found.first_difference["prompt"] == "q"
    # an answer that took another path and then ran long is not a lost stop token (the answers line judges it)
    diverged = compare_answers(ours, [ours[0], Answer([1, 3], "D and on", False), ours[2]], runtime="x", max_new_tokens=8)
    assert diverged.new_runaways == 0 and diverged.export_runaways == 2 and diverged.identical_answers == 2

    refs = ["A", "B", "C"]
    close = [Answer([1, 2], "A", True), Answer([1, 3], "B", True), Answer([1, 4], "C", True)]
    quantised = compare_answers(ours, close, runtime="llama.cpp", max_new_tokens=8, references=refs, quantized=True)
    # the task's headline metric (ROUGE-L for free text): 0.83 for tunesmith, 1.0 for the export, past the 2-point line
    assert (
        not quantised.passed
        and quantised.metric["name"] == "rougeL"
        and quantised.failures == [f"rougeL {quantised.metric['export']:.3f} is more than 2 points from tunesmith's {quantised.metric['tunesmith']:.3f}"]
    )
    same = compare_answers(ours, ours, runtime="llama.cpp", max_new_tokens=8, references=refs, quantized=True)
    assert same.passed and same.identical_rate == 1.0


def test_prompt_tuning_through_plain_peft_is_written_but_fails_verification_with_exit_1(cli_home, runs, capsys, tmp_path):
    """PEFT's own generate places virtual tokens where training did not (models/virtual_tokens.py), so the
    adapter, loaded as a plain PEFT program would, does not answer as trained: the check says so."""
    out = tmp_path / "prompt"
    result, _ = _export(capsys, runs["prompt_tuning"], "--to", "adapter", "--runtime", "peft", "--out", str(out), "--verify-examples", "3")
    assert result.code == 1, result.err
    text = " ".join(result.err.split())
    assert "does not behave as run" in text and "first difference, example" in text and "tunesmith serve" in text
    record = json.loads((out / "export.json").read_text())
    assert record["verification"]["passed"] is False and record["verification"]["prompt_ids_identical"] == 3
    assert any("virtual tokens" in note for note in record["notes"])


def test_a_classifier_is_not_exported(cli_home, runs, capsys):
    import shutil

    folder = cli_home.runs / "classifier-copy"
    shutil.copytree(cli_home.run_dir(runs["full"]), folder, ignore=shutil.ignore_patterns("exports"))
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "run_id": folder.name, "task": "classification", "labels": ["a", "b"]}))
    result, _ = _export(capsys, folder.name, "--to", "merged")
    text = " ".join(result.err.split())
    assert result.code == 2 and "is a classifier" in text and "tunesmith classify classifier-copy" in text
    assert not (folder / "exports").exists()


def test_an_export_its_runtime_cannot_load_fails_verification(cli_home, runs, tmp_path):
    from tunesmith.export.pipeline import export_run, verify_export

    out = tmp_path / "no-weights"
    export_run(runs["lora"], cli_home, "merged", out, verify=False)
    (out / "model.safetensors").unlink()
    with pytest.raises(ExportMismatch) as raised:
        verify_export(out, cli_home)
    assert raised.value.exit_code == 1 and "transformers could not answer with the export" in str(raised.value)
    assert json.loads((out / "export.json").read_text())["verification"]["passed"] is False


@pytest.mark.slow
def test_the_embedded_model_exported_merged_stops_and_answers_as_trained(tmp_path):
    """SmolLM2 after a few LoRA steps stops at <|im_end|> on its own: the merged export must too, and one
    whose generation_config lost that stop token is caught running on."""
    from conftest import tickets_home

    from tunesmith.config import RunSpec
    from tunesmith.export.pipeline import export_run, verify_export
    from tunesmith.train.recipe import train

    ws = tickets_home(tmp_path / "home", 60)
    # no general-skills replay: SmolLM2 answering its 150 prompts would add minutes
    spec = {"data": {"dataset": "tickets", "keep_general": False}, "train": {"max_steps": 6, "batch_size": 8, "lr": 2e-3}}
    run = train(RunSpec.model_validate(spec), ws).info.run_id
    result = export_run(run, ws, "merged", verify_examples=4)
    v = result.verification
    assert v["passed"] and v["identical_answers"] == v["prompt_ids_identical"] == 4
    assert v["tunesmith_runaways"] == v["export_runaways"] == 0  # trained to stop, and the export stops where it does
    assert json.loads((result.folder / "generation_config.json").read_text())["eos_token_id"] == [2]

    config = json.loads((result.folder / "generation_config.json").read_text())
    (result.folder / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [0]}))  # <|endoftext|>: the turn's end is lost
    with pytest.raises(ExportMismatch) as raised:
        verify_export(result.folder, ws)
    assert "ran to max_new_tokens past the point where tunesmith's stopped" in str(raised.value)
    assert json.loads((result.folder / "export.json").read_text())["verification"]["new_runaways"] == 4

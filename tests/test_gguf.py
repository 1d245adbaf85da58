"""GGUF and Ollama export: llama.cpp's own converter and quantiser on a tiny Llama, read back with the
gguf package and run in llama.cpp (llama-cpp-python) beside transformers; the Ollama Modelfile's
TEMPLATE rendered (Go's text/template when `go` is installed, and tunesmith's renderer always) and
compared with the tokenizer's chat template."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CHATML
from tunesmith.errors import UserError

QA = [
    ("What colour is the sky?", "Blue."),
    ("Name a fruit.", "An apple."),
    ("What is 2+2?", "4"),
    ("Say hello.", "Hello there!"),
    ("Which planet is red?", "Mars is the red planet."),
    ("How many legs has a cat?", "Four legs."),
]
SYSTEM = "You answer in a few words."

# ---------------------------------------------------------------- a tiny Llama whose tokenizer llama.cpp knows


@pytest.fixture(scope="module")
def smol_tiny(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with the embedded SmolLM2's tokenizer (llama.cpp knows its BPE
    pre-tokenizer as "smollm"; the conftest tiny model's home-made BPE it does not), trained for a few
    seconds to answer QA and end each answer with <|im_end|>, so stopping is learnt, not luck.
    Slow: the embedded model is converted on first use when its cache is cold."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunesmith.config import EMBEDDED_MODEL
    from tunesmith.models.loading import resolve_model_path

    folder = tmp_path_factory.mktemp("smol-tiny")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    tokenizer.chat_template = CHATML  # SmolLM2's own adds a default system prompt: longer sequences, slower training (it is tested below on its own)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    conversations += [[{"role": "system", "content": SYSTEM}, *c] for c in conversations[:2]]
    batch = tokenizer([tokenizer.apply_chat_template(c, tokenize=False) for c in conversations], add_special_tokens=False, padding=True, return_tensors="pt")
    # Loss on the answers (through their <|im_end|>) alone: logits over the 49k vocabulary at every position cost 5x more.
    opening = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    answer = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for row, ids in enumerate(batch["input_ids"].tolist()):
        length = int(batch["attention_mask"][row].sum())
        first = max(i + len(opening) for i in range(length) if ids[i : i + len(opening)] == opening)
        answer[row, first:length] = True
    targets = batch["input_ids"][:, 1:][answer[:, 1:]]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread than on contended cores
    try:
        for _ in range(200):
            hidden = model.model(**batch).last_hidden_state[:, :-1][answer[:, 1:]]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if loss.item() < 0.005:  # every answer learnt, to the token: about 100 steps
                break
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ggufs(smol_tiny, tmp_path_factory) -> dict[str, Path]:
    from tunesmith.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {q: convert_to_gguf(smol_tiny, out / f"tiny-{q}.gguf", q) for q in ("f16", "q8_0", "q4_k_m")}


def prompts_for(tokenizer) -> list[str]:
    from tunesmith.chat_template import render_messages

    plain = [render_messages(tokenizer, [{"role": "user", "content": q}]) for q, _ in QA]
    with_system = [render_messages(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]) for q, _ in QA[:2]]
    return plain + with_system


@pytest.mark.slow
def test_gguf_metadata_carries_template_eos_and_quantisation(smol_tiny, ggufs):
    from transformers import AutoTokenizer

    from tunesmith.export.gguf import gguf_metadata

    tokenizer = AutoTokenizer.from_pretrained(smol_tiny)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected_types = {"f16": "F16", "q8_0": "Q8_0", "q4_k_m": "Q5_0"}  # 64-wide rows are too narrow for Q4_K: llama.cpp falls back to Q5_0
    for quantize, path in ggufs.items():
        meta = gguf_metadata(path)
        assert meta["tokenizer.chat_template"] == tokenizer.chat_template, quantize
        assert meta["tokenizer.ggml.eos_token_id"] == im_end, quantize
        assert meta["tokenizer.ggml.pre"] == "smollm"
        assert meta["general.architecture"] == "llama"
        assert expected_types[quantize] in meta["tensor_types"], (quantize, meta["tensor_types"])
    assert ggufs["q8_0"].stat().st_size < 0.7 * ggufs["f16"].stat().st_size


@pytest.mark.slow
def test_llamacpp_answers_as_transformers_does(smol_tiny, ggufs):
    """Same prompt ids as the HF tokenizer, every answer stops at <|im_end|>, and greedy answers agree
    with transformers': all of them at f16, nearly all at q8_0 and q4_k_m."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.chat_template import end_of_turn_ids
    from tunesmith.export.gguf import llamacpp_answers
    from tunesmith.models.generate import generate_batched

    tokenizer = AutoTokenizer.from_pretrained(smol_tiny)
    model = AutoModelForCausalLM.from_pretrained(smol_tiny)
    prompts = prompts_for(tokenizer)
    eot = end_of_turn_ids(tokenizer)
    reference, _ = generate_batched(model, tokenizer, prompts, eot, max_new_tokens=24, batch_size=8)
    assert reference[: len(QA)] == [a for _, a in QA]  # the tiny model learnt its answers: agreement below means something
    hf_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    agreement = {}
    for quantize, path in ggufs.items():
        answers = llamacpp_answers(path, prompts, ["<|im_end|>"], max_new_tokens=24)
        assert [a.prompt_ids for a in answers] == hf_ids, quantize
        assert all(a.stopped_at_end_of_turn for a in answers), (quantize, [a.text for a in answers])
        agreement[quantize] = sum(a.text == r for a, r in zip(answers, reference)) / len(prompts)
    print(f"greedy agreement with transformers: {json.dumps(agreement)}")
    assert agreement["f16"] == 1.0
    assert agreement["q8_0"] >= 0.875 and agreement["q4_k_m"] >= 0.75


@pytest.mark.slow
def test_end_of_turn_written_when_eos_is_another_token(smol_tiny, tmp_path):
    """A tokenizer whose eos is <|endoftext|> while turns end in <|im_end|>: the GGUF names <|im_end|>
    as its end-of-turn token, and llama.cpp stops there."""
    from tunesmith.export.gguf import convert_to_gguf, gguf_metadata, llamacpp_answers

    folder = tmp_path / "other-eos"
    shutil.copytree(smol_tiny, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    for name in ("config.json", "generation_config.json"):
        (folder / name).write_text(json.dumps({**json.loads((folder / name).read_text()), "eos_token_id": 0}))
    path = convert_to_gguf(folder, tmp_path / "other-eos.gguf", "q8_0")
    meta = gguf_metadata(path)
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.eot_token_id"]) == (0, 2)
    from transformers import AutoTokenizer

    answers = llamacpp_answers(path, prompts_for(AutoTokenizer.from_pretrained(folder))[:2], [2], max_new_tokens=24)
    assert all(a.stopped_at_end_of_turn for a in answers)


@pytest.mark.slow
def test_ollama_folder_from_a_real_gguf(smol_tiny, ggufs, tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.export.ollama import check_template, ollama_create_command, read_modelfile, write_ollama

    tokenizer = AutoTokenizer.from_pretrained(smol_tiny)
    modelfile = write_ollama(ggufs["q8_0"], tmp_path / "ollama", tokenizer, None, ["<|im_end|>"])
    parsed = read_modelfile(modelfile)
    assert parsed["from"] == "./tiny-q8_0.gguf" and (tmp_path / "ollama" / "tiny-q8_0.gguf").stat().st_size == ggufs["q8_0"].stat().st_size
    assert "system" not in parsed  # no system prompt in this run: SmolLM2's template supplies its default one itself
    assert ("stop", "<|im_end|>") in parsed["parameters"]
    conversations = [[{"role": "user", "content": q}] for q, _ in QA] + [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]]
    report = check_template(modelfile, tokenizer, conversations, use_go=False)
    assert report["identical"] == len(conversations), report["first_difference"]
    assert ollama_create_command(tmp_path / "ollama", "tickets-bot") == ["ollama", "create", "tickets-bot", "-f", str(modelfile)]


# ---------------------------------------------------------------- refusals and the converter's install


@pytest.mark.slow
def test_unknown_bpe_tokenizer_is_refused_clearly(tiny_model, tmp_path):
    """The conftest tiny model's home-made BPE: llama.cpp would split text differently, so no GGUF."""
    from tunesmith.export.gguf import convert_to_gguf

    with pytest.raises(UserError) as caught:
        convert_to_gguf(tiny_model, tmp_path / "tiny.gguf")
    assert "does not know this model's tokenizer" in str(caught.value) and "merged" in caught.value.fix
    assert not (tmp_path / "tiny.gguf").exists()


def test_bad_quantisation_and_missing_converter_are_named(tiny_model, tmp_path, monkeypatch):
    from tunesmith.export.gguf import INSTALL_COMMAND, convert_to_gguf

    with pytest.raises(UserError, match="unknown quantisation 'q3'") as caught:
        convert_to_gguf(tiny_model, tmp_path / "x.gguf", "q3")
    assert caught.value.where == "--quantize"
    monkeypatch.setenv("TUNESMITH_MODEL_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="converter") as caught:
        convert_to_gguf(tiny_model, tmp_path / "x.gguf")
    assert INSTALL_COMMAND in caught.value.fix


def _fake_sdist(path: Path, with_converter: bool = True) -> Path:
    files = {"llama_cpp_python-9.9.9/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"", "llama_cpp_python-9.9.9/vendor/llama.cpp/README.md": b"no"}
    if with_converter:
        files["llama_cpp_python-9.9.9/vendor/llama.cpp/convert_hf_to_gguf.py"] = b"print('converter')\n"
        files["llama_cpp_python-9.9.9/vendor/llama.cpp/conversion/__init__.py"] = b""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_install_converter_takes_only_the_converter_from_the_sdist(tmp_path, monkeypatch):
    from tunesmith.export.gguf import converter_dir, install_converter

    monkeypatch.setenv("TUNESMITH_MODEL_CACHE", str(tmp_path / "cache"))
    where = install_converter(_fake_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz"), version="9.9.9")
    assert where == converter_dir("9.9.9")
    assert sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.is_file()) == [
        "conversion/__init__.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]
    with pytest.raises(UserError, match="holds no vendor/llama.cpp/convert_hf_to_gguf.py"):
        install_converter(_fake_sdist(tmp_path / "other.tar.gz", with_converter=False), version="9.9.8")
    assert not converter_dir("9.9.8").exists()


# ---------------------------------------------------------------- the Ollama TEMPLATE, on fast tokenizers

SMOL_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2 style: the system prompt is folded into the first user turn, so a turn's text depends on its position.
FOLDED_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{% set ns = message['content'] %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + (messages[0]['content'] + ' ' if loop.index0 == 1 and messages[0]['role'] == 'system' else '') "
    "+ message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Where is my refund?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Two lines\nhere  "}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'A "quoted" {{ .Content }} {% raw %}'},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "ünïcode ✓ \t tab"},
    ],
]


def tokenizer_with(tiny_model: Path, template: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [CHATML, SMOL_LIKE], ids=["chatml", "default-system"])
@pytest.mark.parametrize("system_prompt", [None, "You route support tickets."], ids=["no-system", "system"])
def test_modelfile_template_renders_as_the_chat_template(tiny_model, tmp_path, template, system_prompt):
    from tunesmith.export.ollama import check_template, read_modelfile, write_ollama

    tokenizer = tokenizer_with(tiny_model, template)
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    modelfile = write_ollama(gguf_file, tmp_path / "ollama", tokenizer, system_prompt, ["<|im_end|>", tokenizer.convert_tokens_to_ids("<|im_end|>")])
    parsed = read_modelfile(modelfile)
    assert parsed["from"] == "./model.gguf" and (tmp_path / "ollama" / "model.gguf").read_bytes() == b"GGUF"
    assert parsed.get("system") == system_prompt
    assert parsed["parameters"] == [("stop", "<|im_end|>"), ("temperature", "0")]  # one stop per distinct token
    renderers = [False] + ([True] if shutil.which("go") else [])
    for use_go in renderers:
        report = check_template(modelfile, tokenizer, CONVERSATIONS, use_go=use_go)
        assert report["identical"] == len(CONVERSATIONS), report["first_difference"]
        assert report["renderer"].startswith("Go text/template") == use_go


def test_go_renderer_agrees_with_go_itself(tiny_model):
    """The Python renderer is what runs where `go` is not installed: it must render exactly what Go does."""
    if not shutil.which("go"):
        pytest.skip("`go` is not installed: apt-get install golang-go to compare with Go's text/template")
    from tunesmith.export.ollama import go_template, render_go_template, render_with_go, template_shape

    template = go_template(template_shape(tokenizer_with(tiny_model, SMOL_LIKE)))
    conversations = [*CONVERSATIONS, [], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "half an answ"}]]
    assert [render_go_template(template, {"Messages": c}) for c in conversations] == render_with_go(template, conversations)


def test_template_not_of_per_role_shape_is_refused(tiny_model, tmp_path):
    from tunesmith.export.ollama import write_ollama

    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="Ollama TEMPLATE") as caught:
        write_ollama(gguf_file, tmp_path / "ollama", tokenizer_with(tiny_model, FOLDED_SYSTEM), None, ["</s>"])
    assert "merged" in caught.value.fix
    assert not (tmp_path / "ollama").exists()
    with pytest.raises(UserError, match="no chat_template"):
        write_ollama(gguf_file, tmp_path / "ollama", tokenizer_with(tiny_model, ""), None, ["<|im_end|>"])


# ---------------------------------------------------------------- `tunesmith export --to gguf|ollama` of a trained run, end to end


@pytest.fixture(scope="module")
def smol_run(smol_tiny, tmp_path_factory):
    """A tunesmith LoRA run over smol_tiny on the QA chats (a tiny learning rate: the base already
    answers them, and the export must answer as the run does), in its own workspace."""
    from tunesmith.config import PrepareSpec, RunSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.train.recipe import train
    from tunesmith.workspace import Workspace

    home = tmp_path_factory.mktemp("gguf-home")
    source = home / "qa.jsonl"
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    chats += [[{"role": "system", "content": SYSTEM}, *c] for c in chats[:2]]
    source.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats), encoding="utf-8")
    workspace = Workspace.from_env(home)
    prepare_dataset(source, workspace, name="qa", seed=0, ratios=(0.5, 0.0, 0.5), options=PrepareSpec(pii="off"))
    spec = RunSpec.model_validate(
        {
            "model": {"name": str(smol_tiny)},
            "data": {"dataset": "qa"},
            "train": {"method": "lora", "max_steps": 1, "batch_size": 2, "lr": 1e-5},
            "eval": {"max_new_tokens": 16},
        }
    )
    return workspace, train(spec, workspace).info.run_id


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
def test_export_to_gguf_answers_as_the_run_through_llamacpp(smol_run, quantize):
    from tunesmith.export.gguf import gguf_metadata
    from tunesmith.export.pipeline import export_run

    workspace, run_id = smol_run
    result = export_run(run_id, workspace, "gguf", quantize=quantize)
    record = json.loads((result.folder / "export.json").read_text())
    gguf_file = result.folder / record["details"]["file"]
    assert gguf_file.is_file() and gguf_file.suffix == ".gguf"
    assert record["format"] == "gguf" and record["runtime"] == "llama.cpp" and record["quantization"] == quantize
    assert gguf_metadata(gguf_file)["tokenizer.chat_template"]
    assert record["details"]["tool_template"] is True  # ChatML drops tools: the GGUF's template renders them as training does (test_tools_export.py)
    check = record["verification"]
    assert check["passed"], check
    assert check["prompt_ids_identical"] == check["examples"] > 0
    assert check["new_runaways"] == 0 and check["export_runaways"] == 0
    if quantize == "f16":
        assert check["identical_rate"] >= 0.98 and not check["quantized"]
    else:  # quantised: held to the task metric, within 2 points
        assert check["quantized"] and check["metric"] is not None
    assert [p.name for p in result.folder.parent.iterdir() if p.name.startswith(".")] == []  # no staging or scratch left behind


@pytest.mark.slow
def test_export_to_ollama_writes_a_modelfile_that_answers_as_the_run(smol_run):
    from tunesmith.export.ollama import read_modelfile
    from tunesmith.export.pipeline import export_run

    workspace, run_id = smol_run
    result = export_run(run_id, workspace, "ollama")
    record = json.loads((result.folder / "export.json").read_text())
    modelfile = read_modelfile(result.folder / "Modelfile")
    assert modelfile["from"] == f"./{record['details']['file']}" and (result.folder / record["details"]["file"]).is_file()
    assert ("stop", "<|im_end|>") in modelfile["parameters"]
    assert record["details"]["ollama_create"][:2] == ["ollama", "create"] and "ollama create" in record["usage"]
    check = record["verification"]
    assert check["passed"] and check["prompt_ids_identical"] == check["examples"] > 0, check
    assert any("Ollama itself" in what for what in check["not_checked"])


@pytest.mark.slow
def test_gguf_export_served_by_llamacpp_answers_as_tunesmith_generate(smol_run):
    """The whole path a user takes: train, export --to gguf, serve the export folder, ask with the openai client."""
    import openai
    from test_serve import running

    import tunesmith
    from tunesmith.export.pipeline import export_run

    workspace, run_id = smol_run
    folder = export_run(run_id, workspace, "gguf", out=workspace.home / "served-gguf").folder
    app = tunesmith.serving_app([str(folder)], engine="auto", workspace=workspace.home)
    with running(app) as url:  # closes the app's engine when done
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        for question, _ in QA[:3]:
            asked = client.chat.completions.create(model=folder.name, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16)
            expected = tunesmith.generate(run_id, question, max_new_tokens=16, workspace=workspace.home)
            assert asked.choices[0].message.content == expected, question
            assert asked.choices[0].finish_reason == "stop"

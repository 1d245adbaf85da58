"""`tunesmith train --accelerate-config FILE`: bad configs are refused before any process starts
(exit 2, naming the file and field), an FSDP config really shards the model (FSDP2 over gloo, two
CPU processes) and a DEEPSPEED config really runs DeepSpeed ZeRO (two CPU processes), each while
training exactly what one process trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clihelp import model_with_a_nan_weight, run_cli, train_one_process
from conftest import events, only_run, step_losses, train_steps
from safetensors.torch import load_file

FSDP = (Path(__file__).parents[1] / "examples" / "accelerate" / "fsdp.yaml").read_text()  # the documented example is what runs
DEEPSPEED = (Path(__file__).parents[1] / "examples" / "accelerate" / "deepspeed.yaml").read_text()


def squash(text: str) -> str:
    return "".join(text.split())  # the terminal wraps long lines, even inside a path


def train_with(capsys, tmp_path: Path, tiny_model: Path, tickets_file: Path, accelerate_yaml: str, *extra: str):
    config = tmp_path / "accelerate.yaml"
    config.write_text(accelerate_yaml)
    return run_cli(capsys, "train", "--model", str(tiny_model), "--data", str(tickets_file), "--accelerate-config", str(config), *extra)


@pytest.mark.parametrize(
    ("accelerate_yaml", "extra", "expected"),
    [
        ("distributed_type: FSDP\nnum_processes: 2: 3\n", (), "accelerate.yaml:2: not valid YAML"),
        ("- FSDP\n", (), "accelerate.yaml: an accelerate config is a YAML mapping"),
        ("distributed_type: TPU\n", (), "accelerate.yaml: distributed_type: distributed_type 'TPU' is not one tunesmith runs"),
        ("distributed_type: MULTI_CPU\nnum_processes: 0\n", (), "accelerate.yaml: num_processes: num_processes must be a whole number of at least 1"),
        ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3}\n", (), "accelerate.yaml: deepspeed_config.zero_stage: ZeRO stage 3 is not supported"),
        ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 0}\n", (), "deepspeed_config.zero_stage: ZeRO stage must be 1 or 2 (got 0)"),
        (
            "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, offload_optimizer_device: cpu}\n",
            (),
            "accelerate.yaml: deepspeed_config.offload_optimizer_device: offloading to 'cpu' is not supported",
        ),
        (
            "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, gradient_accumulation_steps: 4}\n",
            (),
            "deepspeed_config.gradient_accumulation_steps: gradient_accumulation_steps 4: tunesmith accumulates inside its own optimiser step",
        ),
        (
            "distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 2, gradient_clipping: 0.5}\n",
            (),
            "accelerate.yaml: deepspeed_config.gradient_clipping: gradient_clipping 0.5 disagrees with train.max_grad_norm",
        ),
        (
            "distributed_type: DEEPSPEED\nmixed_precision: bf16\ndeepspeed_config: {zero_stage: 2}\n",
            (),
            "accelerate.yaml: mixed_precision: mixed_precision bf16 is not supported with DeepSpeed",
        ),
        ("distributed_type: DEEPSPEED\nuse_cpu: true\ndeepspeed_config: {zero_stage: 2}\n", (), "accelerate.yaml: use_cpu: use_cpu: true makes"),
        (DEEPSPEED, ("--method", "qlora"), "train.method (with DeepSpeed from"),
        ("distributed_type: FSDP\nfsdp_config: {fsdp_version: 1}\n", (), "accelerate.yaml: fsdp_config.fsdp_version: fsdp_version 1 (FSDP1) is not supported"),
        (
            "distributed_type: FSDP\nfsdp_config: {fsdp_version: 2, fsdp_offload_params: true}\n",
            (),
            "fsdp_config.fsdp_offload_params: fsdp_offload_params: True is not supported",
        ),
        (FSDP, ("--method", "qlora"), "train.method (with FSDP from"),
        (FSDP, ("--method", "prompt_tuning"), "prompt_tuning is not supported with FSDP"),
    ],
)
def test_bad_accelerate_configs_exit_2_naming_the_file_and_field(capsys, home, tmp_path, tiny_model, tickets_file, accelerate_yaml, extra, expected):
    result = train_with(capsys, tmp_path, tiny_model, tickets_file, accelerate_yaml, *extra)
    assert result.code == 2 and "Traceback" not in result.err
    assert squash(expected) in squash(result.err) and "fix:" in result.err
    assert not (home / "runs").exists()  # refused before anything ran


def test_a_missing_accelerate_config_says_how_to_write_one(capsys, home, tiny_model, tickets_file, tmp_path):
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", str(tickets_file), "--accelerate-config", str(tmp_path / "nope.yaml"))
    assert result.code == 2 and squash("nope.yaml: cannot read the accelerate config") in squash(result.err)
    assert squash("accelerate config --config_file") in squash(result.err)


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        ('{"zero_optimization": {"stage": 2},\n "optimizer": {"type": "AdamW"}}', "ds.json: optimizer: a DeepSpeed optimizer is not used"),
        ('{"zero_optimization": {"stage": 2},\n "scheduler": {"type": "WarmupLR"}}', "ds.json: scheduler: a DeepSpeed scheduler is not used"),
        ('{"zero_optimization": {"stage": 3}}', "ds.json: zero_optimization.stage: ZeRO stage 3 is not supported"),
        ('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}', "ds.json: zero_optimization.offload_optimizer: offloading"),
        ('{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}', "ds.json: bf16.enabled: bf16 is not supported"),
        ('{"zero_optimization": {"stage": 2}, "train_batch_size": 16}', "ds.json: train_batch_size: train_batch_size 16"),
        ('{"zero_optimization": {"stage": 2}, "gradient_clipping": 0.3}', "ds.json: gradient_clipping: gradient_clipping 0.3 disagrees"),
        ('{"train_batch_size": "auto"}', "ds.json: zero_optimization: zero_optimization is missing"),
        ('{"zero_optimization":\n {"stage": 2,}}', "ds.json:2: not valid JSON"),
        (None, "ds.json: cannot read the DeepSpeed config"),
    ],
)
def test_bad_deepspeed_json_files_exit_2_naming_the_file_and_field(capsys, home, tmp_path, tiny_model, tickets_file, json_text, expected):
    """deepspeed_config_file: the DeepSpeed JSON it names is checked too, before any process starts."""
    ds_json = tmp_path / "ds.json"
    if json_text is not None:
        ds_json.write_text(json_text)
    result = train_with(capsys, tmp_path, tiny_model, tickets_file, f"distributed_type: DEEPSPEED\ndeepspeed_config: {{deepspeed_config_file: {ds_json}}}\n")
    assert result.code == 2 and "Traceback" not in result.err
    assert squash(expected) in squash(result.err) and "fix:" in result.err
    assert not (home / "runs").exists()


def test_deepspeed_settings_in_two_places_are_refused(capsys, home, tmp_path, tiny_model, tickets_file):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    yaml_text = f"distributed_type: DEEPSPEED\ndeepspeed_config: {{deepspeed_config_file: {tmp_path / 'ds.json'}, zero_stage: 1}}\n"
    result = train_with(capsys, tmp_path, tiny_model, tickets_file, yaml_text)
    assert result.code == 2 and squash("deepspeed_config.zero_stage: zero_stage given next to deepspeed_config_file") in squash(result.err)


def test_a_process_started_by_accelerate_with_deepspeed_stage_3_is_refused(capsys, home, monkeypatch, tiny_model, tickets_file):
    """`accelerate launch --config_file ds.yaml -m tunesmith train ...` (by hand, past tunesmith's own
    checks) sets these in every process; each process checks them again."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", str(tickets_file), "--max-steps", "1")
    assert result.code == 2 and squash("ACCELERATE_DEEPSPEED_ZERO_STAGE (deepspeed_config.zero_stage): ZeRO stage 3 is not supported") in squash(result.err)


def test_the_launch_goes_through_accelerate_with_the_users_file(tmp_path):
    from tunesmith.train.parallel.accel import launch_command, read_accelerate_config

    path = tmp_path / "fsdp.yaml"
    path.write_text(FSDP)
    config = read_accelerate_config(path)
    assert (config.mode, config.num_processes) == ("fsdp", 2)
    command = launch_command(config, ["--config", "run.yaml"], nproc=4)
    assert command[1:] == [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(path),
        "--num_processes",
        "4",
        "-m",
        "tunesmith",
        "train",
        "--config",
        "run.yaml",
    ]


def test_cpu_data_parallel_configs_start_every_process(tmp_path):
    """accelerate 1.15 runs a MULTI_CPU config as one process unless mpirun is configured: tunesmith starts them itself."""
    from tunesmith.train.parallel.accel import launch_command, read_accelerate_config

    path = tmp_path / "cpu.yaml"
    path.write_text("distributed_type: MULTI_CPU\nnum_processes: 3\nuse_cpu: true\n")
    config = read_accelerate_config(path)
    assert config.cpu_without_mpirun and config.num_processes == 3  # accel.launch starts them with torch.distributed.run
    path.write_text("distributed_type: MULTI_CPU\nnum_processes: 3\nmpirun_config: {mpirun_hostfile: hosts}\n")
    assert "accelerate.commands.launch" in launch_command(read_accelerate_config(path), ["--config", "run.yaml"])


def tunesmith_procs(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNESMITH_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], env=env, capture_output=True, text=True, timeout=600)


def assert_same_training(one_dir: Path, two_dir: Path, artefact: str = "adapter/adapter_model.safetensors") -> None:
    a, b = step_losses(one_dir), step_losses(two_dir)
    assert len(a) == len(b) >= 3
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x))
    one, two = load_file(str(one_dir / artefact)), load_file(str(two_dir / artefact))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-5, msg=key)


def write_run_config(tmp_path: Path, tiny_model: Path, tickets_file: Path, train: str) -> Path:
    """keep_general off: the step counts are the file's own examples (test_distributed runs with the replay on)."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model}}}\ndata: {{path: {tickets_file}, keep_general: false}}\ntrain: {{{train}}}\n")
    return config


@pytest.fixture()
def run_config(tmp_path, tiny_model, tickets_file) -> Path:
    # 48 training examples / batch 6 = 8 steps
    return write_run_config(tmp_path, tiny_model, tickets_file, "epochs: 1, batch_size: 6, lr: 1.0e-3, packing: true, evals_per_epoch: 2")


def test_fsdp_on_two_cpu_processes_trains_what_one_process_trains(capsys, tmp_path, monkeypatch, run_config):
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", run_config)

    accelerate_yaml = tmp_path / "fsdp.yaml"
    accelerate_yaml.write_text(FSDP)
    done = tunesmith_procs(tmp_path / "two", "train", "--config", str(run_config), "--accelerate-config", str(accelerate_yaml))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run(tmp_path / "two")
    assert done.stdout.split() == [run_dir.name] and done.stderr.count("run folder:") == 1
    assert "model sharded with FSDP2 over 2 processes" in " ".join(done.stderr.split())
    assert_same_training(one_dir, run_dir)
    # The gathered checkpoint is an ordinary adapter: its config is there and it reloads in one process.
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"


@pytest.mark.slow  # three runs, two of them in two FSDP processes: about 2 minutes on 2 cores
def test_fsdp_full_fine_tuning_stops_on_a_budget_and_resumes_exactly(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    """Full fine-tuning shards every weight (tied embeddings too) and the optimiser state: the
    checkpoint gathers both, and the resumed FSDP run equals one uninterrupted process."""
    config = write_run_config(tmp_path, tiny_model, tickets_file, "method: full, epochs: 1, batch_size: 6, lr: 1.0e-4, packing: true, evals_per_epoch: 2")
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", config)

    accelerate_yaml = tmp_path / "fsdp.yaml"
    accelerate_yaml.write_text(FSDP)
    home = tmp_path / "two"
    stopped = tunesmith_procs(home, "train", "--config", str(config), "--accelerate-config", str(accelerate_yaml), "--max-time", "0.001")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    run_dir = only_run(home)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped" and len(step_losses(run_dir)) == 1

    resumed = tunesmith_procs(home, "train", "--resume", run_dir.name, "--accelerate-config", str(accelerate_yaml))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming at step 1 of 8") == 1
    assert_same_training(one_dir, run_dir, "model/model.safetensors")


def test_a_launched_process_may_not_launch_more(capsys, home, monkeypatch, tiny_model, tickets_file):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch / torchrun set in each process
    result = run_cli(capsys, "train", "--model", str(tiny_model), "--data", str(tickets_file), "--nproc", "2")
    assert result.code == 2 and squash("already started by a launcher") in squash(result.err)


def needs_deepspeed() -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install 'tunesmith[deepspeed]'")


def test_deepspeed_zero2_on_two_cpu_processes_trains_what_one_process_trains(capsys, tmp_path, monkeypatch, tiny_model, tickets_file):
    """Two micro-batches per step (grad_accum 2): DeepSpeed is told which backward pass ends the step."""
    needs_deepspeed()
    # 48 training examples / (3 x 2) = 8 steps
    run_config = write_run_config(tmp_path, tiny_model, tickets_file, "epochs: 1, batch_size: 3, grad_accum: 2, lr: 1.0e-3, packing: true, evals_per_epoch: 2")
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", run_config)

    accelerate_yaml = tmp_path / "deepspeed.yaml"
    accelerate_yaml.write_text(DEEPSPEED)
    done = tunesmith_procs(tmp_path / "two", "train", "--config", str(run_config), "--accelerate-config", str(accelerate_yaml))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run(tmp_path / "two")
    assert done.stdout.split() == [run_dir.name] and done.stderr.count("run folder:") == 1  # DeepSpeed's own logging stays off stdout
    assert "DeepSpeed ZeRO-2 over 2 processes" in " ".join(done.stderr.split())
    assert_same_training(one_dir, run_dir)
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"


@pytest.mark.slow  # five runs, four of them in two DeepSpeed processes: minutes on 2 cores
def test_a_deepspeed_run_stopped_on_a_budget_resumes_exactly_with_or_without_deepspeed(capsys, tmp_path, monkeypatch, run_config):
    """The checkpoint gathers ZeRO's partitioned AdamW state into one process's layout: resumed under
    DeepSpeed (state partitioned again) or in one plain process, the run equals one uninterrupted process."""
    needs_deepspeed()
    one_dir = train_one_process(capsys, monkeypatch, tmp_path / "one", run_config)

    accelerate_yaml = tmp_path / "deepspeed.yaml"
    accelerate_yaml.write_text(DEEPSPEED.replace("zero_stage: 2", "zero_stage: 1"))  # stage 1 here, stage 2 above
    for resume_with in (["--accelerate-config", str(accelerate_yaml)], []):
        home = tmp_path / f"two-{len(resume_with)}"
        stopped = tunesmith_procs(home, "train", "--config", str(run_config), "--accelerate-config", str(accelerate_yaml), "--max-time", "0.001")
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert "DeepSpeed ZeRO-1 over 2 processes" in " ".join(stopped.stderr.split())
        run_dir = only_run(home)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped" and len(step_losses(run_dir)) == 1
        resumed = tunesmith_procs(home, "train", "--resume", run_dir.name, *resume_with)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert resumed.stderr.count("resuming at step 1 of 8") == 1
        assert_same_training(one_dir, run_dir)


def test_a_deepspeed_run_whose_loss_turns_nan_fails_with_exit_1(tmp_path, tiny_model, tickets_file):
    needs_deepspeed()
    broken = model_with_a_nan_weight(tiny_model, tmp_path / "broken-model")
    accelerate_yaml = tmp_path / "deepspeed.yaml"
    accelerate_yaml.write_text(DEEPSPEED)
    done = tunesmith_procs(tmp_path / "home", "train", "--model", str(broken), "--data", str(tickets_file), "--accelerate-config", str(accelerate_yaml))
    assert done.returncode == 1
    run_dir = only_run(tmp_path / "home")
    diverged = events(run_dir, "diverged")
    assert len(diverged) == 1 and "the training loss became nan at step 1" in diverged[0]["message"] and not train_steps(run_dir)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"

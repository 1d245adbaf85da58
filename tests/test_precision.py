"""Full fine-tuning of half-precision weights keeps fp32 masters (train/precision.py): updates smaller
than a bf16 weight's rounding step still add up, and a resumed run continues from the masters."""

from __future__ import annotations

import torch

from tunesmith.train.precision import MasterWeightAdamW, make_optimizer

LR, STEPS = 2e-5, 10


def _model(tiny_model, dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)


def _train(model, optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        ids = torch.randint(0, model.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def test_bf16_weights_learn_what_fp32_weights_learn_only_with_masters(tiny_model):
    start = _weights(_model(tiny_model, torch.bfloat16))
    reference = _model(tiny_model, torch.float32)
    _train(reference, torch.optim.AdamW(reference.parameters(), lr=LR), STEPS)
    learned = _weights(reference) - _weights(_model(tiny_model, torch.float32))  # what fp32 learned in 10 steps

    pure = _model(tiny_model, torch.bfloat16)
    optimizer = make_optimizer(list(pure.parameters()), LR, 0.0, masters=False)
    assert type(optimizer) is torch.optim.AdamW
    _train(pure, optimizer, STEPS)
    # pure bf16: nearly every update rounded away (measured: 3% of the weights moved; 98% of what fp32 learned lost)
    assert float((_weights(pure) - start - learned).abs().mean()) > 0.8 * float(learned.abs().mean())

    model = _model(tiny_model, torch.bfloat16)
    optimizer = make_optimizer(list(model.parameters()), LR, 0.0)
    assert isinstance(optimizer, MasterWeightAdamW)
    _train(model, optimizer, STEPS)
    masters = torch.cat([master.detach().flatten() for master in optimizer.masters])
    # the masters learned what fp32 learned (measured: within 2.5% of it), where the bf16 forward allows
    assert float((masters - start - learned).abs().mean()) < 0.1 * float(learned.abs().mean())
    # and the model's weights are the masters rounded to bf16: forward and backward stay in bf16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(_weights(model), masters.to(torch.bfloat16).float())


def test_a_resumed_optimizer_continues_from_the_masters_exactly(tiny_model):
    whole = _model(tiny_model, torch.bfloat16)
    optimizer = make_optimizer(list(whole.parameters()), LR, 0.0)
    _train(whole, optimizer, 6)

    first = _model(tiny_model, torch.bfloat16)
    optimizer = make_optimizer(list(first.parameters()), LR, 0.0)
    _train(first, optimizer, 3)
    saved_weights, saved_state = {k: v.clone() for k, v in first.state_dict().items()}, optimizer.state_dict()
    assert len(saved_state["master_weights"]) == len(list(first.parameters()))

    resumed = _model(tiny_model, torch.bfloat16)  # a fresh process: weights from the checkpoint, then the optimiser
    resumed.load_state_dict(saved_weights)
    optimizer = make_optimizer(list(resumed.parameters()), LR, 0.0)
    optimizer.load_state_dict(saved_state)
    _train(resumed, optimizer, 3, start=3)
    assert torch.equal(_weights(resumed), _weights(whole))


def test_fp32_weights_get_torchs_adamw_unchanged(tiny_model):
    model = _model(tiny_model, torch.float32)
    assert type(make_optimizer(list(model.parameters()), LR, 0.0)) is torch.optim.AdamW


def test_a_bf16_full_run_keeps_masters_in_its_checkpoints_and_resumes_through_the_cli(capsys, home, tiny_model, tickets_file):
    from clihelp import run_cli, tunesmith
    from conftest import only_run, step_losses

    assert run_cli(capsys, "data", "prepare", str(tickets_file), "--out", "tickets", "--pii", "off").code == 0
    config = home.parent / "bf16.yaml"
    config.write_text("model:\n  dtype: bfloat16\n", encoding="utf-8")
    train = ("train", "--config", str(config), "--model", str(tiny_model), "--data", "tickets", "--method", "full")
    killed = tunesmith(*train, "--batch-size", "4", "--max-steps", "4", "--keep-general", "0", "--lr", "2e-5", kill_at="step:3")
    assert killed.returncode == -9
    run_dir = only_run(home)
    assert run_cli(capsys, "train", "--resume", run_dir.name).code == 0
    assert len(step_losses(run_dir)) >= 4
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*/trainer_state.pt"))
    assert checkpoints
    state = torch.load(checkpoints[-1], weights_only=False)
    masters = state["optimizer"]["master_weights"]
    assert len(masters) == len(state["optimizer"]["state"]) and all(m.dtype == torch.float32 for m in masters)

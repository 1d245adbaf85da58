"""Correctness of tunesmith's GPU path, before any timing: run on the GPU machine first.

    python benchmarks/gpu_check.py [--out FILE]

1. Per-example attention on flat rows through torch's variable-length flash kernel equals the
   per-example SDPA loop (outputs and q/k/v gradients, bf16, grouped kv heads), and the kernel
   was used, not the loop.
2. On a small random Llama with LoRA in bf16: the loss and the adapters' gradients of flat rows
   (segments attention, fused LoRA, head at labelled positions) equal those of a padded batch
   with transformers' own SDPA attention, within bf16 rounding.
Relative errors are ||a - b|| / ||b||; the thresholds are bf16's (~1e-2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


class _Attention(torch.nn.Module):
    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal, self.training = heads // kv_heads, True, True


def kernel_check(device: str) -> dict:
    from tunesmith.train.kernels import segments

    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 300, 5, 512, 129], 9, 3, 64
    total = sum(lengths)
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(1, h, total, dim, device=device, dtype=torch.bfloat16, requires_grad=True) for h in (heads, kv_heads, kv_heads))
    module = _Attention(heads, kv_heads)
    grad_out = torch.randn(1, total, heads, dim, device=device, dtype=torch.bfloat16)
    results = {}
    for name, extra in (("varlen", {"max_length_q": max(lengths)}), ("loop", {})):
        segments._varlen_failed.clear() if name == "varlen" else segments._varlen_failed.append("forced loop")
        out, _ = segments.segment_attention(module, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, **extra)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        results[name] = (out.float(), [g.float() for g in grads])
    segments._varlen_failed.clear()
    (out_v, grads_v), (out_l, grads_l) = results["varlen"], results["loop"]
    return {
        "varlen_available": segments._varlen_kernel() is not None,
        "output_rel_err": rel(out_v, out_l),
        "grad_rel_err": [rel(a, b) for a, b in zip(grads_v, grads_l)],
    }


def model_check(device: str) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.chat_template import Encoded, collate
    from tunesmith.train.batching import Batch, batch_tensors
    from tunesmith.train.kernels import segments
    from tunesmith.train.kernels.fused_lora import fuse_lora
    from tunesmith.train.tasks.causal_lm import summed_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    base = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    generator = torch.Generator().manual_seed(1)
    items = []
    for i, n in enumerate([17, 230, 64, 401, 9, 128]):
        ids = torch.randint(1, 1000, (n,), generator=generator).tolist()
        labels = [-100] * (n // 3) + ids[n // 3 :]
        items.append(Encoded(ids, labels, f"ex{i}"))

    def loss_and_grads(tensors_list):
        model.zero_grad()
        total, count = 0.0, 0
        for tensors in tensors_list:
            loss, n = summed_loss(model, {key: value.to(device) for key, value in tensors.items()})
            loss.backward()
            total, count = total + float(loss), count + n
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
        return total / count, grads

    padded_loss, padded_grads = loss_and_grads([collate(items, 0)])
    fused = fuse_lora(model)
    switched = segments.use_segment_attention(model)
    flat = Batch(items, packed=True, flat=True)
    flat_tensors = batch_tensors(flat, 0)
    flat_loss, flat_grads = loss_and_grads(flat_tensors)
    return {
        "fused_lora_layers": fused,
        "segments_attention": switched,
        "flat_passes": len(flat_tensors),
        "varlen_fell_back": list(segments._varlen_failed),
        "padded_loss": padded_loss,
        "flat_loss": flat_loss,
        "loss_rel_diff": abs(flat_loss - padded_loss) / abs(padded_loss),
        "lora_grad_rel_err": rel(flat_grads, padded_grads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__}
    report["kernel"] = kernel_check(args.device)
    report["model"] = model_check(args.device)
    kernel, model = report["kernel"], report["model"]
    report["pass"] = bool(
        kernel["output_rel_err"] < 2e-2
        and max(kernel["grad_rel_err"]) < 2e-2
        and model["loss_rel_diff"] < 2e-2
        and model["lora_grad_rel_err"] < 5e-2
        and not model["varlen_fell_back"]
        and model["segments_attention"]
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

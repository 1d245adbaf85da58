"""LoRA's update added inside one matrix multiply.

PEFT computes `base(x) + B(A(x)) * scaling` as four passes over the layer's output: the
product with B, the scaling, the sum, and a new tensor for the result. On a CPU those passes
over a (tokens x 1536) activation cost more than the rank-16 products themselves. `addmm_`
adds `scaling * A(x) @ B^T` straight into the base layer's output in one BLAS call, and its
backward touches only rank-sized tensors besides the gradient it passes through. Same
numbers, same parameters, same saved adapter: only the forward of plain LoRA linear layers
changes, and anything else (DoRA, several adapters, merged or disabled adapters, a LoRA
bias) takes PEFT's own forward. On a bf16/fp16 base with fp32 adapters the adapters' products
run in the base's dtype, as autocast would run them (PEFT's own forward upcasts the
activations to fp32 and back: extra passes over every layer's output on a GPU).
"""

from __future__ import annotations

import types
from typing import Any

import torch

_MARK = "_tunesmith_fused_forward"
_HALF = (torch.bfloat16, torch.float16)


def _fused_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapters = self.active_adapters
    name = adapters[0] if len(adapters) == 1 else None
    if args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A or name in self.lora_variant:
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    weight_a, weight_b = lora_a.weight, lora_b.weight
    if lora_a.bias is not None or lora_b.bias is not None or weight_a.dtype != weight_b.dtype:
        return type(self).forward(self, x, *args, **kwargs)
    if x.dtype != weight_a.dtype:
        if not (x.dtype in _HALF and weight_a.dtype == torch.float32):
            return type(self).forward(self, x, *args, **kwargs)
        # A bf16/fp16 base with fp32 adapters (PEFT's default): the adapters' products run in the
        # activations' dtype, as under autocast, and their gradients reach the fp32 weights.
        weight_a, weight_b = weight_a.to(x.dtype), weight_b.to(x.dtype)
    # Rows flattened first: the base layer's output is then a tensor of its own, not a view, and
    # adding into it in place costs autograd no copy.
    rows = x.reshape(-1, x.shape[-1])
    result = self.base_layer(rows)
    if result.dtype != x.dtype or result._base is not None:
        return type(self).forward(self, x, *args, **kwargs)
    low_rank = torch.nn.functional.linear(self.lora_dropout[name](rows), weight_a)
    # The base output is not saved for the backward pass, so adding into it in place is safe.
    result.addmm_(low_rank, weight_b.t(), alpha=self.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])


def fuse_lora(model: Any) -> int:
    """Give every plain PEFT LoRA linear layer the fused forward; returns how many got it."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and not getattr(module, _MARK, False):
            module.forward = types.MethodType(_fused_forward, module)
            setattr(module, _MARK, True)
            count += 1
    return count

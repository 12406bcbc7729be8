"""Weight-only int8 experts for the sparse MoE MLPs (`OMNILIVE_QUANTIZE=int8` on Qwen3-Omni).

The experts are nearly all of a MoE model's weights (Qwen3-Omni-30B-A3B: 29 of its 30.5 B
thinker parameters), and a step reads only the few each token chose, so holding them in int8
halves the memory of a bf16 model at little cost in speed. Each expert's rows keep one scale
(per output channel, symmetric: q = round(w / s), s = max |w| / 127), in the layout
`moe.FusedExperts` holds float weights: `gate_up` [E, 2I, H] (gate rows, then up), `down`
[E, H, I]. Attention, routers, shared experts, embeddings and heads stay in the model's dtype.

At compute time a chosen expert runs either torch's weight-only int8 kernel
(`_weight_int8pack_mm`: CPU, few rows, where it reads half the bytes of a bf16 matmul) or a
matmul on its int8 values cast to the activations' dtype with the scale applied to the output:
x @ (q · s)ᵀ = (x @ qᵀ) · s, and |q| <= 127 is exact in bf16, so only the matmul's rounding differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.moe import FusedExperts, FusedSparseMoE, SparseMoE

INT8_MAX = 127.0


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., out, in] float → (int8 values, float32 scales [..., out]): one symmetric scale per row."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=-1).clamp(min=1e-12) / INT8_MAX
    return torch.round(weight / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


class Int8Experts(nn.Module):
    """Every expert's SwiGLU weights as int8 rows with their scales; called as FusedExperts is:
    `experts(index, rows [n, H]) → [n, H]`. Not a checkpoint layout: built from loaded float
    weights by `quantize_experts_int8`."""

    # torch's int8 kernel costs in proportion to its rows (it reuses no weight across them):
    # at 1-2 rows it beats a packed bf16 expert (0.19 / 0.23 against 0.29 ms), up to about 8 the
    # matmul on cast values (1.1 ms, mostly the cast), at 16 rows it costs more (Xeon with AMX,
    # 2 threads: bench/int8_experts.py)
    max_rows_for_int8_kernel = 4

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype):
        """gate_up [E, 2I, H], down [E, H, I]: float weights (FusedExperts' layout)."""
        super().__init__()
        gate_up_q, gate_up_scale = quantize_rows(gate_up)
        down_q, down_scale = quantize_rows(down)
        self.register_buffer("gate_up_int8", gate_up_q)
        self.register_buffer("gate_up_scale", gate_up_scale.to(dtype))
        self.register_buffer("down_int8", down_q)
        self.register_buffer("down_scale", down_scale.to(dtype))

    @property
    def num_experts(self) -> int:
        return self.gate_up_int8.shape[0]

    def _linear(self, rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # the kernel crashes (SIGSEGV) when in_features is not a multiple of 16
        if (rows.device.type == "cpu" and rows.shape[0] <= self.max_rows_for_int8_kernel
                and weight.shape[1] % 16 == 0):
            return torch._weight_int8pack_mm(rows, weight, scale.to(rows.dtype))
        return F.linear(rows, weight.to(rows.dtype)) * scale.to(rows.dtype)

    def forward(self, index: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert `index` on rows [n, H] → [n, H]."""
        gate, up = self._linear(rows, self.gate_up_int8[index], self.gate_up_scale[index]).chunk(2, dim=-1)
        return self._linear(F.silu(gate) * up, self.down_int8[index], self.down_scale[index])

    def extra_repr(self) -> str:
        E, two_i, H = self.gate_up_int8.shape
        return f"experts={E}, hidden={H}, expert_size={two_i // 2}, int8"


def _float_experts(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate_up [E, 2I, H], down [E, H, I]) of a ModuleList of SwiGLUs or an unpacked FusedExperts."""
    if isinstance(experts, FusedExperts):
        if experts.packed is not None:
            raise ValueError("int8 experts are made from float weights: quantise before packing")
        return experts.gate_up_proj.data, experts.down_proj.data
    gate_up = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts])
    down = torch.stack([e.down_proj.weight for e in experts])
    return gate_up, down


def quantize_experts_int8(model: nn.Module) -> int:
    """Replace the experts of every sparse MoE MLP in `model` (SparseMoE, SharedExpertMoE,
    FusedSparseMoE) by Int8Experts, in place, one layer at a time (a layer's float copy is
    freed before the next is made). Returns how many MoE layers were quantised."""
    count = 0
    for module in model.modules():
        if isinstance(module, (SparseMoE, FusedSparseMoE)) and not isinstance(module.experts, Int8Experts):
            gate_up, down = _float_experts(module.experts)
            module.experts = Int8Experts(gate_up, down, dtype=gate_up.dtype)
            count += 1
    return count


def expert_bytes(model: nn.Module) -> int:
    """Bytes held by the experts of `model`'s sparse MoE MLPs (float, or int8 with scales)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (SparseMoE, FusedSparseMoE)):
            tensors = [*module.experts.parameters(), *module.experts.buffers()]
            fused = [getattr(m, "fused_gate_up", None) for m in module.experts.modules()]  # packed.FusedPackedLinear
            total += sum(t.nbytes for t in tensors) + sum(getattr(f, "nbytes", 0) for f in fused)
    return total

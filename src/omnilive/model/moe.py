"""Sparse mixture-of-experts MLPs (Qwen3-MoE, Qwen3-VL-MoE): each token goes to its top-k experts.

The router (`gate`, a bias-free linear) scores every expert; a token takes the k best by
softmax probability (renormalised to sum 1 when `norm_topk_prob`), and its output is the
probability-weighted sum of those experts' SwiGLU outputs. Computed expert by expert over the
tokens routed to it (a loop over the experts a step uses, never over tokens), so a decode
step of a few rows reads only the experts they chose.

`SharedExpertMoE` (the Qwen3-Omni talker) adds a dense shared expert to every token's mix,
scaled by a sigmoid gate of its own.

Two checkpoint layouts:
- `SparseMoE` (Qwen3-MoE): one module per expert, `experts.N.{gate,up,down}_proj.weight`;
- `FusedSparseMoE` (Qwen3-VL-MoE): every expert of a layer in two 3-D tensors,
  `experts.gate_up_proj` [E, 2I, H] (gate rows first, then up) and `experts.down_proj`
  [E, H, I], laid out like linear weights, as transformers 5 holds and saves them. The
  released checkpoints store both transposed ([E, H, 2I], [E, I, H]); `fused_experts_as_ours`
  turns those around at load, as transformers' own conversion does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.layers import SwiGLU
from omnilive.model.packed import can_pack, pack_weight, packed_linear


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [M, E] → (weights [M, k] in the logits' dtype, chosen experts [M, k])."""
    probs = F.softmax(logits, dim=-1, dtype=torch.float)
    weights, chosen = probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), chosen


def mix_experts(tokens: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor,
                expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Σ over each token's chosen experts of weight x expert(token): one call per expert used,
    on all the tokens routed to it, added in ascending expert order as the reference does."""
    out = torch.zeros_like(tokens)
    for index in chosen.unique().tolist():
        token, slot = (chosen == index).nonzero(as_tuple=True)
        out.index_add_(0, token, expert(index, tokens[token]) * weights[token, slot, None])
    return out


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, expert_size: int, num_experts: int, top_k: int, norm_topk_prob: bool):
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, expert_size) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [M, H]
        weights, chosen = route(self.gate(tokens), self.top_k, self.norm_topk_prob)
        experts = self.experts  # one module per expert as loaded; moe_int8.Int8Experts once quantised
        expert = (lambda index, rows: experts[index](rows)) if isinstance(experts, nn.ModuleList) else experts
        return mix_experts(tokens, weights, chosen, expert).view_as(x)


class SharedExpertMoE(SparseMoE):
    """SparseMoE plus `shared_expert` (a SwiGLU every token runs) times sigmoid(`shared_expert_gate`)."""

    def __init__(self, hidden_size: int, expert_size: int, num_experts: int, top_k: int, norm_topk_prob: bool,
                 shared_expert_size: int):
        super().__init__(hidden_size, expert_size, num_experts, top_k, norm_topk_prob)
        self.shared_expert = SwiGLU(hidden_size, shared_expert_size)
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return super().forward(x) + shared


class FusedExperts(nn.Module):
    """Every expert's SwiGLU weights in two tensors (checkpoint keys `gate_up_proj`, `down_proj`).

    `pack` (model/packed.py, after loading) swaps them for each expert's two weights in
    oneDNN's layout where the CPU runs that natively, as the decoder's linears are packed."""

    def __init__(self, hidden_size: int, expert_size: int, num_experts: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * expert_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, expert_size))
        self.packed: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def pack(self) -> int:
        """Pack every expert's weights if this machine runs them packed (the plain tensors are
        dropped: pack last, after loading); returns how many weights were packed."""
        if self.packed is not None or not can_pack(self.gate_up_proj.dtype, self.gate_up_proj.device):
            return 0
        self.packed = [(pack_weight(gate_up), pack_weight(down)) for gate_up, down in zip(self.gate_up_proj,
                                                                                          self.down_proj)]
        del self.gate_up_proj, self.down_proj
        return 2 * len(self.packed)

    def forward(self, index: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert `index` on rows [n, H] → [n, H]."""
        if self.packed is not None:
            gate_up, down = self.packed[index]
            gate, up = packed_linear(rows, gate_up).chunk(2, dim=-1)
            return packed_linear(F.silu(gate) * up, down)
        gate, up = F.linear(rows, self.gate_up_proj[index]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[index])


def fused_experts_as_ours(key: str, tensor: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """A checkpoint's `experts.gate_up_proj` / `experts.down_proj` in our [E, out, in] layout:
    the released checkpoints' [E, in, out] tensors transposed (told apart by which side is the
    hidden size; a tensor whose both sides are it is taken as ours). Other tensors as they are."""
    if key.endswith(("experts.gate_up_proj", "experts.down_proj")) and tensor.ndim == 3:
        hidden_side = 2 if key.endswith("gate_up_proj") else 1  # where ours has the hidden size
        if tensor.shape[hidden_side] != hidden_size and tensor.shape[3 - hidden_side] == hidden_size:
            return tensor.transpose(1, 2).contiguous()
    return tensor


class FusedSparseMoE(nn.Module):
    """Qwen3-VL-MoE's sparse MLP: the router `gate` and the fused experts; top-k weights always
    renormalised."""

    def __init__(self, hidden_size: int, expert_size: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = FusedExperts(hidden_size, expert_size, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        weights, chosen = route(self.gate(tokens), self.top_k, norm_topk_prob=True)
        return mix_experts(tokens, weights, chosen, self.experts).view_as(x)

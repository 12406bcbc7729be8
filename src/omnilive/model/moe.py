"""A sparse mixture-of-experts MLP (Qwen3-MoE): each token goes to its top-k experts.

The router (`gate`, a bias-free linear) scores every expert; a token takes the k best by
softmax probability (renormalised to sum 1 when `norm_topk_prob`), and its output is the
probability-weighted sum of those experts' SwiGLU outputs. Computed expert by expert over the
tokens routed to it (a loop over the experts a step uses, never over tokens), so a decode
step of a few rows reads only the experts they chose. Keys follow the checkpoint:
`gate.weight`, `experts.N.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omnilive.model.layers import SwiGLU


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, expert_size: int, num_experts: int, top_k: int, norm_topk_prob: bool):
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, expert_size) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [M, H]
        probs = F.softmax(self.gate(tokens), dim=-1, dtype=torch.float)  # [M, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [M, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for expert in chosen.unique().tolist():  # ascending, as the reference adds them
            token, slot = (chosen == expert).nonzero(as_tuple=True)
            out.index_add_(0, token, self.experts[expert](tokens[token]) * weights[token, slot, None])
        return out.view_as(x)

"""Sparse MoE block: router (softmax, top-k, optional renormalisation), routed experts, and an
optional shared expert behind a sigmoid gate (Qwen2-MoE). The experts' math lives in kernels/.

Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k.
"""
import torch
import torch.nn.functional as F
from torch import nn

from backend.models.layers import MLP
from backend.models.spec import ModelSpec
from kernels.moe_reference import moe_reference


class Experts(nn.Module):
    """Routed experts' weights; `op` computes them (the torch reference until placement picks a kernel)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))   # [E, 2I, H] gate over up
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate))        # [E, H, I]
        self.op = None

    def release_weights(self) -> None:
        """Drop the float weights once `op` holds its own packed copy (halves memory or better)."""
        self.w13 = nn.Parameter(torch.empty(0), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        if self.op is not None:
            return self.op.forward(x, topk_ids, topk_weights)
        return moe_reference(x, self.w13, self.w2, topk_ids, topk_weights)


class SparseMoE(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k = spec.top_k
        self.norm_topk_prob = spec.norm_topk_prob
        self.gate = nn.Linear(spec.hidden_size, spec.num_experts, bias=False)
        self.experts = Experts(spec.num_experts, spec.hidden_size, spec.moe_intermediate_size)
        if spec.shared_expert_intermediate_size:
            self.shared_expert = MLP(spec.hidden_size, spec.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(spec.hidden_size, 1, bias=False)
        else:
            self.shared_expert = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.gate(x)                                            # [T, E]
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)          # [T, E] fp32
        weights, ids = torch.topk(probs, self.top_k, dim=-1)           # [T, K]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return ids, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.route(x)
        out = self.experts(x, ids, weights)                              # [T, H]
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out

"""Torch reference for the routed-experts MoE block: the spec every fast MoE kernel must match.

Legend: T tokens, H hidden, I intermediate (per expert), E experts, K top-k slots.
Layouts: w13 [E, 2I, H] = gate rows stacked over up rows (vLLM's w1), w2 [E, H, I].
Routing weights are fp32; the result has x's dtype.
"""
import torch
import torch.nn.functional as F


def moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Sort-by-expert loop: out[t] = sum_k w[t,k] * down(silu(gate(x[t])) * up(x[t])) of expert ids[t,k]."""
    T, H = x.shape                                   # x: [T, H]
    I = w2.shape[2]
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)   # [T, H] fp32 accumulator
    flat_ids = topk_ids.reshape(-1)                  # [T*K]
    flat_w = topk_weights.reshape(-1).float()        # [T*K]
    token_of_slot = torch.arange(T, device=x.device).repeat_interleave(topk_ids.shape[1])  # [T*K]
    for e in flat_ids.unique().tolist():
        if e < 0:                                    # -1 = slot masked (expert not on this device)
            continue
        slots = (flat_ids == e).nonzero().squeeze(1)  # [S]
        tokens = token_of_slot[slots]                 # [S]
        h = x[tokens] @ w13[e].t()                    # [S, 2I]
        a = F.silu(h[:, :I]) * h[:, I:]               # [S, I]
        y = a @ w2[e].t()                             # [S, H]
        out.index_add_(0, tokens, y.float() * flat_w[slots, None])
    return out.to(x.dtype)

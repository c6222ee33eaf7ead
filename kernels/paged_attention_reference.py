"""Torch reference for paged-attention decode: gather each sequence's keys/values through its block table,
then softmax attention of its one query token. The spec kernels/triton_paged_attention.py must match.

Legend: B sequences, Hq query heads, Hkv kv heads (Hq = G * Hkv), D head dim, L context length,
        NB cache blocks of S tokens. Layouts: q [B, Hq, D]; k_cache, v_cache [NB, S, Hkv, D];
        block_tables [B, max_blocks] int32 (-1 = unused); context_lens [B] int32. Math in fp32.
"""
import torch


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """-> out [B, Hq, D] in q's dtype; a sequence with context length 0 gets zeros."""
    B, Hq, D = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(B, Hq, D, dtype=torch.float32)
    for b in range(B):
        L = int(context_lens[b])
        if L == 0:
            continue
        blocks = block_tables[b, : (L + S - 1) // S].long()                        # [ceil(L/S)]
        k = k_cache[blocks].reshape(-1, Hkv, D)[:L].float()                        # [L, Hkv, D]
        v = v_cache[blocks].reshape(-1, Hkv, D)[:L].float()                        # [L, Hkv, D]
        k = k.repeat_interleave(Hq // Hkv, dim=1)                                  # [L, Hq, D]
        v = v.repeat_interleave(Hq // Hkv, dim=1)                                  # [L, Hq, D]
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * scale              # [Hq, L]
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v)                 # [Hq, D]
    return out.to(q.dtype)

"""Paged-attention decode in OpenAI Triton: one query token per sequence, keys/values read through block tables.

Legend: B sequences, Hq query heads, Hkv kv heads, G = Hq / Hkv query heads per kv head (GQA), D head dim,
        S tokens per cache block, BLOCK_N context tokens per step, BLOCK_G = G padded to >= 16 (tl.dot's minimum).
Layouts: q [B, Hq, D]; k_cache, v_cache [num_blocks, S, Hkv, D]; block_tables [B, max_blocks] int32
(-1 = unused); context_lens [B] int32. fp16/bf16/fp32 inputs, fp32 scores and accumulator (online softmax),
output [B, Hq, D] in q's dtype. Reference: kernels/paged_attention_reference.py.
One program per (sequence, kv head) computes all G query heads of that kv head, so each key/value
is read once per group. Token positions are mapped to cache slots one by one, so any S works.
"""
import os

import torch
import triton
import triton.language as tl


@triton.jit
def paged_attention_decode_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, scale,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ob, stride_oh,
    G: tl.constexpr, D: tl.constexpr, S: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_FP32: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    context_len = tl.load(context_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)                                            # query heads of this kv head
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < G
    d_mask = offs_d < D
    q_ptrs = q_ptr + seq * stride_qb + (kv_head * G + offs_g)[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)    # [BLOCK_G, BLOCK_D]
    if UPCAST_FP32:
        q = q.to(tl.float32)

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)               # running max
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)                             # running sum of exp
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    for start in range(0, context_len, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)                                   # [BLOCK_N] token positions
        n_mask = pos < context_len
        block = tl.load(block_tables_ptr + seq * stride_bt + pos // S, mask=n_mask, other=0).to(tl.int64)
        slot = pos % S
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + block[:, None] * stride_kb + slot[:, None] * stride_ks + kv_head * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)               # [BLOCK_N, BLOCK_D]
        v = tl.load(v_cache_ptr + block[:, None] * stride_vb + slot[:, None] * stride_vs + kv_head * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)               # [BLOCK_N, BLOCK_D]
        if UPCAST_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale                                    # [BLOCK_G, BLOCK_N] fp32
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])                                        # [BLOCK_G, BLOCK_N]
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)                 # [BLOCK_G, BLOCK_D]
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]                          # empty context -> zeros
    o_ptrs = out_ptr + seq * stride_ob + (kv_head * G + offs_g)[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float, block_n: int = 32) -> torch.Tensor:
    """q [B, Hq, D], k/v_cache [num_blocks, S, Hkv, D], block_tables [B, max_blocks], context_lens [B] -> [B, Hq, D]."""
    check_inputs(q, k_cache, v_cache, block_tables, context_lens)
    B, Hq, D = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)                                                  # [B, Hq, D]
    upcast = os.environ.get("TRITON_INTERPRET") == "1" and q.dtype == torch.bfloat16
    paged_attention_decode_kernel[(B, Hkv)](
        out, q, k_cache, v_cache, block_tables, context_lens, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0), out.stride(0), out.stride(1),
        G=Hq // Hkv, D=D, S=S, BLOCK_G=max(16, triton.next_power_of_2(Hq // Hkv)),
        BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_N=block_n, UPCAST_FP32=upcast)
    return out


def check_inputs(q, k_cache, v_cache, block_tables, context_lens) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"q must be [B, Hq, D] and k_cache, v_cache [num_blocks, S, Hkv, D] alike; got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, Hq, D = q.shape
    if k_cache.shape[3] != D or Hq % k_cache.shape[2]:
        raise ValueError(f"k_cache [.., Hkv, D] = {tuple(k_cache.shape)} must have D={D} and Hkv dividing Hq={Hq}")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or block_tables.dtype != torch.int32:
        raise ValueError(f"block_tables must be int32 [B={B}, max_blocks], got {tuple(block_tables.shape)} {block_tables.dtype}")
    if tuple(context_lens.shape) != (B,) or context_lens.dtype != torch.int32:
        raise ValueError(f"context_lens must be int32 [B={B}], got {tuple(context_lens.shape)} {context_lens.dtype}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q, k_cache and v_cache must be contiguous in the head dim")

"""Paged-attention decode on the CPU (kernels/csrc/paged_attention.cpp), built into the same extension as the
fused MoE kernel. It reads keys/values in place through block tables, where a torch version must first
gather every sequence's context into a padded copy in every layer.

rotary_write_kv applies rotary to a step's new queries and keys and puts the keys and values into their slots
first (vLLM's rotary + reshape_and_cache, kernels/csrc/rotary_kv.cpp).

Legend: B sequences, Hq query heads, Hkv kv heads, D head dim, S tokens per block, N new tokens.
Layouts: q [B, Hq, D]; k_cache, v_cache [num_blocks, S, Hkv, D] fp32 or bf16; block_tables int32
[B, max_blocks]; context_lens int32 [B]. Returns [B, Hq, D] in q's dtype.
Reference: kernels/paged_attention_reference.py.
"""
import torch

from kernels import build
from kernels.cpu_moe import best_variant


def available() -> bool:
    """True when the extension is built (or builds) for this CPU."""
    return best_variant() is not None


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float, variant: str | None = None) -> torch.Tensor:
    """variant: the extension build to run (kernels/cpu_features.py); None = the best this CPU runs."""
    B, Hq, D = q.shape
    _, S, Hkv, Dk = k_cache.shape
    if Dk != D or Hq % Hkv or k_cache.shape != v_cache.shape:
        raise ValueError(f"q {tuple(q.shape)} does not fit k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)}")
    if k_cache.dtype not in (torch.float32, torch.bfloat16) or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k_cache/v_cache must both be float32 or bfloat16, got {k_cache.dtype}/{v_cache.dtype}")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise ValueError("block_tables and context_lens must be int32")
    if block_tables.shape[0] != B or tuple(context_lens.shape) != (B,):
        raise ValueError(f"block_tables {tuple(block_tables.shape)} / context_lens {tuple(context_lens.shape)} "
                         f"do not match B={B}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and block_tables.is_contiguous()):
        raise ValueError("k_cache, v_cache and block_tables must be contiguous")
    q32, lens = q.float().contiguous(), context_lens.contiguous()
    out = torch.empty(B, Hq, D, dtype=torch.float32)
    build.load_variant(variant or best_variant()).paged_attention_decode(
        k_cache.dtype == torch.bfloat16, B, Hq, Hkv, D, S, block_tables.shape[1], float(scale), q32.data_ptr(),
        k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(), lens.data_ptr(), out.data_ptr())
    return out if q.dtype == torch.float32 else out.to(q.dtype)


def rotary_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    variant: str | None = None) -> torch.Tensor:
    """Rotary on q and k, then k_cache[slot_mapping] = k.to(k_cache.dtype) and the same for v, in one call; returns
    the rotated q, contiguous. q fp32 [N, Hq, D], k, v fp32 [N, Hkv, D] whose rows may be strided (views of the
    fused qkv output); cos, sin fp32 [N, 1, D] from backend.models.layers.RotaryEmbedding; caches
    [num_slots, Hkv, D] fp32 or bf16; slot_mapping int64 [N]. Bit for bit apply_rotary, then index_put."""
    N, Hq, D = q.shape
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.float32 or t.dim() != 3 or t.shape[0] != N or t.shape[2] != D or t.stride(2) != 1 \
                or t.stride(1) != D or (name == "v" and t.shape != k.shape):
            raise ValueError(f"{name} must be float32 [N, heads, D] with contiguous heads (q {tuple(q.shape)}); "
                             f"got {tuple(t.shape)} {t.dtype} strides {t.stride()}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dtype != torch.float32 or tuple(t.shape) != (N, 1, D) or not t.is_contiguous() or D % 2:
            raise ValueError(f"{name} must be a contiguous float32 [{N}, 1, {D}] tensor (D even), got "
                             f"{tuple(t.shape)} {t.dtype}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype not in (torch.float32, torch.bfloat16) or c.dtype != k_cache.dtype or not c.is_contiguous() \
                or c.shape != k_cache.shape or c.shape[1:] != k.shape[1:]:
            raise ValueError(f"{name} must be a contiguous float32 or bfloat16 [num_slots, {k.shape[1]}, {D}] "
                             f"tensor like k_cache; got {tuple(c.shape)} {c.dtype}")
    if slot_mapping.dtype != torch.int64 or tuple(slot_mapping.shape) != (N,) or not slot_mapping.is_contiguous():
        raise ValueError(f"slot_mapping must be a contiguous int64 [{N}] tensor, got {tuple(slot_mapping.shape)} "
                         f"{slot_mapping.dtype}")
    q_out = torch.empty(N, Hq, D)
    build.load_variant(variant or best_variant()).rotary_write_kv(
        k_cache.dtype == torch.bfloat16, N, Hq, k.shape[1], D, q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0),
        v.data_ptr(), v.stride(0), cos.data_ptr(), sin.data_ptr(), slot_mapping.data_ptr(), k_cache.shape[0],
        k_cache.data_ptr(), v_cache.data_ptr(), q_out.data_ptr())
    return q_out

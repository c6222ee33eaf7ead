"""Paged-attention decode on the CPU (kernels/csrc/paged_attention.cpp), built into the same extension as the
fused MoE kernel. It reads keys/values in place through block tables, where a torch version must first
gather every sequence's context into a padded copy in every layer.

write_kv_cache puts a step's new keys and values into their slots first (vLLM's reshape_and_cache).

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


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, variant: str | None = None) -> None:
    """k_cache[slot_mapping] = k.to(k_cache.dtype), the same for v, in one call. k, v fp32 [N, Hkv, D] whose rows may
    be strided (views of the fused qkv output); caches [num_slots, Hkv, D] fp32 or bf16; slot_mapping int64 [N]."""
    for name, t in (("k", k), ("v", v)):
        if t.dtype != torch.float32 or t.dim() != 3 or t.shape != k.shape or t.stride(2) != 1 or t.stride(1) != t.shape[2]:
            raise ValueError(f"{name} must be float32 [N, Hkv, D] with contiguous heads, like k {tuple(k.shape)}; "
                             f"got {tuple(t.shape)} {t.dtype} strides {t.stride()}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype not in (torch.float32, torch.bfloat16) or c.dtype != k_cache.dtype or not c.is_contiguous() \
                or c.shape != k_cache.shape or c.shape[1:] != k.shape[1:]:
            raise ValueError(f"{name} must be a contiguous float32 or bfloat16 [num_slots, {k.shape[1]}, {k.shape[2]}] "
                             f"tensor like k_cache; got {tuple(c.shape)} {c.dtype}")
    if slot_mapping.dtype != torch.int64 or tuple(slot_mapping.shape) != (k.shape[0],) or not slot_mapping.is_contiguous():
        raise ValueError(f"slot_mapping must be a contiguous int64 [{k.shape[0]}] tensor, got {tuple(slot_mapping.shape)} "
                         f"{slot_mapping.dtype}")
    build.load_variant(variant or best_variant()).write_kv_cache(
        k_cache.dtype == torch.bfloat16, k.shape[0], k.shape[1] * k.shape[2], k.data_ptr(), k.stride(0), v.data_ptr(),
        v.stride(0), slot_mapping.data_ptr(), k_cache.shape[0], k_cache.data_ptr(), v_cache.data_ptr())

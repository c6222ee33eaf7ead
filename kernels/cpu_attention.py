"""Paged-attention decode on the CPU (kernels/csrc/paged_attention.cpp), built into the same extension as the
fused MoE kernel. It reads keys/values in place through block tables, where a torch version must first
gather every sequence's context into a padded copy in every layer.

Legend: B sequences, Hq query heads, Hkv kv heads, D head dim, S tokens per block.
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

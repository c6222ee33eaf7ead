"""RMSNorm on the CPU extension (kernels/csrc/rms_norm.cpp): one call per norm instead of torch's seven.

Legend: T rows, H features. x fp32 [T, H], weight fp32 [H] -> fp32 [T, H]. Each row is normalised on its own
(batch-invariant); the sum of squares is taken in the kernel's own order, so results match
rms_norm_reference to float rounding, not bit for bit.
"""
import torch

from kernels import build
from kernels.cpu_moe import best_variant


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm in fp32."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, variant: str | None = None) -> torch.Tensor:
    """variant: the extension build to run (kernels/cpu_features.py); None = the best this CPU runs."""
    if x.dim() != 2 or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous float32 [T, H] tensor, got {tuple(x.shape)} {x.dtype}")
    if weight.dtype != torch.float32 or tuple(weight.shape) != (x.shape[1],) or not weight.is_contiguous():
        raise ValueError(f"weight must be a contiguous float32 [{x.shape[1]}] tensor, got {tuple(weight.shape)} {weight.dtype}")
    out = torch.empty_like(x)
    build.load_variant(variant or best_variant()).rms_norm(x.shape[0], x.shape[1], float(eps), x.data_ptr(),
                                                           weight.data_ptr(), out.data_ptr())
    return out

"""CpuLinear: a dense linear layer on the fused CPU extension's tiles (kernels/csrc/cpu_moe.cpp, linear_forward).

The weight [N, K] is packed once like one expert's matrix (kernels/quantize.py) in bf16, int8 or fp32; inputs
and outputs stay fp32. bf16 weights multiply the fp32 inputs as they are (widened in registers: fp32
arithmetic on bf16 weights, so a bf16 checkpoint computes exactly as in fp32 while reading half the bytes);
int8 weights take 16-bit inputs (quantize.fake_quantize_activation).
Why not torch's bf16 matmul: it rounds its inputs and output to bf16 (a bf16 run of the default model no
longer answers its demo question), and oneDNN/MKL pick different kernels (so summation orders) for
different batch sizes, so a request's tokens would depend on its batch. Here every output is one dot
product in a fixed order: batch-invariant. Reference: act(x) @ dequantized(W).T + b, act = identity but for int8.

Legend: T rows (tokens), K input features, N output features, Kp / Np padded to the tiles' units.
"""
import torch
from torch import nn

from kernels import build, quantize
from kernels.cpu_moe import WEIGHT_TYPE, best_variant

DTYPES = ("fp32", "bf16", "int8")
KERNEL_TYPE = {"fp32": WEIGHT_TYPE["fp32"], "bf16": 4, "int8": WEIGHT_TYPE["int8"]}   # 4: bf16 weights x fp32 inputs


class CpuLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: str = "bf16", variant: str | None = None):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a 2-d floating-point [N, K] tensor, got {tuple(weight.shape)} {weight.dtype}")
        self.variant = variant or best_variant()
        if self.variant is None:
            raise RuntimeError("the CPU extension is not built here (python -m kernels.build); use torch's nn.Linear")
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.Np = quantize.round_up(self.out_features, 32)                  # two 16-row blocks per tile
        self.Kp = quantize.round_up(self.in_features, quantize.k_multiple(dtype, 32))
        packed = quantize.pack_matrix(weight.detach(), dtype, self.Np, self.Kp, 32)
        self.register_buffer("w_q", packed["q"], persistent=False)
        self.register_buffer("w_scale", packed.get("scale", torch.empty(0)), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        self._ext = build.load_variant(self.variant)
        self._kernel_type = KERNEL_TYPE[dtype]
        self._read_weight_ptrs()

    def _read_weight_ptrs(self) -> None:
        self._weight_ptrs = (self.w_q.data_ptr(), self.w_scale.data_ptr() if self.w_scale.numel() else 0)

    def _apply(self, fn, recurse=True):   # .to() and the like may replace the buffers: never keep a freed address
        super()._apply(fn, recurse)
        self._read_weight_ptrs()
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: str = "bf16", variant: str | None = None) -> "CpuLinear":
        return cls(linear.weight, linear.bias, dtype, variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] in x's dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end with {self.in_features} features, got {tuple(x.shape)}")
        # Few torch calls on purpose, as in CpuExperts.forward: each runs on a cold cache in every layer.
        x2 = x.reshape(-1, self.in_features).float().contiguous()            # [T, K]
        T = x2.shape[0]
        out = torch.empty(T, self.out_features, dtype=torch.float32)           # [T, N]
        if T:
            self._ext.linear_forward(self._kernel_type, 32, T, self.out_features, self.in_features, self.Np, self.Kp,
                                     x2.data_ptr(), out.data_ptr(), *self._weight_ptrs)
        if self.bias is not None:
            out += self.bias
        if x.dim() == 2 and x.dtype == torch.float32:
            return out
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, variant={self.variant}"

"""Small building blocks shared by every family: RMSNorm, rotary embedding, SwiGLU MLP.

Op order follows the transformers reference so fp32 results match it token for token.
"""
import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import ConfigError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps
        self.kernel = None     # kernels.cpu_norm.rms_norm when placement runs the dense layers on the extension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None and x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous():
            return self.kernel(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(hf_config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling, as transformers computes them."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        exps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (theta ** exps), 1.0
    if rope_type == "dynamic":
        raise ConfigError("rope_parameters.rope_type", "'dynamic' rope scaling is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ConfigError("rope_parameters.rope_type", f"{rope_type!r} is not supported")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    def __init__(self, inv_freq: torch.Tensor, scaling: float):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scaling = scaling

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [N, 1, D] for apply_rotary, once per step; sin's first half negated (see apply_rotary)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]      # [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)                          # [N, D]
        cos, sin = (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)
        half = sin.shape[-1] // 2
        return cos[:, None, :], torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D]; cos, sin [N, 1, D] from RotaryEmbedding. Bit for bit transformers'
    x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1): (-x2) * s == x2 * (-s) exactly, so
    the rotation is x rolled by D/2 times a sin whose first half is negated. 4 torch calls instead of 9,
    in every layer of every step."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


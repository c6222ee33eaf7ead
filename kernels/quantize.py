"""Expert weight quantization and packing into the CPU tile layout (kernels/csrc/moe_tiles.h).

Legend: N output rows, K reduction length, G int4 group size, NB = Np / 16 row blocks.
- int8: symmetric per output channel: q int8 [N, K] in [-127, 127], scale fp32 [N]; w ~ q * scale.
- int4: asymmetric per group of G along K (GGUF Q4_1 style): q uint8 [N, Kp] in [0, 15] (K zero-padded
  to a multiple of G), scale and min bf16 [N, Kp / G]; w ~ q * scale + min, with min = the group's
  minimum and scale = (max - min) / 15. Never a coarser step than symmetric int4 (-amax..amax).
- bf16 / fp32: the weight rounded to that dtype.
Packing pads rows to Np and K to Kp with zeros and reorders into 16-row blocks (see pack_*).
"""
import math

import torch
import torch.nn.functional as F

EXPERT_DTYPES = ("fp32", "bf16", "int8", "int4")


def check_group_size(group_size: int) -> None:
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8 (e.g. 32, 64, 128), got {group_size!r}")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> q int8 [..., N, K], scale fp32 [..., N]."""
    w = w.float()
    amax = w.abs().amax(-1)                                          # [..., N]
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(w / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[..., None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> q uint8 [..., N, Kp] in [0, 15], scale, min bf16 [..., N, Kp / G]; Kp = K rounded up to G."""
    check_group_size(group_size)
    K = w.shape[-1]
    Kp = math.ceil(K / group_size) * group_size
    w = F.pad(w.float(), (0, Kp - K))                                # [..., N, Kp]
    wg = w.unflatten(-1, (Kp // group_size, group_size))             # [..., N, Kp/G, G]
    lo, hi = wg.amin(-1), wg.amax(-1)                                # [..., N, Kp/G]
    wmin = lo.to(torch.bfloat16)
    scale = ((hi - wmin.float()) / 15).to(torch.bfloat16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))   # a constant group: q = 0, w = min
    q = torch.round((wg - wmin.float()[..., None]) / scale.float()[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.flatten(-2), scale, wmin


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, wmin: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """q [..., N, Kp], scale, min [..., N, Kp/G] -> fp32 [..., N, k] (k defaults to Kp)."""
    groups = scale.shape[-1]
    w = q.float().unflatten(-1, (groups, q.shape[-1] // groups)) * scale.float()[..., None] + wmin.float()[..., None]
    return w.flatten(-2)[..., :k]


def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def k_multiple(expert_dtype: str, group_size: int) -> int:
    """Padding unit of the reduction dim: a 32-bit lane holds 1 fp32 or 2 bf16 / s16 products; int4 needs whole groups."""
    return {"fp32": 1, "bf16": 2, "int8": 2, "int4": group_size}[expert_dtype]


def _pad2(t: torch.Tensor, rows: int, cols: int, value=0) -> torch.Tensor:
    return F.pad(t, (0, cols - t.shape[-1], 0, rows - t.shape[-2]), value=value)


def pack_matrix(w: torch.Tensor, expert_dtype: str, rows: int, kp: int, group_size: int) -> dict[str, torch.Tensor]:
    """One expert's matrix w [N, K] -> packed blocks (+ scale, comp) for the tiles, padded to [rows, kp]."""
    NB = rows // 16
    if expert_dtype == "fp32":
        q = _pad2(w.float(), rows, kp).view(NB, 16, kp).permute(0, 2, 1)                     # [NB, Kp, 16]
        return {"q": q.contiguous()}
    if expert_dtype == "bf16":
        q = _pad2(w.to(torch.bfloat16), rows, kp).view(NB, 16, kp // 2, 2).permute(0, 2, 1, 3)  # [NB, Kp/2, 16, 2]
        return {"q": q.contiguous()}
    if expert_dtype == "int8":
        q8, scale = quantize_int8(w)                                                       # [N, K], [N]
        q = _pad2(q8, rows, kp).view(NB, 16, kp // 2, 2).permute(0, 2, 1, 3)               # [NB, Kp/2, 16, 2]
        return {"q": q.contiguous(), "scale": F.pad(scale, (0, rows - scale.shape[0]))}
    if expert_dtype == "int4":
        q4, scale, wmin = quantize_int4(w, group_size)                                     # [N, Kp'], [N, Kp'/G] x2
        u = _pad2(q4, rows, kp).view(NB, 16, kp // 8, 2, 4).permute(0, 2, 3, 1, 4)         # [NB, Kp/8, 2, 16, 4]
        q = u[:, :, 0] | (u[:, :, 1] << 4)                                                 # [NB, Kp/8, 16, 4]
        sm = torch.stack([_pad2(scale, rows, kp // group_size), _pad2(wmin, rows, kp // group_size)])  # [2, rows, Kp/G]
        sm = sm.view(2, NB, 16, -1).permute(1, 3, 0, 2)                                    # [NB, Kp/G, 2, 16]
        return {"q": q.contiguous(), "scale": sm.contiguous()}
    raise ValueError(f"expert_dtype must be one of {EXPERT_DTYPES}, got {expert_dtype!r}")


def dequantize_matrix(w: torch.Tensor, expert_dtype: str, group_size: int) -> torch.Tensor:
    """What the kernels compute with: w [..., N, K] quantized and dequantized to fp32 (the test oracle)."""
    if expert_dtype == "fp32":
        return w.float()
    if expert_dtype == "bf16":
        return w.to(torch.bfloat16).float()
    if expert_dtype == "int8":
        return dequantize_int8(*quantize_int8(w))
    if expert_dtype == "int4":
        return dequantize_int4(*quantize_int4(w, group_size), k=w.shape[-1])
    raise ValueError(f"expert_dtype must be one of {EXPERT_DTYPES}, got {expert_dtype!r}")


def fake_quantize_activation(a: torch.Tensor, expert_dtype: str, group_size: int) -> torch.Tensor:
    """a [R, K] -> what the kernel's GEMMs see, in fp32: bf16-rounded rows for bf16 weights, 16-bit integer rows
    (one scale = amax / 32767 per row) for int8 weights, 8-bit integers (one scale = amax / 127 per group of G)
    for int4 weights."""
    a = a.float()
    if expert_dtype == "fp32":
        return a
    if expert_dtype == "bf16":
        return a.to(torch.bfloat16).float()
    K = a.shape[-1]
    g, qmax = (K, 32767) if expert_dtype == "int8" else (group_size, 127)
    Kp = round_up(K, g)
    ag = F.pad(a, (0, Kp - K)).unflatten(-1, (Kp // g, g))             # [R, Kp/g, g]
    amax = ag.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return (torch.round(ag * (1 / scale)) * scale).flatten(-2)[..., :K]

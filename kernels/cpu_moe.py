"""CpuExperts: the routed experts of one MoE layer, quantized and packed once, run by the fused CPU kernel.

Legend: T tokens, K top-k slots, E experts, H hidden, I intermediate.
Layouts: w13 [E, 2I, H] (gate rows over up rows, vLLM's w1), w2 [E, H, I]; topk_ids int64 [T, K]
(-1 = masked slot), topk_weights fp32 [T, K]. forward returns [T, H] in x's dtype.
The semantics are kernels/moe_reference.py with the weights quantized as kernels/quantize.py says;
activations are rounded on the way in as quantize.fake_quantize_activation says (bf16 for bf16 weights,
16-bit integers per row for int8 weights, 8-bit integers per group for int4 weights).
"""
import functools
import logging
import math

import torch

from kernels import build, quantize
from kernels.cpu_features import isa_summary, supported_variants, variant
from kernels.moe_torch import TorchExperts

log = logging.getLogger(__name__)
WEIGHT_TYPE = {"fp32": 0, "bf16": 1, "int8": 2, "int4": 3}
MAX_TOKENS_PER_CALL = 1024   # bounds the per-call activation buffers (about T * K * I * 6 bytes)


@functools.cache   # once per process: a failed build is not retried for every layer
def best_variant() -> str | None:
    """The fastest variant that is built or builds here; None when none does (no compiler)."""
    for v in supported_variants():
        try:
            build.load_variant(v.name)
            return v.name
        except build.BuildError as e:
            log.warning("%s", e)
    return None


def simd_tiles() -> str | None:
    """'avx512' or 'avx2' when the best variant here runs hand-written SIMD tiles, else None (the portable
    tiles lose to torch's fp32 linears; the SIMD ones beat them, BENCHMARKS.md)."""
    best = best_variant()
    tiles = build.load_variant(best).tiles if best is not None else None
    return tiles if tiles in ("avx512", "avx2") else None


def describe_cpu() -> str:
    """Detected ISA features and the kernel variant chosen for them, for the start-up log."""
    best = best_variant()
    if best is None:
        return f"{isa_summary()}; CPU MoE kernel: torch (no extension)"
    module = build.load_variant(best)
    amx = ", AMX-INT8 for int8/int4 tiles of 16 tokens" if module.amx_enabled() else ""
    if best == "amx" and not module.amx_enabled():
        amx = ", AMX refused by the OS (arch_prctl): VNNI tiles only"
    return f"{isa_summary()}; CPU MoE kernel: fused_cpu/{best} ({module.tiles} tiles{amx})"


class CpuExperts:
    """Packed routed experts for the fused CPU kernel; build with from_weights."""

    def __init__(self, packed: dict[str, torch.Tensor], shape: tuple[int, int, int], geometry: tuple[int, int, int],
                 expert_dtype: str, group_size: int, kernel: str):
        self.packed = packed
        self.num_experts, self.hidden_size, self.intermediate_size = shape
        self.Hk, self.Hn, self.Ia = geometry
        self.expert_dtype = expert_dtype
        self.group_size = group_size
        self.variant = kernel
        self._ext = build.load_variant(kernel)
        suffix = f"(g{group_size})" if expert_dtype == "int4" else ""
        self.kernel_name = f"fused_cpu/{kernel} {expert_dtype}{suffix}"
        self.nbytes = sum(t.numel() * t.element_size() for t in packed.values())
        self._weight_type = WEIGHT_TYPE[expert_dtype]
        self._shape = (self.num_experts, self.hidden_size, self.intermediate_size, self.Hk, self.Hn, self.Ia)
        self._weight_ptrs = (packed["w13_q"].data_ptr(), _ptr(packed, "w13_scale"), packed["w2_q"].data_ptr(),
                             _ptr(packed, "w2_scale"))

    @classmethod
    def from_weights(cls, w13: torch.Tensor, w2: torch.Tensor, expert_dtype: str = "int8", group_size: int = 32,
                     kernel: str = "auto"):
        """Quantize and pack w13 [E, 2I, H], w2 [E, H, I]. kernel: 'auto', a variant name or 'torch'.

        'auto' picks the best variant this CPU runs and falls back to TorchExperts when none builds.
        """
        E, H, I = check_expert_weights(w13, w2)
        if expert_dtype not in quantize.EXPERT_DTYPES:
            raise ValueError(f"expert_dtype must be one of {quantize.EXPERT_DTYPES}, got {expert_dtype!r}")
        if expert_dtype == "int4":
            quantize.check_group_size(group_size)
        if kernel == "auto":
            kernel = best_variant() or "torch"
            if kernel == "torch":
                log.warning("no fused CPU MoE kernel could be built: routed experts run on torch ops (slower)")
        if kernel == "torch":
            return TorchExperts.from_weights(w13, w2, expert_dtype, group_size)
        variant(kernel)   # names the valid variants when unknown
        kmult = quantize.k_multiple(expert_dtype, group_size)
        Hk, Hn = quantize.round_up(H, kmult), quantize.round_up(H, 32)
        Ia = quantize.round_up(I, math.lcm(16, kmult))
        packed = {}
        for e in range(E):   # one expert at a time keeps the float temporaries small
            g = quantize.pack_matrix(w13[e, :I], expert_dtype, Ia, Hk, group_size)
            u = quantize.pack_matrix(w13[e, I:], expert_dtype, Ia, Hk, group_size)
            parts = {f"w13_{k}": torch.cat([g[k], u[k]]) for k in g}             # gate blocks, then up blocks
            parts.update({f"w2_{k}": v for k, v in quantize.pack_matrix(w2[e], expert_dtype, Hn, Ia, group_size).items()})
            for key, t in parts.items():
                if e == 0:
                    packed[key] = torch.empty((E, *t.shape), dtype=t.dtype)
                packed[key][e] = t
        return cls(packed, (E, H, I), (Hk, Hn, Ia), expert_dtype, group_size, kernel)

    def expert_nbytes(self) -> int:
        """Packed bytes of one expert (weights and scales): what one routed expert costs to read."""
        return self.nbytes // self.num_experts

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """x [T, H], topk_ids [T, K] (-1 = masked), topk_weights [T, K] -> [T, H] in x's dtype."""
        # Few torch calls on purpose: each one runs on a cold cache after the layer's weights streamed through it
        # (measured: 15 us per call warm, 200 us cold for the previous 30-call version at T=1).
        check_routing(x, topk_ids, topk_weights, self.hidden_size)
        x32, ids, w = x.float().contiguous(), topk_ids.long().contiguous(), topk_weights.float().contiguous()
        T, K = ids.shape
        out = torch.empty(T, self.hidden_size, dtype=torch.float32)    # [T, H], zero-filled by the kernel
        H, xp, ip, wp, op = self.hidden_size, x32.data_ptr(), ids.data_ptr(), w.data_ptr(), out.data_ptr()
        for t0 in range(0, T, MAX_TOKENS_PER_CALL):                     # pointers into rows t0.. of each
            self._ext.moe_forward(self._weight_type, self.group_size, min(MAX_TOKENS_PER_CALL, T - t0), K,
                                  *self._shape, xp + t0 * H * 4, ip + t0 * K * 8, wp + t0 * K * 4, op + t0 * H * 4,
                                  *self._weight_ptrs)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    __call__ = forward


def _ptr(packed: dict[str, torch.Tensor], key: str) -> int:
    return packed[key].data_ptr() if key in packed else 0


def check_expert_weights(w13: torch.Tensor, w2: torch.Tensor) -> tuple[int, int, int]:
    """Shapes and dtypes of w13 [E, 2I, H] and w2 [E, H, I] -> (E, H, I); raises ValueError naming the field."""
    for name, w in (("w13", w13), ("w2", w2)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3 or not w.is_floating_point():
            raise ValueError(f"{name} must be a 3-d floating-point tensor, got "
                             f"{getattr(w, 'shape', type(w).__name__)} {getattr(w, 'dtype', '')}")
    E, I2, H = w13.shape
    if I2 % 2 or I2 == 0 or H == 0:
        raise ValueError(f"w13 must be [E, 2*I, H] with gate rows over up rows, got {tuple(w13.shape)}")
    if tuple(w2.shape) != (E, H, I2 // 2):
        raise ValueError(f"w2 must be [E, H, I] = {(E, H, I2 // 2)} to match w13 {tuple(w13.shape)}, got {tuple(w2.shape)}")
    return E, H, I2 // 2


def check_routing(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, hidden_size: int) -> None:
    xs, ks = x.shape, topk_ids.shape
    if (len(xs) == 2 and xs[1] == hidden_size and len(ks) == 2 and ks[0] == xs[0] and topk_weights.shape == ks
            and x.is_floating_point() and not topk_ids.is_floating_point() and x.is_cpu):
        return   # the common case in one expression: these calls run on a cold cache in every layer
    if x.dim() != 2 or x.shape[1] != hidden_size or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point [T, {hidden_size}] tensor, got {tuple(x.shape)} {x.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0] or topk_ids.is_floating_point():
        raise ValueError(f"topk_ids must be an integer [T={x.shape[0]}, K] tensor, got {tuple(topk_ids.shape)} {topk_ids.dtype}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(f"topk_weights must have topk_ids' shape {tuple(topk_ids.shape)}, got {tuple(topk_weights.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"x must be on the CPU for CpuExperts, got device {x.device}")

"""build_experts: the routed-experts operator a placement rule asks for, for the engine's MoE layer.

Legend: T tokens, K top-k slots, E experts, H hidden, I intermediate.
Every object returned has forward(x [T, H], topk_ids [T, K], topk_weights [T, K]) -> [T, H] in x's dtype
(on the experts' device: moving activations between devices is the caller's job), and expert_dtype,
kernel_name, nbytes. Triton is imported only when a rule asks for it (the engine never imports it).
"""
import torch

from kernels.cpu_moe import CpuExperts, check_expert_weights
from kernels.moe_reference import moe_reference
from kernels.moe_torch import TorchExperts
from kernels.placement import PlacementError, Rule

DEFAULT_EXPERT_DTYPE = {"fused_cpu": "int8", "torch": "fp32", "triton": "bf16"}
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class DeviceExperts:
    """Unquantized experts on a device, run by the torch reference loop (op: torch on a GPU) or by the
    Triton fused MoE (op: triton)."""

    def __init__(self, w13: torch.Tensor, w2: torch.Tensor, device: str, expert_dtype: str, op: str):
        dtype = FLOAT_DTYPES[expert_dtype]
        self.w13 = w13.to(device=device, dtype=dtype).contiguous()   # [E, 2I, H]
        self.w2 = w2.to(device=device, dtype=dtype).contiguous()     # [E, H, I]
        self.expert_dtype, self.op = expert_dtype, op
        self.kernel_name = f"{'triton/fused_moe' if op == 'triton' else 'torch/moe_reference'} {expert_dtype} on {device}"
        self.nbytes = self.w13.numel() * self.w13.element_size() + self.w2.numel() * self.w2.element_size()

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        xw = x.to(self.w13.dtype).contiguous()                          # [T, H]
        if self.op == "triton":
            from kernels.triton_fused_moe import fused_moe
            return fused_moe(xw, self.w13, self.w2, topk_weights, topk_ids).to(x.dtype)
        return moe_reference(xw, self.w13, self.w2, topk_ids, topk_weights).to(x.dtype)

    __call__ = forward


def build_experts(w13: torch.Tensor, w2: torch.Tensor, rule: Rule, expert_dtype: str | None = None):
    """Routed experts w13 [E, 2I, H], w2 [E, H, I] packed for what `rule` says (expert_dtype overrides the rule's)."""
    check_expert_weights(w13, w2)
    dtype = expert_dtype or rule.expert_dtype or DEFAULT_EXPERT_DTYPE.get(rule.op)
    if rule.op == "fused_cpu":
        return CpuExperts.from_weights(w13, w2, dtype, rule.group_size)
    if rule.op == "torch" and rule.device == "cpu":
        return TorchExperts.from_weights(w13, w2, dtype, rule.group_size)
    if rule.op in ("torch", "triton"):
        if dtype not in FLOAT_DTYPES:
            raise PlacementError(f"rule {rule.name!r}: expert_dtype {dtype!r} is not available for op {rule.op} on "
                                 f"{rule.device}; use one of {tuple(FLOAT_DTYPES)} there, or op fused_cpu on the cpu")
        return DeviceExperts(w13, w2, rule.device, dtype, rule.op)
    raise PlacementError(f"rule {rule.name!r}: unknown op {rule.op!r}")

"""Applies the YAML placement rules (kernels/placement.py) to a loaded model: every routed-experts
module gets the operator its rule names (fused CPU kernel, torch, Triton), packed once at load time.

Only the routed experts move today; other modules run on the CPU with torch, and a rule that asks
for another device for them is reported in the start-up log rather than silently ignored.
"""
import logging
from collections import Counter

from torch import nn

from backend.errors import ConfigError
from backend.models.moe import Experts

log = logging.getLogger("backend")
OTHER_MODULES = ("model.embed_tokens", "model.layers.0.self_attn", "model.layers.0.mlp.gate",
                 "model.layers.0.mlp.shared_expert", "model.norm", "lm_head")


def place_experts(model: nn.Module, placement_path: str | None, expert_dtype: str | None) -> list[str]:
    """Pack every Experts module for its rule; returns one log line per distinct choice."""
    from kernels.cpu_moe import describe_cpu
    from kernels.moe_dispatch import build_experts
    from kernels.placement import Placement, PlacementError

    try:
        placement = Placement.load(placement_path)
        chosen = Counter()
        for name, module in model.named_modules():
            if not isinstance(module, Experts):
                continue
            rule = placement.resolve(name)
            dtype = expert_dtype or rule.expert_dtype
            where = f"rule {rule.name!r} ({rule.op} on {rule.device}" + (
                f", fallback from {rule.fallback_from})" if rule.fallback_from else ")")
            if dtype == "fp32" and rule.device == "cpu":
                module.op = None                       # the torch reference: exact in fp32
                chosen[f"{where} -> torch/moe_reference fp32"] += 1
                continue
            module.op = build_experts(module.w13.data, module.w2.data, rule, expert_dtype=expert_dtype)
            module.release_weights()                   # the packed copy is all we need from now on
            chosen[f"{where} -> {module.op.kernel_name}, {module.op.nbytes / 2**20:.1f} MiB"] += 1
        notes = [f"{n} expert layers: {what}" for what, n in chosen.items()]
        for name in OTHER_MODULES:
            rule = placement.resolve(name)
            if rule.device != "cpu":
                notes.append(f"{name}: rule {rule.name!r} asks for {rule.device}; this engine runs it on the cpu")
    except PlacementError as e:
        raise ConfigError("placement", str(e)) from None
    if chosen:
        notes.insert(0, f"CPU: {describe_cpu()}")
    return notes

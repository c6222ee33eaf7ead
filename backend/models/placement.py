"""Applies the YAML placement rules (kernels/placement.py) to a loaded model: every routed-experts
module gets the operator its rule names (fused CPU kernel, torch, Triton), packed once at load time;
and the dense linear layers get their weight dtype (`dense_dtype`).

Only the routed experts move today; other modules run on the CPU with torch, and a rule that asks
for another device for them is reported in the start-up log rather than silently ignored.
"""
import contextlib
import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from backend.errors import ConfigError
from backend.models.attention import Attention
from backend.models.layers import RMSNorm
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


# Routers stay in fp32: their logits pick the experts, and they are tiny.
ROUTERS = ("mlp.gate", "shared_expert_gate")


def place_dense(model: nn.Module, dense_dtype: str, activation_dtype: torch.dtype, checkpoint_dtype) -> tuple[str, bool]:
    """Run the dense linears (attention, dense and shared-expert MLPs, lm_head) on the CPU extension with bf16
    weights and fp32 arithmetic when asked, or with 'auto' when the checkpoint is bf16 (so nothing is rounded
    that the checkpoint did not round) and the extension runs AVX-512 or AVX2 tiles here (the portable ones
    would be slower than torch's fp32); routers then run there too, in fp32. Every row's result is then independent
    of its batch (kernels/cpu_linear.py). Returns the log line and whether the linears hold bf16 weights."""
    from kernels.cpu_linear import CpuLinear
    from kernels.cpu_moe import best_variant, simd_tiles
    from kernels.cpu_norm import rms_norm

    if activation_dtype != torch.float32:
        return f"dense linears: {activation_dtype} like the activations (dtype)", activation_dtype == torch.bfloat16
    checkpoint = str(checkpoint_dtype).removeprefix("torch.")
    tiles = simd_tiles()
    if dense_dtype == "auto":
        use_bf16 = checkpoint == "bfloat16" and tiles is not None
        why = f"auto: checkpoint {checkpoint}, {tiles or 'portable'} tiles for this CPU"
    else:
        use_bf16, why = dense_dtype == "bf16", f"dense_dtype={dense_dtype}"
        if use_bf16 and best_variant() is None:
            raise ConfigError("dense_dtype", "bf16 needs the CPU extension (python -m kernels.build); use fp32 or auto")
    if not use_bf16:
        return f"dense linears: fp32, torch ({why})", False
    converted = norms = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.fuse_qkv(lambda weight, bias: CpuLinear(weight, bias, "bf16"))
            converted += 1
        elif isinstance(module, RMSNorm) and module.weight.dtype == torch.float32:
            module.kernel = rms_norm
            norms += 1
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                setattr(module, child_name, CpuLinear.from_linear(child, "fp32" if full.endswith(ROUTERS) else "bf16"))
                converted += 1
    return (f"dense linears and RMSNorms: bf16 weights x fp32 activations (fp32 arithmetic), CPU extension, batch-invariant "
            f"({converted} layers incl. fp32 routers, q/k/v stacked per attention; {norms} RMSNorms; {why})"), True


@dataclass(frozen=True)
class ComputeThreads:
    """Threads of the engine's forward pass: torch's intra-op threads and the CPU extension's task pool
    (0 = as many as torch). Applied around each forward pass only, so that other torch users in the process
    (a benchmark's transformers baseline, a second engine) keep their own setting."""
    torch_threads: int
    pool_threads: int

    @contextlib.contextmanager
    def apply(self):
        from kernels import build

        before = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        try:
            with build.num_threads(self.pool_threads):
                yield
        finally:
            torch.set_num_threads(before)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def all_cores_but_one() -> int:
    """The one rule for leaving a core to the rest of the process (server frontend, clients)."""
    return max(1, usable_cores() - 1)


def place_threads(model: nn.Module, threads: int | None) -> tuple[ComputeThreads, str]:
    """The engine's CPU threads go to the CPU extension's task pool when it runs every routed-experts and
    linear layer; torch's own ops (norms, rotary, routing, sampling: small) then run on one thread, because an
    OpenMP team spinning between ops next to the pool's threads slowed decode steps (BENCHMARKS.md, engine
    threads). Otherwise torch runs the heavy layers and gets the threads. Unset threads: every core this
    process may use for the pool (it never waits for a thread the OS has not run), all but one for torch
    (an OpenMP team stalls whenever one of its threads is preempted by the server's other threads or the
    clients). Returns them and the log line."""
    from kernels.cpu_linear import CpuLinear
    from kernels.cpu_moe import CpuExperts

    modules = list(model.modules())
    experts_on_pool = all(isinstance(m.op, CpuExperts) for m in modules if isinstance(m, Experts))
    linears_on_pool = not any(isinstance(m, nn.Linear) for m in modules) and any(isinstance(m, CpuLinear) for m in modules)
    if experts_on_pool and linears_on_pool:
        threads = threads or usable_cores()
        return ComputeThreads(1, threads), (f"threads: {threads} in the CPU extension's task pool (every expert and "
                                            f"linear layer), 1 for torch ops")
    threads = threads or all_cores_but_one()
    return ComputeThreads(threads, 0), f"threads: {threads} torch intra-op threads (layers run by torch); the CPU extension uses as many"

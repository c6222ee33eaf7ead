"""Benchmark of one routed-experts MoE layer: CpuExperts vs torch, against this machine's memory bandwidth.

    python -m kernels.bench [--quick] [--json out.json] [--md out.md] [--threads N]

For layer shapes of Qwen3-30B-A3B, Mixtral-8x7B and DeepSeek-V3 at T tokens: ms per layer, bytes of expert
weights read (distinct routed experts x packed bytes per expert), effective GB/s, its ratio to the memory
bandwidth measured in the same run (torch sum over 512 MiB), and the speedup over torch fp32 and bf16
(the faster of F.grouped_mm and a per-expert loop), all measured in the same run. Routing is random and
changes every call, so the weights come from DRAM, not from the last call's cache.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.cpu_moe import CpuExperts, describe_cpu
from kernels.moe_reference import moe_reference
from kernels.moe_torch import TorchExperts

# resident: experts kept in memory (the machine has 24 GiB, shared); routing picks top-k of those.
MODELS = {
    "qwen3-30b-a3b": dict(H=2048, I=768, E=128, K=8, resident=128),
    "mixtral-8x7b": dict(H=4096, I=14336, E=8, K=2, resident=2),
    "deepseek-v3": dict(H=7168, I=2048, E=256, K=8, resident=8),
}
TOKENS, QUICK_TOKENS = (1, 8, 64, 512), (1, 64)
OURS = ("int4", "int8", "bf16")
GROUP_SIZE = 64


def timed(fn, calls, min_reps: int, budget_s: float) -> list[float]:
    """Seconds per call (one warm-up), cycling through calls until min_reps and budget_s are both reached."""
    fn(*calls[0])
    times, i = [], 0
    while len(times) < min_reps or (sum(times) < budget_s and len(times) < 200):
        args = calls[i % len(calls)]
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def memory_bandwidth() -> float:
    """Read bandwidth in bytes/s: torch sum over 512 MiB with the current threads (median of 7)."""
    buf = torch.ones(128 * 2 ** 20, dtype=torch.float32)
    times = timed(lambda: buf.sum(), [()], 7, 0.0)
    return buf.numel() * 4 / statistics.median(times)


def make_routings(T: int, resident: int, K: int, n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    calls = []
    for _ in range(n):
        ids = torch.rand(T, resident, generator=g).topk(K, dim=1).indices    # [T, K] distinct per token
        calls.append((torch.randn(T, 1, generator=g) * torch.ones(T, 1), ids, torch.rand(T, K, generator=g)))
    return calls


def grouped_mm_moe(w13: torch.Tensor, w2: torch.Tensor):
    """Torch baseline: sort slots by expert, two F.grouped_mm calls, un-permute with index_add."""
    E, I = w13.shape[0], w2.shape[2]
    w13t, w2t = w13.transpose(1, 2), w2.transpose(1, 2)                       # [E, H, 2I], [E, I, H]

    def forward(x, ids, weights):
        flat = ids.reshape(-1)                                                # [T*K]
        order = flat.argsort(stable=True)
        tokens = order // ids.shape[1]                                        # [T*K] token of each sorted slot
        offs = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)   # [E]
        h = F.grouped_mm(x.to(w13.dtype)[tokens], w13t, offs=offs)            # [T*K, 2I]
        a = F.silu(h[:, :I]) * h[:, I:]                                       # [T*K, I]
        y = F.grouped_mm(a, w2t, offs=offs).float() * weights.reshape(-1)[order, None]
        return torch.zeros(x.shape[0], w2.shape[1]).index_add_(0, tokens, y)
    return forward


def loop_moe(w13: torch.Tensor, w2: torch.Tensor):
    return lambda x, ids, weights: moe_reference(x.to(w13.dtype), w13, w2, ids, weights)


def fill_x(calls, H):
    return [(torch.randn(x.shape[0], H), ids, w) for x, ids, w in calls]


def run(models: list[str], tokens: tuple, quick: bool) -> dict:
    bandwidth = memory_bandwidth()
    rows = []
    for name in models:
        m = MODELS[name]
        H, I, R, K = m["H"], m["I"], m["resident"], m["K"]
        torch.manual_seed(0)
        w13 = (torch.randn(R, 2 * I, H, dtype=torch.bfloat16) * 0.02)         # [R, 2I, H] master weights
        w2 = (torch.randn(R, H, I, dtype=torch.bfloat16) * 0.02)              # [R, H, I]
        calls = {T: fill_x(make_routings(T, R, K, 16 if T < 64 else 4, T), H) for T in tokens}
        experts_read = {T: statistics.mean(c[1].unique().numel() for c in calls[T]) for T in tokens}

        def measure(impl: str, fn, expert_nbytes: int, T: int):
            big = T * K * I * H > 2e9                                         # MACs per GEMM, roughly
            times = timed(fn, calls[T], 2 if big else 5, 0.5 if quick else (2.0 if big else 1.5))
            med = statistics.median(times)
            q = statistics.quantiles(times, n=10) if len(times) >= 3 else [min(times)] * 9
            nbytes = experts_read[T] * expert_nbytes
            rows.append({"model": name, "T": T, "impl": impl, "ms": med * 1e3, "noise": (q[-1] - q[0]) / 2 / med,
                         "reps": len(times), "experts_read": experts_read[T], "bytes": nbytes,
                         "gbps": nbytes / med / 1e9, "of_bandwidth": nbytes / med / bandwidth})
            print(f"  {name} T={T:<4} {impl:<28} {med * 1e3:9.3f} ms", file=sys.stderr, flush=True)

        for dtype in OURS:
            experts = CpuExperts.from_weights(w13, w2, dtype, group_size=GROUP_SIZE)
            for T in tokens:
                measure(experts.kernel_name, experts.forward, experts.expert_nbytes(), T)
            del experts
        for dtype in ("int8", "int4"):   # the torch-only route: per-expert torch int ops
            experts = TorchExperts.from_weights(w13, w2, dtype, GROUP_SIZE)
            for T in tokens:
                if T <= 64:
                    measure(experts.kernel_name, experts.forward, experts.expert_nbytes(), T)
            del experts
        for label, wd in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = w13.to(wd), w2.to(wd)
            per_expert = (a[0].numel() + b[0].numel()) * a.element_size()
            for T in tokens:
                measure(f"torch/grouped_mm {label}", grouped_mm_moe(a, b), per_expert, T)
                measure(f"torch/expert loop {label}", loop_moe(a, b), per_expert, T)
            del a, b
        for T in tokens:   # speedups over the faster torch baseline of each dtype
            here = [r for r in rows if r["model"] == name and r["T"] == T]
            for label in ("fp32", "bf16"):
                base = min((r for r in here if r["impl"].startswith("torch/") and r["impl"].endswith(label)),
                           key=lambda r: r["ms"])
                for r in here:
                    r[f"vs_torch_{label}"] = base["ms"] / r["ms"]
                    r[f"torch_{label}_baseline"] = base["impl"]
    return {"bandwidth_gbps": bandwidth / 1e9, "rows": rows}


def format_table(result: dict, meta: dict) -> str:
    out = [f"CPU MoE layer benchmark ({meta['date']}); command: `{meta['command']}`",
           f"CPU: {meta['cpu']}; torch threads: {meta['threads']}; load average before/after: "
           f"{meta['load_before']} / {meta['load_after']}",
           f"measured memory bandwidth (torch sum, 512 MiB): {result['bandwidth_gbps']:.1f} GB/s",
           "ms = median per layer call; noise = half the p10-p90 spread; x BW = effective GB/s / measured bandwidth;",
           "vs torch = speedup over the faster of torch F.grouped_mm / per-expert loop in that dtype, same run.", ""]
    for name, m in MODELS.items():
        rows = [r for r in result["rows"] if r["model"] == name]
        if not rows:
            continue
        out += [f"### {name}: H {m['H']}, I {m['I']}, {m['E']} experts, top-{m['K']}; "
                f"{m['resident']} experts resident{' (routing picks among these)' if m['resident'] < m['E'] else ''}",
                "| T | impl | ms/layer | noise | experts read | MB read | GB/s | x BW | vs torch fp32 | vs torch bf16 |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['T']} | {r['impl']} | {r['ms']:.3f} | {r['noise']:.0%} | {r['experts_read']:.1f} | "
                       f"{r['bytes'] / 1e6:.1f} | {r['gbps']:.1f} | {r['of_bandwidth']:.2f} | "
                       f"{r['vs_torch_fp32']:.2f}x | {r['vs_torch_bf16']:.2f}x |")
        out.append("")
    out += targets(result)
    return "\n".join(out)


def targets(result: dict) -> list[str]:
    def ours(model, T, dtype):
        return next((r for r in result["rows"] if r["model"] == model and r["T"] == T
                     and r["impl"].startswith("fused_cpu/") and r["impl"].split()[1].startswith(dtype)), None)
    lines = ["### Targets (2-core VM)"]
    for model in MODELS:
        checks = [("int4 T=1 x BW >= 0.7", ours(model, 1, "int4"), "of_bandwidth", 0.7),
                  ("int4 T=1 vs torch fp32 >= 5x", ours(model, 1, "int4"), "vs_torch_fp32", 5),
                  ("int8 T=1 vs torch fp32 >= 3x", ours(model, 1, "int8"), "vs_torch_fp32", 3),
                  ("int4 T=64 vs torch bf16 >= 2x", ours(model, 64, "int4"), "vs_torch_bf16", 2),
                  ("int8 T=64 vs torch bf16 >= 2x", ours(model, 64, "int8"), "vs_torch_bf16", 2)]
        parts = [f"{label}: {r[key]:.2f} {'PASS' if r[key] >= goal else 'MISS'}" for label, r, key, goal in checks if r]
        if parts:
            lines.append(f"- {model}: " + "; ".join(parts))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"T in {QUICK_TOKENS} and short timing budgets")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"command": "python -m kernels.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": describe_cpu(), "machine": platform.node(),
            "threads": torch.get_num_threads(), "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    result = run(args.models.split(","), QUICK_TOKENS if args.quick else TOKENS, args.quick)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = format_table(result, meta)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

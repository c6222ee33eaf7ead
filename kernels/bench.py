"""Benchmark of one routed-experts MoE layer: CpuExperts vs torch, against this machine's memory bandwidth.

    python -m kernels.bench [--quick] [--json out.json] [--md out.md] [--threads N] [--variants avx2,generic]
                            [--prefetch-baseline]

For layer shapes of Qwen3-30B-A3B, Mixtral-8x7B and DeepSeek-V3 at T tokens: ms per layer, bytes of expert
weights read (distinct routed experts x packed bytes per expert), effective GB/s, its ratio to the memory
bandwidth (torch sum over 512 MiB), and the speedup over torch fp32 and bf16 (the faster of F.grouped_mm
and a per-expert loop). The machine is shared, so every implementation and the bandwidth probe run in
round-robin: each round runs each once, so they share the same time window (and the same contention),
and all ratios come from that window. Routing is random and changes every call, and the last-level cache
is flushed before every call: the weights come from DRAM, as in a model with many layers.

libgomp keeps torch's OpenMP workers spinning for about 8 ms after each parallel region (its default
GOMP_SPINCOUNT); on a 2-core machine that spinner takes the core the next fused row's second thread needs
(measured: 1.2x slower int4 T=1 Qwen rows). The engine never runs in its shadow, since torch ops get one
thread there while the extension's pool runs. So the bench shortens the spin (torch's back-to-back regions
inside one call stay hot) and flushes on one thread, and every row starts with no spinner left.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "10000")   # before torch loads libgomp (see above)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.cpu_moe import CpuExperts, describe_cpu  # noqa: E402
from kernels.moe_reference import moe_reference  # noqa: E402
from kernels.moe_torch import TorchExperts  # noqa: E402

# resident: experts kept in memory (24 GiB, shared machine: every format of one model at once stays
# under ~4 GB); routing picks top-k among those.
MODELS = {
    "qwen3-30b-a3b": dict(H=2048, I=768, E=128, K=8, resident=64),
    "mixtral-8x7b": dict(H=4096, I=14336, E=8, K=2, resident=2),
    "deepseek-v3": dict(H=7168, I=2048, E=256, K=8, resident=8),
}
TOKENS, QUICK_TOKENS = (1, 8, 64, 512), (1, 64)
OURS = ("int4", "int8", "bf16")
GROUP_SIZE = 32


class Probe:
    """Memory read bandwidth: torch sum over 512 MiB with the current threads (it also flushes the caches)."""
    def __init__(self, mib: int = 512):
        self.buf = torch.ones(mib * 2 ** 18, dtype=torch.float32)
        self.nbytes = self.buf.numel() * 4

    def __call__(self, *_):
        self.buf.sum()


class Flush:
    """Evicts the last-level cache before a timed call: a sum over 64 MiB on one thread, so that it starts no
    OpenMP spinner of its own and outlasts the (shortened) spin of the row before."""
    def __init__(self, mib: int = 64):
        self.buf = torch.ones(mib * 2 ** 18, dtype=torch.float32)

    def __call__(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.buf.sum()
        finally:
            torch.set_num_threads(threads)


def round_robin(impls: dict, calls: list, flush, min_rounds: int, budget_s: float) -> dict[str, list[float]]:
    """Seconds per call of every impl, one call each per round (rotating order), caches flushed before each."""
    times = {name: [] for name in impls}
    for fn in impls.values():   # warm-up
        fn(*calls[0])
    spent, r = 0.0, 0
    while r < min_rounds or (spent < budget_s and r < 100):
        names = list(impls)
        names = names[r % len(names):] + names[:r % len(names)]
        for i, name in enumerate(names):
            args = calls[(r * len(names) + i) % len(calls)]
            flush()
            t0 = time.perf_counter()
            impls[name](*args)
            dt = time.perf_counter() - t0
            times[name].append(dt)
            spent += dt
        r += 1
    return times


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


# In-run baselines: the same fused call with one feature of the extension switched off.
BASELINES = {"VNNI only": "set_amx", "no next-block prefetch": "set_next_block_prefetch"}


def is_baseline(impl: str) -> bool:
    return impl.endswith(tuple(BASELINES))


def switched_off(experts: CpuExperts, setter: str):
    switch = getattr(experts._ext, setter)

    def forward(*args):
        switch(False)
        try:
            return experts.forward(*args)
        finally:
            switch(True)
    return forward


def fill_x(calls, H):
    return [(torch.randn(x.shape[0], H), ids, w) for x, ids, w in calls]


def run(models: list[str], tokens: tuple, quick: bool, probe_mib: int = 512, flush_mib: int = 64,
        variants: tuple[str, ...] = ("auto",), prefetch_baseline: bool = False) -> dict:
    probe = Probe(probe_mib)
    flush = Flush(flush_mib)                                                 # 64 MiB > last-level cache
    rows = []
    for name in models:
        m = MODELS[name]
        H, I, R, K = m["H"], m["I"], m["resident"], m["K"]
        torch.manual_seed(0)
        w13 = (torch.randn(R, 2 * I, H, dtype=torch.bfloat16) * 0.02)         # [R, 2I, H] master weights
        w2 = (torch.randn(R, H, I, dtype=torch.bfloat16) * 0.02)              # [R, H, I]
        impls, nbytes = {}, {}                                                # name -> forward, bytes per expert
        for dtype in OURS:
            for kernel in variants:
                ex = CpuExperts.from_weights(w13, w2, dtype, group_size=GROUP_SIZE, kernel=kernel)
                impls[ex.kernel_name], nbytes[ex.kernel_name] = ex.forward, ex.expert_nbytes()
                off = (["VNNI only"] if dtype in ("int8", "int4") and ex._ext.amx_enabled() else []) + \
                      (["no next-block prefetch"] if prefetch_baseline and ex.kernel_name.startswith("fused_cpu/") else [])
                for label in off:
                    impls[f"{ex.kernel_name} {label}"] = switched_off(ex, BASELINES[label])
                    nbytes[f"{ex.kernel_name} {label}"] = ex.expert_nbytes()
        for dtype in ("int8", "int4"):   # the torch-only route: per-expert torch int ops
            ex = TorchExperts.from_weights(w13, w2, dtype, GROUP_SIZE)
            impls[ex.kernel_name], nbytes[ex.kernel_name] = ex.forward, ex.expert_nbytes()
        for label, wd in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = w13.to(wd), w2.to(wd)
            for kind, make in (("grouped_mm", grouped_mm_moe), ("expert loop", loop_moe)):
                impls[f"torch/{kind} {label}"] = make(a, b)
                nbytes[f"torch/{kind} {label}"] = (a[0].numel() + b[0].numel()) * a.element_size()
        for T in tokens:
            calls = fill_x(make_routings(T, R, K, 16, T), H)
            experts_read = statistics.mean(c[1].unique().numel() for c in calls)
            here = {k: v for k, v in impls.items() if T <= 64 or not k.startswith("torch/_weight")}   # too slow
            times = round_robin({**here, "bandwidth probe": probe}, calls, flush, 2 if quick else 3,
                                0.5 if quick else 3.0)
            bandwidth = probe.nbytes / statistics.median(times.pop("bandwidth probe"))
            print(f"  {name} T={T}: bandwidth {bandwidth / 1e9:.1f} GB/s, {len(times[next(iter(times))])} rounds",
                  file=sys.stderr, flush=True)
            batch = []
            for impl, ts in times.items():
                med = statistics.median(ts)
                lo, hi = (min(ts), max(ts)) if len(ts) < 5 else (lambda q: (q[0], q[-1]))(statistics.quantiles(ts, n=10))
                b = experts_read * nbytes[impl]
                batch.append({"model": name, "T": T, "impl": impl, "ms": med * 1e3, "noise": (hi - lo) / 2 / med,
                              "reps": len(ts), "experts_read": experts_read, "bytes": b, "gbps": b / med / 1e9,
                              "bandwidth_gbps": bandwidth / 1e9, "of_bandwidth": b / med / bandwidth})
            for label in ("fp32", "bf16"):   # speedups over the faster torch baseline of each dtype
                base = min((r for r in batch if r["impl"].startswith("torch/") and r["impl"].endswith(label)),
                           key=lambda r: r["ms"])
                for r in batch:
                    r[f"vs_torch_{label}"] = base["ms"] / r["ms"]
                    r[f"torch_{label}_baseline"] = base["impl"]
            rows += batch
        del impls
    return {"rows": rows}


def format_table(result: dict, meta: dict) -> str:
    out = [f"CPU MoE layer benchmark ({meta['date']}); command: `{meta['command']}`",
           f"CPU: {meta['cpu']}; fused rows: {meta['variants']}; torch threads: {meta['threads']}; load average before/after: "
           f"{meta['load_before']} / {meta['load_after']}",
           "ms = median per layer call (cold cache); noise = half the p10-p90 spread (max-min under 5 rounds);",
           "BW = memory bandwidth (torch sum over 512 MiB) measured in the same rounds; x BW = effective GB/s / BW;",
           "vs torch = speedup over the faster of torch F.grouped_mm / per-expert loop in that dtype, same rounds.", ""]
    for name, m in MODELS.items():
        rows = [r for r in result["rows"] if r["model"] == name]
        if not rows:
            continue
        out += [f"### {name}: H {m['H']}, I {m['I']}, {m['E']} experts, top-{m['K']}; "
                f"{m['resident']} experts resident{' (routing picks among these)' if m['resident'] < m['E'] else ''}",
                "| T | impl | ms/layer | noise | experts read | MB read | GB/s | BW GB/s | x BW | vs torch fp32 | vs torch bf16 |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['T']} | {r['impl']} | {r['ms']:.3f} | {r['noise']:.0%} | {r['experts_read']:.1f} | "
                       f"{r['bytes'] / 1e6:.1f} | {r['gbps']:.1f} | {r['bandwidth_gbps']:.1f} | {r['of_bandwidth']:.2f} | "
                       f"{r['vs_torch_fp32']:.2f}x | {r['vs_torch_bf16']:.2f}x |")
        out.append("")
    out += targets(result)
    return "\n".join(out)


def targets(result: dict) -> list[str]:
    def ours(model, T, dtype):
        return next((r for r in result["rows"] if r["model"] == model and r["T"] == T
                     and r["impl"].startswith("fused_cpu/") and r["impl"].split()[1].startswith(dtype)
                     and not is_baseline(r["impl"])), None)
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
    p.add_argument("--variants", default="auto",
                   help="comma-separated kernel variants to run (default: auto = the best this CPU runs); the targets "
                        "read the first. To stand in for an AVX2-only CPU, run '--variants avx2,generic' with "
                        "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 so torch does too")
    p.add_argument("--prefetch-baseline", action="store_true",
                   help="also run each fused row with the tiles' next-block prefetch off, in the same rounds")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"command": "python -m kernels.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": describe_cpu(), "machine": platform.node(),
            "threads": torch.get_num_threads(), "variants": args.variants, "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    result = run(args.models.split(","), QUICK_TOKENS if args.quick else TOKENS, args.quick,
                 variants=tuple(args.variants.split(",")), prefetch_baseline=args.prefetch_baseline)
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

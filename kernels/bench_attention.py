"""Paged attention on the CPU: the extension's kernel against torch, measured in the same run.

    python -m kernels.bench_attention [--repeats 50]

At the default model's attention shape (9 query heads, 3 kv heads, head dim 64, bf16 cache in 16-token blocks
scattered over the cache), two kinds of rows, as the engine runs them:
  - decode: B requests with L tokens of context, one query each. Torch path: gather each context, then SDPA.
  - prefill: one prompt of P tokens (its K/V already in the cache). Torch path: SDPA, causal, on the prompt's K/V.
And what each layer runs before them on a step of N new tokens: rotary on q and k and the K/V cache write
(kernels.cpu_attention.rotary_write_kv; torch path: backend.models.attention.torch_rotary_write_kv).
The kernel runs on the extension's task pool with every core (the engine's setting); torch on one thread (the
engine's setting for torch ops beside the pool) and on every core. Prints ms per call (median) and the ratios.
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from backend.models.attention import torch_rotary_write_kv
from backend.models.layers import RotaryEmbedding
from kernels import build
from kernels.cpu_attention import paged_attention_decode, rotary_write_kv

HQ, HKV, D, S = 9, 3, 64, 16
SCALE = D ** -0.5


def paged_case(rows: int, contexts: list[int], g: torch.Generator):
    """A cache holding one request of max(contexts) tokens in scattered blocks; `rows` queries over its prefixes."""
    L = max(contexts)
    blocks = -(-L // S)
    k_cache = torch.randn(blocks + 7, S, HKV, D, generator=g).bfloat16()
    v_cache = torch.randn(blocks + 7, S, HKV, D, generator=g).bfloat16()
    table = torch.randperm(blocks + 7, generator=g)[:blocks].int()
    tables = table.expand(rows, -1).contiguous()
    q = torch.randn(rows, HQ, D, generator=g)
    return q, k_cache, v_cache, tables, torch.tensor(contexts, dtype=torch.int32)


def torch_decode(q, k_cache, v_cache, tables, lens):
    L = int(lens.max())
    pos = torch.arange(L)
    slots = tables.long()[:, pos // S] * S + pos % S                                     # [B, L]
    k = k_cache.view(-1, HKV, D)[slots].transpose(1, 2).float()                         # [B, Hkv, L, D]
    v = v_cache.view(-1, HKV, D)[slots].transpose(1, 2).float()
    mask = (pos[None, :] < lens[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=SCALE, enable_gqa=True)


def torch_prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=SCALE, enable_gqa=True)


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def run_case(kind: str, size: str, kernel_fn, torch_fn, repeats: int, cores: int) -> dict:
    kernel = timed(kernel_fn, repeats)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = timed(torch_fn, repeats)
        torch.set_num_threads(cores)
        many = timed(torch_fn, repeats)
    finally:
        torch.set_num_threads(before)
    return dict(kind=kind, size=size, kernel_ms=kernel, torch1_ms=one, torch_all_ms=many)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench_attention", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode(), build.num_threads(cores):
        for B, L in ((1, 150), (16, 150), (16, 1000)):
            case = paged_case(B, [L] * B, g)
            rows.append(run_case("decode", f"B={B}, L={L}", lambda c=case: paged_attention_decode(*c, SCALE),
                                 lambda c=case: torch_decode(*c),
                                 args.repeats, cores))
        for P in (16, 60, 240, 1000):
            case = paged_case(P, list(range(1, P + 1)), g)
            q, k_cache, v_cache, tables, _ = case
            pos = torch.arange(P)
            slots = tables[0].long()[pos // S] * S + pos % S
            k = k_cache.view(-1, HKV, D)[slots].float().transpose(0, 1).unsqueeze(0)      # [1, Hkv, P, D]
            v = v_cache.view(-1, HKV, D)[slots].float().transpose(0, 1).unsqueeze(0)
            qp = q.transpose(0, 1).unsqueeze(0)                                         # [1, Hq, P, D]
            rows.append(run_case("prefill", f"P={P}", lambda c=case: paged_attention_decode(*c, SCALE),
                                 lambda a=(qp, k, v): torch_prefill(*a), max(5, args.repeats // (1 + P // 100)), cores))
        for N in (1, 16):                     # what each layer runs before attention, on a step of N new tokens
            qkv = torch.randn(N, (HQ + 2 * HKV) * D, generator=g)
            q, k, v = (t.view(N, -1, D) for t in qkv.split((HQ * D, HKV * D, HKV * D), dim=-1))
            cos, sin = RotaryEmbedding(1.0 / (10000 ** (torch.arange(0, D, 2).float() / D)), 1.0)(torch.arange(N) + 100, q.dtype)
            k_cache = torch.zeros(4096, HKV, D, dtype=torch.bfloat16)
            v_cache, slots = torch.zeros_like(k_cache), torch.randperm(4096, generator=g)[:N]
            rows.append(run_case("rotary + cache write", f"N={N}",
                                 lambda a=(q, k, v, cos, sin, k_cache, v_cache, slots): rotary_write_kv(*a),
                                 lambda a=(q, k, v, cos, sin, k_cache, v_cache, slots): torch_rotary_write_kv(*a),
                                 args.repeats * 20, cores))
    print(f"paged attention, {HQ} query / {HKV} kv heads, head dim {D}, bf16 cache in {S}-token blocks; kernel on "
          f"{cores} pool threads; ms per call (median)")
    print(f"| rows | size | paged kernel | torch, 1 thread | torch, {cores} threads | vs torch 1 thread | "
          f"vs torch {cores} threads |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['size']} | {r['kernel_ms']:.4f} | {r['torch1_ms']:.4f} | {r['torch_all_ms']:.4f} | "
              f"{r['torch1_ms'] / r['kernel_ms']:.2f}x | {r['torch_all_ms'] / r['kernel_ms']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

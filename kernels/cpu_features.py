"""Run-time CPU feature detection and the kernel variants this CPU can run.

Each variant of the fused CPU MoE extension is the same source built with different ISA flags
(never -march=native, so a build never depends on the machine that made it). The best variant the
CPU supports is chosen at run time; the portable ones run everywhere.
"""
import functools
import os
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Variant:
    name: str
    requires: tuple[str, ...]   # /proc/cpuinfo flag names
    cflags: tuple[str, ...]


# Best first. "amx" adds AMX-INT8 tiles for the int8/int4 experts (moe_tiles_amx.h) to the avx512_bf16 variant.
VARIANTS = (
    Variant("amx", ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "fma", "f16c", "amx_tile", "amx_int8"),
            ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-mfma", "-mf16c", "-mamx-tile",
             "-mamx-int8")),
    Variant("avx512_bf16", ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "fma", "f16c"),
            ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-mfma", "-mf16c")),
    Variant("avx512_vnni", ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma", "f16c"),
            ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-mf16c")),
    Variant("avx2", ("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
    Variant("generic", (), ()),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                  "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """ISA flags of this CPU from /proc/cpuinfo (empty where there is none, e.g. non-Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# Caps the variants used here, like oneDNN's ONEDNN_MAX_CPU_ISA: e.g. avx2 to run (and test) as on a CPU without
# AVX-512, or to keep one build across a fleet of mixed CPUs.
MAX_ISA_ENV = "CPU_MOE_MAX_ISA"


def max_isa() -> str:
    """$CPU_MOE_MAX_ISA, or '' when unset."""
    return os.environ.get(MAX_ISA_ENV, "").strip()


def supported_variants(flags: frozenset[str] | None = None) -> list[Variant]:
    """Variants this CPU can run, best first, none above $CPU_MOE_MAX_ISA; x86 ones only on x86-64."""
    flags = cpu_flags() if flags is None else flags
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    runnable = [v for v in VARIANTS if not v.requires or (x86 and set(v.requires) <= flags)]
    cap = max_isa()
    if cap:
        if cap not in VARIANT_NAMES:
            raise ValueError(f"{MAX_ISA_ENV}={cap!r} is not a kernel variant: use one of {VARIANT_NAMES} or unset it")
        runnable = [v for v in runnable if VARIANT_NAMES.index(v.name) >= VARIANT_NAMES.index(cap)]
    return runnable


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ValueError(f"kernel variant {name!r} unknown: use one of {VARIANT_NAMES}")


def isa_summary() -> str:
    """e.g. 'x86_64 avx2 avx512f ... (torch: AVX512)'."""
    present = [f for f in REPORTED_FLAGS if f in cpu_flags()]
    cap = f", {MAX_ISA_ENV}={max_isa()}" if max_isa() else ""
    return (f"{platform.machine()} {' '.join(present) or 'no SIMD flags found'} "
            f"(torch: {torch.backends.cpu.get_cpu_capability()}{cap})")

"""Build and load the fused CPU MoE extension, one variant per ISA level (see cpu_features.py).

Builds are cached in <repo>/.cache/torch_extensions/<variant>-<hash>, the hash covering the C++
sources, the flags and the torch version: a cached build loads without a compiler, and any change
makes a fresh one. `python -m kernels.build` prebuilds the variants this CPU runs (scripts/setup.sh).
"""
import argparse
import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

from kernels.cpu_features import Variant, isa_summary, supported_variants, variant

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("argmax.cpp", "cpu_moe.cpp", "paged_attention.cpp", "rms_norm.cpp", "rotary_kv.cpp", "task_pool.cpp")
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "torch_extensions"
COMMON_CFLAGS = ("-O3", "-fopenmp", "-std=c++17", "-DNDEBUG")


class BuildError(RuntimeError):
    pass


def _build_key(v: Variant) -> str:
    h = hashlib.sha256()
    for f in sorted(CSRC.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    h.update(" ".join(COMMON_CFLAGS + v.cflags).encode() + torch.__version__.encode() + sys.version.encode())
    return h.hexdigest()[:12]


def _module_name(v: Variant) -> str:
    return f"cpu_moe_{v.name}"


def build_dir(v: Variant) -> Path:
    return CACHE / f"{_module_name(v)}-{_build_key(v)}"


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_threads = 0          # task-pool threads of every loaded variant; 0 = follow torch.get_num_threads()
_loaded = {}


def set_num_threads(threads: int) -> None:
    """Threads (the caller included) of the extension's task pool (csrc/task_pool.h), in every variant loaded
    now or later; 0 = torch's intra-op thread count."""
    global _threads
    _threads = threads
    for module in _loaded.values():
        module.set_num_threads(threads)


@contextlib.contextmanager
def num_threads(threads: int):
    """set_num_threads for a with-block, restoring the setting before it."""
    before = _threads
    set_num_threads(threads)
    try:
        yield
    finally:
        set_num_threads(before)


def load_variant(name: str, build: bool = True):
    """The extension module of one variant; builds it once (about 10-20 s) when not cached."""
    if name not in _loaded:
        _loaded[name] = _load(name, build)
        _loaded[name].set_num_threads(_threads)
    return _loaded[name]


def _load(name: str, build: bool):
    v = variant(name)
    out = build_dir(v)
    so = out / f"{_module_name(v)}.so"
    if so.exists():
        return _import(_module_name(v), so)
    if not build:
        raise BuildError(f"CPU MoE kernel {v.name} is not built: run `python -m kernels.build`")
    for stale in CACHE.glob(f"{_module_name(v)}-*"):   # builds of older sources
        if stale != out:
            shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    _put_ninja_on_path()
    print(f"building CPU MoE kernel {v.name} into {out} (one-time, ~20s) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=_module_name(v), sources=[str(CSRC / s) for s in SOURCES], build_directory=str(out),
            extra_cflags=list(COMMON_CFLAGS + v.cflags), extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:   # a missing compiler or ninja surfaces here
        shutil.rmtree(out, ignore_errors=True)
        raise BuildError(f"building CPU MoE kernel {v.name} failed ({type(e).__name__}: {str(e)[-2000:]}); "
                         "install g++ and ninja (pip install ninja) or use operator 'torch'") from e
    print(f"built CPU MoE kernel {v.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return module


def _put_ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the pip package's copy is not there when the venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", help="variant(s) to build (default: all this CPU runs)")
    p.add_argument("--best-only", action="store_true", help="build only the best variant for this CPU")
    args = p.parse_args(argv)
    names = args.variant or [v.name for v in supported_variants()]
    if args.best_only:
        names = names[:1]
    print(f"CPU: {isa_summary()}", file=sys.stderr)
    for name in names:
        mod = load_variant(name)
        print(f"{name}: ok ({mod.tiles} tiles) in {build_dir(variant(name))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MAX_JOBS", "2")
    sys.exit(main())

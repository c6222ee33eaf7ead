"""The extension's task pool (csrc/task_pool.h): correct results from concurrent callers, in a forked
child, and whatever the thread count; the thread setting follows torch's unless set."""
import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from kernels import build
from kernels.cpu_features import supported_variants
from kernels.cpu_linear import CpuLinear

pytestmark = pytest.mark.skipif(not supported_variants(), reason="no kernel variant for this CPU")


def make_linear():
    g = torch.Generator().manual_seed(3)
    return CpuLinear(torch.randn(1024, 256, generator=g), None, "bf16"), torch.randn(9, 256, generator=g)


STRESS = """
from kernels import build
from kernels.cpu_moe import best_variant
ext = build.load_variant(best_variant())
for threads in (2, 3):
    ext.set_num_threads(threads)
    assert ext.check_task_pool(200_000) == 0, "a task ran other than once"
"""


def test_back_to_back_jobs_of_different_sizes_run_every_task_once():
    # Jobs of a few microseconds each, so helpers often arrive while the next job is being published (a
    # helper that read a new job's size with the old job's state once claimed a task too many and hung
    # the engine). In a subprocess, so a hang fails the test instead of stopping the suite.
    done = subprocess.run([sys.executable, "-c", STRESS], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]


def test_concurrent_callers_get_their_own_results():
    lin, x = make_linear()
    inputs = [x * (i + 1) for i in range(4)]
    with build.num_threads(2):
        expected = [lin(xi) for xi in inputs]
        results, errors = {}, []

        def call(i):
            try:
                for _ in range(20):
                    results[i] = lin(inputs[i])
                    assert torch.equal(results[i], expected[i])
            except Exception as e:   # reported below: an assert in a thread would not fail the test
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert all(torch.equal(results[i], expected[i]) for i in range(4))


def _child(lin, x, expected):
    with build.num_threads(2):
        ok = torch.equal(lin(x), expected)
    raise SystemExit(0 if ok else 3)


def test_a_forked_child_runs_the_kernels():
    # The child reuses the parent's layer: packing in a forked child would run torch's OpenMP ops, which
    # hang after a fork whatever this pool does.
    lin, x = make_linear()
    with build.num_threads(2):
        expected = lin(x)                      # the parent's helper threads exist now
    child = multiprocessing.get_context("fork").Process(target=_child, args=(lin, x, expected))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0


def test_thread_setting():
    ext = build.load_variant(supported_variants()[0].name)
    with build.num_threads(0):
        assert ext.get_num_threads() == torch.get_num_threads()
    with build.num_threads(3):
        assert ext.get_num_threads() == 3

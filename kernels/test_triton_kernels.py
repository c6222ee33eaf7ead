"""Runs kernels/triton_interpreter_cases.py in a fresh pytest process with TRITON_INTERPRET=1.

Triton decides between compiling and interpreting when a kernel is decorated, i.e. when its module is
first imported; a separate process makes sure that happens with the interpreter on, whatever this
process imported before, and keeps the variable out of everyone else's tests.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_triton_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                           str(ROOT / "kernels" / "triton_interpreter_cases.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]

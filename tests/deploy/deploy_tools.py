"""Validator lookup and process helpers for the deploy tests.

The validators are installed by scripts/install_deploy_tools.sh (called from scripts/setup.sh).
A missing tool FAILS its tests; only DEPLOY_TOOLS=0 in the environment turns that into a skip.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".tools" / "bin"
CHART = REPO / "deploy" / "helm" / "triton-moe-backend"
KUBE_VERSION = "1.30.0"


def find_tool(name: str, candidates: tuple[Path, ...] = (), search_path: bool = True) -> str:
    """Path of a validator: .tools/bin, then `candidates`, then PATH."""
    for candidate in (TOOLS_BIN / name, *candidates):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) if search_path else None
    if found:
        return found
    missing(name)


def missing(name: str):
    message = f"{name} not found in {TOOLS_BIN}, the virtualenv or PATH: run scripts/setup.sh " \
              f"(it runs scripts/install_deploy_tools.sh)"
    if os.environ.get("DEPLOY_TOOLS") == "0":
        pytest.skip(f"DEPLOY_TOOLS=0: {message}")
    pytest.fail(message, pytrace=False)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def check(cmd: list[str], **kwargs) -> str:
    """Run and return stdout; on failure show the whole output."""
    proc = run(cmd, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout

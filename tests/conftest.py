import logging
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.tiny_models import build_tiny_model  # noqa: E402

CACHE = os.path.join(ROOT, ".cache", "test-models")


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: path of a tiny random checkpoint of a family (built once, cached in the clone)."""
    def make(model_type: str = "mixtral", **overrides) -> str:
        tag = model_type + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
        return build_tiny_model(model_type, os.path.join(CACHE, tag), **overrides)
    return make


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield

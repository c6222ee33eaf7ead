"""The embedded default model answers through tritonserver and the command-line client (gRPC and HTTP),
and the client exits non-zero with the server's message on error."""
import subprocess
import sys
from pathlib import Path

import pytest

from backend.default_model import ensure_default_model
from tests.e2e.conftest import running_server

ROOT = Path(__file__).resolve().parents[2]
QUESTION = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def default_server():
    yield from running_server(ensure_default_model(), {"max_tokens_in_paged_kv_cache": "2048"})


def client(*args):
    return subprocess.run([sys.executable, "-m", "client.generate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_client_streams_the_answer(default_server, transport):
    url = default_server.grpc_url if transport == "grpc" else default_server.http_url
    args = [QUESTION, "--url", url, "--max-tokens", "24"] + (["--http"] if transport == "http" else [])
    run = client(*args)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    assert "prompt tokens" in run.stderr


def test_client_reports_the_server_error(default_server):
    run = client("hello", "--url", default_server.grpc_url, "--max-tokens", "0")
    assert run.returncode == 1
    assert "max_tokens: must be an integer >= 1" in run.stderr

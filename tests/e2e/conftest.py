"""Session-scoped tritonservers (one per configuration) on free 127.0.0.1 ports, and an offline engine.

The e2e model is a tiny random Mixtral with 4096 positions: fast, and long requests last seconds,
which cancellation and queueing tests need.
"""
import pytest

from backend.serve import TritonServer

E2E_MODEL = dict(model_type="mixtral", max_position_embeddings=4096)
# Main server: a 2048-token KV cache (128 blocks), so "prompt larger than the KV cache" is reachable.
SERVER_PARAMS = {"max_tokens_in_paged_kv_cache": "2048", "cancellation_check_period_ms": "50",
                 "stats_check_period_ms": "50"}
# Queueing server: room for exactly two 4000-token requests (guaranteed_no_evict reserves prompt +
# max_tokens), one request per execute(), and a Triton queue of 2.
FULL_SERVER_PARAMS = {"max_tokens_in_paged_kv_cache": "8192", "batch_scheduler_policy": "guaranteed_no_evict",
                      "triton_max_batch_size": "1", "max_queue_size": "2", "max_queue_delay_microseconds": "0",
                      "stats_check_period_ms": "50"}


@pytest.fixture(scope="session")
def e2e_model_dir(tiny_model):
    return tiny_model(**E2E_MODEL)


def running_server(model_dir, params):
    """Generator for fixtures: a started TritonServer; prints its log tail when the fixture ends.

    tritonserver 2.51 never finishes unloading a decoupled Python model once the server itself has
    rejected a request to it (queue full, wrong dtype or shape, unknown input; reproduced with a
    40-line model), so such a server always stops by its exit timeout: keep that short in tests.
    """
    server = TritonServer(model_dir, params, exit_timeout_s=3).start()
    yield server
    tail = server.log_tail(60)
    server.stop()
    print(f"\n--- tritonserver log tail ({params}) ---\n{tail}")


@pytest.fixture(scope="session")
def server(e2e_model_dir):
    yield from running_server(e2e_model_dir, SERVER_PARAMS)


@pytest.fixture(scope="session")
def full_server(e2e_model_dir):
    yield from running_server(e2e_model_dir, FULL_SERVER_PARAMS)


@pytest.fixture(scope="session")
def offline_engine(e2e_model_dir):
    from backend import LLMEngine
    return LLMEngine.from_pretrained(e2e_model_dir, max_tokens_in_paged_kv_cache=2048, warmup=False)

"""While the engine is full, execute() holds back and later requests wait in Triton's queue:
nv_inference_pending_request_count shows them, max_queue_size bounds them, Triton rejects the
overflow with its own error, and the server keeps serving afterwards."""
import pytest

from client.generate import GenerateError, stream_grpc
from tests.e2e.triton_helpers import RawStream, gauge, metric, scrape, wait_until

LONG = 4000   # prompt + 4000 tokens: two such requests fill the 8192-token KV cache under guaranteed_no_evict


def pending(server):
    return metric(scrape(server), "nv_inference_pending_request_count", model="moe_llm")


def test_overflow_is_rejected_by_triton_and_the_server_recovers(full_server):
    streams = []
    try:
        streams += [RawStream(full_server, f"The quick brown fox {i}", max_tokens=LONG) for i in range(2)]
        wait_until(lambda: gauge(full_server, "nv_trt_llm_request_metrics", "scheduled") == 2, 10, "two running")
        # The third is handed to execute(), which submits it and blocks: the engine has no room for it.
        streams.append(RawStream(full_server, "The lazy dog", max_tokens=LONG))
        wait_until(lambda: gauge(full_server, "nv_trt_llm_request_metrics", "active") == 3, 10, "third in the engine")
        assert gauge(full_server, "nv_trt_llm_request_metrics", "waiting") == 1
        # The next two wait in Triton's queue (max_queue_size 2) ...
        streams += [RawStream(full_server, f"queued {i}", max_tokens=LONG) for i in range(2)]
        wait_until(lambda: pending(full_server) == 2, 10, "two requests pending in Triton's queue")
        # ... and one more is over the limit: Triton itself refuses it, at once.
        with pytest.raises(GenerateError, match="Exceeds maximum queue size"):
            list(stream_grpc(full_server.grpc_url, "one too many", max_tokens=4, timeout_s=10))
        assert gauge(full_server, "nv_trt_llm_request_metrics", "active") == 3
    finally:
        for stream in streams:
            stream.cancel()
    wait_until(lambda: pending(full_server) == 0 and gauge(full_server, "nv_trt_llm_request_metrics", "active") == 0
               and gauge(full_server, "nv_trt_llm_kv_cache_block_metrics", "used") == 0, 10, "everything cancelled")
    responses = list(stream_grpc(full_server.grpc_url, "still serving", max_tokens=8, return_num_output_tokens=True,
                                 timeout_s=30))
    assert sum(r["num_output_tokens"] for r in responses) == 8

"""A client that cancels its gRPC stream or drops its HTTP connection frees the request's KV blocks
at once: streaming requests are noticed at their next token, others by the cancellation poller."""
import requests

from client.generate import stream_grpc
from tests.e2e.triton_helpers import RawStream, gauge, metric, scrape, wait_until

LONG = 1500   # ~4 s of decoding on the tiny model if nothing cancelled it


def used_blocks(server):
    return gauge(server, "nv_trt_llm_kv_cache_block_metrics", "used")


def assert_freed_early(server, tokens_before):
    wait_until(lambda: used_blocks(server) == 0 and gauge(server, "nv_trt_llm_request_metrics", "active") == 0,
               2, "KV blocks freed after the cancel")
    generated = metric(scrape(server), "vllm:generation_tokens_total") - tokens_before
    assert generated < LONG / 2, f"the cancelled request kept generating ({generated} tokens)"


def test_cancelled_grpc_stream_frees_blocks(server):
    tokens_before = metric(scrape(server), "vllm:generation_tokens_total")
    stream = RawStream(server, "The quick brown fox", max_tokens=LONG)
    for _ in range(5):
        result, error = stream.next()
        assert error is None
    wait_until(lambda: used_blocks(server) > 0, 2, "the request to hold KV blocks")
    stream.cancel()
    assert_freed_early(server, tokens_before)
    assert list(stream_grpc(server.grpc_url, "still serving", max_tokens=4, timeout_s=30))


def test_dropped_http_stream_frees_blocks(server):
    tokens_before = metric(scrape(server), "vllm:generation_tokens_total")
    reply = requests.post(f"http://{server.http_url}/v2/models/moe_llm/generate_stream", stream=True, timeout=30,
                          json={"text_input": "The quick brown fox", "max_tokens": LONG, "stream": True})
    events = reply.iter_lines()
    for _ in range(10):
        next(events)
    wait_until(lambda: used_blocks(server) > 0, 2, "the request to hold KV blocks")
    reply.close()
    assert_freed_early(server, tokens_before)


def test_cancelled_non_streaming_request_is_found_by_the_poller(server):
    # stream=false sends nothing before the end, so only the periodic is_cancelled() check can see the cancel.
    # (Over HTTP, tritonserver 2.51 cancels on disconnect for generate_stream only, not for plain generate.)
    tokens_before = metric(scrape(server), "vllm:generation_tokens_total")
    stream = RawStream(server, "The quick brown fox", max_tokens=LONG, stream=False)
    wait_until(lambda: used_blocks(server) > 0, 2, "the request to hold KV blocks")
    stream.cancel()
    assert_freed_early(server, tokens_before)

"""Triton's /metrics parses with prometheus-client; our TRT-LLM gauges, vLLM counters and histograms
move with the load and return to idle values after it."""
import threading

import requests
from prometheus_client.parser import text_string_to_metric_families

from client.generate import stream_grpc
from tests.e2e.triton_helpers import gauge, metric, scrape, wait_until

GAUGES = {"nv_trt_llm_request_metrics": ("request_type", {"active", "max", "scheduled", "context", "waiting"}),
          "nv_trt_llm_kv_cache_block_metrics": ("kv_cache_block_type",
                                                {"max", "free", "used", "tokens_per", "reused", "fraction"}),
          "nv_trt_llm_inflight_batcher_metrics": ("inflight_batcher_specific_metric",
                                                  {"total_context_tokens", "generation_requests", "micro_batch_id",
                                                   "paused_requests"})}
HISTOGRAMS = ["vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds"]
NUM_STREAMS, MAX_TOKENS = 6, 200


def test_metric_families_have_the_exact_names_types_and_labels(server):
    families = {f.name: f for f in text_string_to_metric_families(requests.get(server.metrics_url, timeout=5).text)}
    for name, (category, values) in GAUGES.items():
        assert families[name].type == "gauge"
        assert {s.labels[category] for s in families[name].samples} == values
        assert all(s.labels["model"] == "moe_llm" and s.labels["version"] == "1" for s in families[name].samples)
    # prometheus-client names a counter family without its _total suffix; the samples keep it
    assert families["vllm:prompt_tokens"].type == families["vllm:generation_tokens"].type == "counter"
    assert {s.name for s in families["vllm:prompt_tokens"].samples} == {"vllm:prompt_tokens_total"}
    for name in HISTOGRAMS:
        assert families[name].type == "histogram"
    assert "nv_inference_pending_request_count" in families


def test_metrics_move_under_load_and_settle_after(server):
    before = scrape(server)
    kv_max = metric(before, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max")
    assert kv_max == 2048 / 16
    assert metric(before, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per") == 16
    results = []

    def stream(i):
        results.append(list(stream_grpc(server.grpc_url, f"The quick brown fox {i}", max_tokens=MAX_TOKENS,
                                        return_num_input_tokens=True, return_num_output_tokens=True, timeout_s=120)))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(NUM_STREAMS)]
    for t in threads:
        t.start()
    seen = {"active": 0, "scheduled": 0, "used": 0, "generation_requests": 0}
    while any(t.is_alive() for t in threads):
        samples = scrape(server)
        for kind in ("active", "scheduled"):
            seen[kind] = max(seen[kind], metric(samples, "nv_trt_llm_request_metrics", request_type=kind))
        seen["used"] = max(seen["used"], metric(samples, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used"))
        seen["generation_requests"] = max(seen["generation_requests"], metric(
            samples, "nv_trt_llm_inflight_batcher_metrics", inflight_batcher_specific_metric="generation_requests"))
    for t in threads:
        t.join()
    assert len(results) == NUM_STREAMS
    assert seen["active"] >= 2 and seen["scheduled"] >= 2 and seen["generation_requests"] >= 2, seen
    assert seen["used"] > 0, seen

    def idle():
        return all(gauge(server, family, kind) == 0 for family, kind in [
            ("nv_trt_llm_kv_cache_block_metrics", "used"), ("nv_trt_llm_request_metrics", "active"),
            ("nv_trt_llm_request_metrics", "scheduled"), ("nv_trt_llm_request_metrics", "waiting"),
            ("nv_trt_llm_inflight_batcher_metrics", "generation_requests")])
    wait_until(idle, 5, "every gauge back to idle")
    after = scrape(server)
    assert metric(after, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="free") == kv_max

    prompt_tokens = sum(r[0]["num_input_tokens"] for r in results)
    output_tokens = sum(x.get("num_output_tokens", 0) for r in results for x in r)

    def delta(name):
        return metric(after, name) - metric(before, name)
    assert delta("vllm:prompt_tokens_total") == prompt_tokens
    assert delta("vllm:generation_tokens_total") == output_tokens
    for name in HISTOGRAMS:
        assert delta(name + "_count") == NUM_STREAMS, name
        assert delta(name + "_sum") > 0, name

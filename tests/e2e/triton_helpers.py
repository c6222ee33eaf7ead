"""Helpers for the e2e tests: metric scraping with prometheus-client, polling, raw gRPC streams."""
import queue
import time

import tritonclient.grpc as grpcclient

from client.generate import grpc_inputs
from perf_analyzer_configs.server_metrics import metric  # noqa: F401  (re-exported for the tests)
from perf_analyzer_configs.server_metrics import scrape as scrape_url


def scrape(server) -> dict[str, dict[frozenset, float]]:
    """sample name -> {labels: value}; parsing the whole page also checks it is valid Prometheus text."""
    return scrape_url(server.metrics_url)


def gauge(server, family: str, kind: str) -> float:
    category = {"nv_trt_llm_request_metrics": "request_type", "nv_trt_llm_kv_cache_block_metrics": "kv_cache_block_type",
                "nv_trt_llm_inflight_batcher_metrics": "inflight_batcher_specific_metric"}[family]
    return metric(scrape(server), family, **{category: kind})


def wait_until(condition, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class RawStream:
    """One gRPC ModelStreamInfer stream with one request on it; cancel() cancels it like a client would."""

    def __init__(self, server, prompt: str | None = None, tensors: list | None = None, **inputs):
        """Either a prompt and inputs by name, or hand-made `tensors` (grpcclient.InferInput list)."""
        self.responses: queue.Queue = queue.Queue()
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))
        if tensors is None:
            tensors = grpc_inputs({"text_input": prompt, "stream": True, **inputs})
        self.client.async_stream_infer("moe_llm", tensors, enable_empty_final_response=True)

    def next(self, timeout_s: float = 30.0):
        return self.responses.get(timeout=timeout_s)

    def cancel(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()

"""Custom metrics on Triton's /metrics (TRT-LLM and vLLM names) and a periodic one-line stats log.

One thread owns every metric: each Metric call is an IPC round trip to the server (0.3-2 ms), so
neither the engine thread nor the response thread makes one, and a gauge is set only when its value
changed. While the engine holds requests the
thread refreshes the gauges from runner.stats() every stats_check_period_ms; when the engine is idle
it does one last refresh (and one last log line) and then sleeps until execute() or a finished
request wakes it.
"""
import queue
import threading
import time

import triton_python_backend_utils as pb_utils

from backend.outputs import EngineStats

# vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for vLLM read ours unchanged.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0]


def gauge_values(stats: EngineStats) -> dict[tuple[str, str, str], float]:
    """(family, category label, label value) -> gauge value, with TRT-LLM's meanings."""
    return {
        ("nv_trt_llm_request_metrics", "request_type", "active"): stats.active,
        ("nv_trt_llm_request_metrics", "request_type", "max"): stats.max_batch_size,
        ("nv_trt_llm_request_metrics", "request_type", "scheduled"): stats.scheduled,
        ("nv_trt_llm_request_metrics", "request_type", "context"): stats.context,
        ("nv_trt_llm_request_metrics", "request_type", "waiting"): stats.active - stats.scheduled,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "max"): stats.kv_blocks_max,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "free"): stats.kv_blocks_free,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "used"): stats.kv_blocks_used,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "tokens_per"): stats.tokens_per_block,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "reused"): stats.kv_blocks_reused,
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "fraction"): stats.kv_fraction,
        ("nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric", "total_context_tokens"):
            stats.context_tokens,
        ("nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric", "generation_requests"):
            stats.generation,
        ("nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric", "micro_batch_id"): 0,
        ("nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric", "paused_requests"):
            stats.preempted,
        ("nv_trt_llm_general_metrics", "general_type", "iteration_counter"): stats.iterations,
    }


# Counters: Prometheus name -> the cumulative EngineStats field it follows. vLLM's names; the prefix-cache
# pair is in tokens, so the hit rate is rate(hits) / rate(queries).
COUNTERS = {
    "vllm:prompt_tokens_total": ("prompt_tokens_total", "Number of prefill tokens processed."),
    "vllm:generation_tokens_total": ("generation_tokens_total", "Number of generation tokens processed."),
    "vllm:prefix_cache_queries_total": ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
    "vllm:prefix_cache_hits_total": ("prefix_cache_hits", "Prompt tokens served by the prefix cache."),
    "vllm:num_preemptions_total": ("num_preemptions", "Requests preempted (recompute) to free KV blocks."),
}


GAUGE_HELP = {
    "nv_trt_llm_request_metrics": "TRT-LLM request metrics",
    "nv_trt_llm_kv_cache_block_metrics": "TRT-LLM KV cache block metrics",
    "nv_trt_llm_inflight_batcher_metrics": "TRT-LLM inflight batcher metrics",
    "nv_trt_llm_general_metrics": "TRT-LLM general metrics",
}


class TritonMetrics:
    def __init__(self, runner, model_name: str, model_version: str, stats_check_period_ms: int,
                 stats_log_period_s: float):
        self._runner = runner
        self._period = stats_check_period_ms / 1000
        self._log_period = stats_log_period_s
        labels = {"model": model_name, "version": model_version}
        # Families stay referenced on self: a collected family invalidates its metrics.
        self._families = {name: pb_utils.MetricFamily(name, text, pb_utils.MetricFamily.GAUGE)
                          for name, text in GAUGE_HELP.items()}
        self._gauges = {key: self._families[key[0]].Metric(labels={**labels, key[1]: key[2]})
                        for key in gauge_values(EngineStats())}
        self._gauge_values: dict = {}     # last value set: an unchanged gauge costs no IPC
        for name, (_, text) in COUNTERS.items():
            self._families[name] = pb_utils.MetricFamily(name, text, pb_utils.MetricFamily.COUNTER)
        self._counters = {name: self._families[name].Metric(labels=labels) for name in COUNTERS}
        for name, text, kind in [
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             pb_utils.MetricFamily.HISTOGRAM),
            ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
             pb_utils.MetricFamily.HISTOGRAM),
            ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
             pb_utils.MetricFamily.HISTOGRAM),
        ]:
            self._families[name] = pb_utils.MetricFamily(name, text, kind)
        self._ttft = self._families["vllm:time_to_first_token_seconds"].Metric(labels=labels, buckets=TTFT_BUCKETS)
        self._tpot = self._families["vllm:time_per_output_token_seconds"].Metric(labels=labels, buckets=TPOT_BUCKETS)
        self._e2e = self._families["vllm:e2e_request_latency_seconds"].Metric(labels=labels, buckets=E2E_BUCKETS)

        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        # Counters increment by the difference to the last export; warm-up tokens are not counted.
        self._last = runner.stats()
        self._last_log = (time.monotonic(), self._last)
        self._thread = threading.Thread(target=self._run, name="triton-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def wake(self) -> None:
        """New work arrived: switch from idle to refreshing every period."""
        self._wake.set()

    def observe_request(self, arrival: float, first_token_at: float | None, finished_at: float,
                        num_output_tokens: int) -> None:
        self._finished.put((arrival, first_token_at, finished_at, num_output_tokens))
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            stats = self._runner.stats()
            self._export(stats)
            self._maybe_log(stats)
            # num_requests() counts submitted requests the engine has not taken in yet; stats() does not.
            if stats.active or self._runner.num_requests():
                timeout = self._period
            else:   # idle: wake once more to log the tail of the last burst, then sleep until woken
                timeout = self._log_period if stats.iterations != self._last_log[1].iterations else None
            self._wake.wait(timeout=timeout)
        self._export(self._runner.stats())

    def _export(self, stats: EngineStats) -> None:
        for key, value in gauge_values(stats).items():
            if self._gauge_values.get(key) != value:
                self._gauges[key].set(value)
                self._gauge_values[key] = value
        for name, (field, _) in COUNTERS.items():
            increase = getattr(stats, field) - getattr(self._last, field)
            if increase > 0:
                self._counters[name].increment(increase)
        self._last = stats
        while not self._finished.empty():
            arrival, first_token_at, finished_at, num_output_tokens = self._finished.get()
            self._e2e.observe(finished_at - arrival)
            if first_token_at is not None:
                self._ttft.observe(first_token_at - arrival)
                if num_output_tokens > 1:
                    self._tpot.observe((finished_at - first_token_at) / (num_output_tokens - 1))

    def _maybe_log(self, stats: EngineStats) -> None:
        now = time.monotonic()
        then, before = self._last_log
        busy = stats.active or stats.iterations != before.iterations
        if now - then < self._log_period or not busy:
            return
        self._last_log = (now, stats)
        elapsed = now - then
        hits = stats.prefix_cache_hits - before.prefix_cache_hits
        queries = stats.prefix_cache_queries - before.prefix_cache_queries
        pb_utils.Logger.log_info(
            f"Avg prompt throughput: {(stats.prompt_tokens_total - before.prompt_tokens_total) / elapsed:.1f} tokens/s, "
            f"Avg generation throughput: {(stats.generation_tokens_total - before.generation_tokens_total) / elapsed:.1f} "
            f"tokens/s, Running: {stats.scheduled} reqs, Waiting: {stats.active - stats.scheduled} reqs, "
            f"Preemptions: {stats.num_preemptions}, KV cache usage: {100 * stats.kv_fraction:.1f}% "
            f"({stats.kv_blocks_used}/{stats.kv_blocks_max} blocks), "
            f"Prefix cache hit rate: {100 * hits / queries if queries else 0.0:.1f}%")

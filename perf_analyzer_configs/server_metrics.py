"""Read a tritonserver /metrics page with prometheus-client: sample name -> {labels: value}."""
import requests
from prometheus_client.parser import text_string_to_metric_families


def scrape(metrics_url: str) -> dict[str, dict[frozenset, float]]:
    samples: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=5).text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    """The one sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    matches = [v for key, v in samples.get(name, {}).items() if wanted <= key]
    if len(matches) != 1:
        raise KeyError(f"{name}{labels}: {len(matches)} samples in {samples.get(name)}")
    return matches[0]


def engine_gauges(metrics_url: str) -> dict[str, float]:
    """The moe_llm gauges and counters the load tools read, by short name."""
    s = scrape(metrics_url)
    out = {kind: metric(s, "nv_trt_llm_request_metrics", request_type=kind) for kind in ("active", "scheduled", "waiting")}
    for kind in ("used", "reused", "max"):
        out[f"kv_{kind}"] = metric(s, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type=kind)
    out["paused"] = metric(s, "nv_trt_llm_inflight_batcher_metrics", inflight_batcher_specific_metric="paused_requests")
    out["iterations"] = metric(s, "nv_trt_llm_general_metrics", general_type="iteration_counter")
    out["pending"] = metric(s, "nv_inference_pending_request_count", model="moe_llm")
    for name in ("vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        out[name] = metric(s, name)
    return out

"""The metric names and label values tritonserver exports for moe_llm (Triton core + our Python
backend's custom metrics), and a small PromQL scanner that finds which of them an expression uses."""
import re

GAUGE_CATEGORIES = {
    "nv_trt_llm_request_metrics": ("request_type", {"active", "max", "scheduled", "context", "waiting"}),
    "nv_trt_llm_kv_cache_block_metrics": ("kv_cache_block_type", {"max", "free", "used", "tokens_per", "reused", "fraction"}),
    "nv_trt_llm_inflight_batcher_metrics": ("inflight_batcher_specific_metric",
                                            {"total_context_tokens", "generation_requests", "micro_batch_id",
                                             "paused_requests"}),
}
COUNTERS = {"vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "nv_inference_request_success", "nv_inference_request_failure"}
GAUGES = {"nv_inference_pending_request_count", *GAUGE_CATEGORIES}
HISTOGRAMS = {"vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
              "vllm:e2e_request_latency_seconds"}
HISTOGRAM_SERIES = {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
EXPORTED = COUNTERS | GAUGES | HISTOGRAM_SERIES
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                            # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                           # range / subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                          # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        if not m.group(2) and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def category_values(expr: str) -> dict[str, set[str]]:
    """label -> values named in matchers of the gauges' category labels (`=` and `=~"a|b"`)."""
    found: dict[str, set[str]] = {}
    labels = {label for label, _ in GAUGE_CATEGORIES.values()}
    for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', expr):
        if label in labels:
            found.setdefault(label, set()).update(value.split("|") if op == "=~" else [value])
    return found


def synthetic_scrape(instances=("a:8002", "b:8002"), minutes: int = 10) -> list[dict]:
    """promtool input_series: every exported series on each instance, scraped every 15 s, job triton."""
    series = []

    def add(name, labels, values):
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        series.append({"series": f"{name}{{{text}}}", "values": values})

    steps = minutes * 4
    for instance in instances:
        base = {"job": "triton", "instance": instance, "model": "moe_llm", "version": "1"}
        add("up", {"job": "triton", "instance": instance}, f"1x{steps}")
        add("nv_inference_pending_request_count", base, f"3x{steps}")
        add("nv_inference_request_success", base, f"0+10x{steps}")
        for reason in FAILURE_REASONS:
            add("nv_inference_request_failure", {**base, "reason": reason}, f"0+1x{steps}")
        for family, (label, values) in GAUGE_CATEGORIES.items():
            for value in sorted(values):
                add(family, {**base, label: value}, f"0.5x{steps}")
        add("vllm:prompt_tokens_total", base, f"0+400x{steps}")
        add("vllm:generation_tokens_total", base, f"0+100x{steps}")
        for hist in sorted(HISTOGRAMS):
            for le, per_step in (("0.1", 5), ("1", 9), ("+Inf", 10)):
                add(f"{hist}_bucket", {**base, "le": le}, f"0+{per_step}x{steps}")
            add(f"{hist}_sum", base, f"0+3x{steps}")
            add(f"{hist}_count", base, f"0+10x{steps}")
    return series

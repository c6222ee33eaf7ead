"""The load report's steady window: perf_analyzer's measurement windows, cut where fewer streams than the
concurrency run (its drain at the end of the last window), on a synthetic profile export."""
import json

from perf_analyzer_configs.level_sampler import Sample, window_rates
from perf_analyzer_configs.summarize import summarize

S = 1_000_000_000   # ns


def request(send_s: float, token_times_s: list[float]) -> dict:
    one = "\x01\x00\x00\x00"   # num_output_tokens = 1 as perf_analyzer exports a UINT32: raw little-endian bytes
    return {"timestamp": int(send_s * S), "response_timestamps": [int(t * S) for t in token_times_s],
            "response_outputs": [{"num_output_tokens": one} for _ in token_times_s]}


def test_steady_window_stops_where_perf_analyzer_drains(tmp_path):
    # Two streams, one token every 0.1 s, each request 10 tokens (1 s) and the next sent at once. Stream A
    # sends its last request at 7 s; stream B at 8 s; the windows end at 9 s, after B's last token.
    requests = []
    for stream, last_send in (("a", 7), ("b", 8)):
        for start in range(0, last_send + 1):
            requests.append(request(start, [start + 0.1 * (i + 1) for i in range(10)]))
    path = tmp_path / "c2.json"
    path.write_text(json.dumps({"experiments": [{"experiment": {"value": 2}, "requests": requests,
                                                 "window_boundaries": [0, 3 * S, 6 * S, 9 * S]}]}))
    row = summarize(path)
    assert row["steady_seconds"] == 8.0, "from the first moment both streams run to A's last token"
    assert abs(row["steady_tok_per_s"] - 20.0) < 1e-9, "two streams at 10 tokens/s, not the drain's one"
    assert row["steady_requests"] == 16
    assert (row["steady_start_ns"], row["steady_end_ns"]) == (0, 8 * S)


def test_engine_figures_cover_only_the_window():
    # A step every 50 ms making 16 tokens until 10 s, then a drain of 100 ms steps making 4; CPU 180% throughout.
    samples, steps, tokens, t = [], 0, 0, 0.0
    while t <= 14:
        samples.append(Sample(int(t * S), steps, tokens, 1.8 * t))
        rate, per_step = (20, 16) if t < 10 else (10, 4)
        steps, tokens, t = steps + rate // 2, tokens + per_step * rate // 2, t + 0.5
    rates = window_rates(samples, int(1.2 * S), int(10 * S))
    assert rates["step_ms"] == 50 and rates["tokens_per_step"] == 16 and abs(rates["server_cpu_percent"] - 180) < 1e-9
    assert rates["engine_steps"] == 20 * (10 - 1.5)
    assert window_rates(samples, int(1.2 * S), int(1.4 * S)) is None, "fewer than two samples inside"

"""LLM metrics from perf_analyzer profile exports (--profile-export-file), one row per concurrency level.

    python -m perf_analyzer_configs.summarize bench_out/sweep-.../c1.json bench_out/sweep-.../c2.json ...

Definitions follow genai-perf: TTFT = first response - send; TPOT (genai-perf's "inter-token
latency") = (last response - first response) / (output tokens - 1), per request; the pooled gaps
between consecutive responses (vLLM's ITL) are kept too (gap_p50/gap_p99). Output tokens come from the
num_output_tokens output (the inputs set return_num_output_tokens). Throughputs span the first send
to the last response of the level. The ratio column compares each level with the first one.

summarize() also reports the steady window (steady_tok_per_s, and the latencies of the requests sent
in it: steady_ttft_*, steady_tpot_*): the time all streams are busy, i.e. from the moment `concurrency`
requests are first in flight to the moment the count falls for good. In time_windows mode that is
perf_analyzer's own measurement windows cut where its drain begins: it stops sending during the last
window and lets the requests in flight finish, seconds in which fewer than `concurrency` streams run
(8 of 54 s at concurrency 16 in the load report). With --request-count, perf_analyzer gives each stream a fixed
share of the requests, so with mixed output lengths some streams run dry long before others.
"""
import json
import statistics
import struct
import sys
from pathlib import Path


def output_tokens(request: dict) -> int:
    total = 0
    for output in request["response_outputs"]:
        raw = output.get("num_output_tokens")
        if raw is None:
            raise SystemExit("profile export lacks num_output_tokens: send return_num_output_tokens in the input data")
        # UINT32 is 4 little-endian bytes (one latin-1 character each)
        total += struct.unpack("<I", raw.encode("latin-1"))[0] if isinstance(raw, str) else int(raw)
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def steady_window(requests: list[dict], concurrency: int) -> tuple[int, int]:
    """(start, end) in ns: from when `concurrency` requests are first in flight to the last time the count
    drops below it without coming back (a stream ran dry, not the usual finish-then-send turnaround)."""
    events = sorted([(r["timestamp"], 1) for r in requests] + [(r["response_timestamps"][-1], -1) for r in requests])
    in_flight, start, end = 0, None, None
    for t, change in events:
        before, in_flight = in_flight, in_flight + change
        if in_flight >= concurrency > before:
            start = t if start is None else start
            end = None
        elif before >= concurrency > in_flight:
            end = t
    return start, end


def latencies(requests: list[dict], prefix: str = "") -> dict:
    tokens = [output_tokens(r) for r in requests]
    ttft = [(r["response_timestamps"][0] - r["timestamp"]) / 1e9 for r in requests]
    tpot = [(r["response_timestamps"][-1] - r["response_timestamps"][0]) / 1e9 / (n - 1)
            for r, n in zip(requests, tokens) if n > 1]
    nan = float("nan")
    return {prefix + "ttft_p50": percentile(ttft, 0.5), prefix + "ttft_p99": percentile(ttft, 0.99),
            prefix + "tpot_p50": percentile(tpot, 0.5) if tpot else nan,
            prefix + "tpot_p99": percentile(tpot, 0.99) if tpot else nan}


def steady(requests: list[dict], concurrency: int, window: list[int] | None = None) -> dict:
    start, end = steady_window(requests, concurrency)
    if window:   # inside perf_analyzer's windows; where the streams never all ran (or never drained), the windows
        start = window[0] if start is None else max(start, window[0])
        end = window[-1] if end is None else min(end, window[-1])
    if start is None or end is None or end <= start:
        return {"steady_seconds": 0.0, "steady_tok_per_s": float("nan"), "steady_requests": 0,
                "steady_start_ns": None, "steady_end_ns": None}
    tokens = 0
    for r in requests:
        for t, out in zip(r["response_timestamps"], r["response_outputs"]):
            if start <= t <= end:
                tokens += output_tokens({"response_outputs": [out]})
    sent = [r for r in requests if start <= r["timestamp"] < end] or requests
    return {"steady_seconds": (end - start) / 1e9, "steady_tok_per_s": tokens / ((end - start) / 1e9),
            "steady_start_ns": start, "steady_end_ns": end,
            "steady_requests": len(sent), **latencies(sent, "steady_")}


def summarize(path: Path) -> dict:
    # perf_analyzer writes non-text outputs as their raw bytes inside JSON strings: read bytes as latin-1
    experiment = json.loads(path.read_bytes().decode("latin-1"))["experiments"][0]
    requests = [r for r in experiment["requests"] if r["response_timestamps"]]
    concurrency = experiment["experiment"]["value"]
    ttft = [(r["response_timestamps"][0] - r["timestamp"]) / 1e9 for r in requests]
    e2e = [(r["response_timestamps"][-1] - r["timestamp"]) / 1e9 for r in requests]
    tokens = [output_tokens(r) for r in requests]
    tpot = [(r["response_timestamps"][-1] - r["response_timestamps"][0]) / 1e9 / (n - 1)
            for r, n in zip(requests, tokens) if n > 1]
    # vLLM-style inter-token latency: every gap between two responses of a request, pooled
    gaps = [(b - a) / 1e9 for r in requests for a, b in zip(r["response_timestamps"], r["response_timestamps"][1:])]
    span = (max(r["response_timestamps"][-1] for r in requests) - min(r["timestamp"] for r in requests)) / 1e9
    nan = float("nan")
    return {"concurrency": concurrency, "requests": len(requests),
            **steady(requests, concurrency, experiment.get("window_boundaries")),
            "req_per_s": len(requests) / span, "tok_per_s": sum(tokens) / span, "seconds": span,
            "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
            "tpot_mean": statistics.fmean(tpot) if tpot else nan,
            "tpot_p50": percentile(tpot, 0.5) if tpot else nan, "tpot_p99": percentile(tpot, 0.99) if tpot else nan,
            "gap_p50": percentile(gaps, 0.5) if gaps else nan, "gap_p99": percentile(gaps, 0.99) if gaps else nan,
            "e2e_p50": percentile(e2e, 0.5), "tokens_per_request": statistics.fmean(tokens)}


def table(rows: list[dict]) -> str:
    base = rows[0]["tok_per_s"]
    lines = ["| concurrency | requests | out tokens/req | req/s | output tok/s | vs c=%d | TTFT p50 (s) | TTFT p99 (s) "
             "| TPOT mean (ms) | e2e p50 (s) |" % rows[0]["concurrency"],
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['tokens_per_request']:.0f} | {r['req_per_s']:.2f} "
                     f"| {r['tok_per_s']:.1f} | {r['tok_per_s'] / base:.2f}x | {r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} "
                     f"| {1000 * r['tpot_mean']:.1f} | {r['e2e_p50']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    rows = sorted((summarize(Path(p)) for p in argv), key=lambda r: r["concurrency"])
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Warm start: time to first token of the very first request after Triton reports ready, against steady state.

    python -m perf_analyzer_configs.warm_start [--model DIR] [--param k=v ...] [--repeats 8] [--json OUT]

Starts a server (default model), sends the first request the moment /v2/health/ready answers 200, then
the same request --repeats more times one after the other; steady state is their median TTFT. Each
request opens its own gRPC stream, so connection set-up is in every sample alike. Target: first <= 1.5x
steady. Several prompt lengths are tried (first request of each length is "first" for that length),
because a first-call cost can hide in shape-dependent paths.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from backend.serve import TritonServer, parse_params
from client.timed import timed_stream

PROMPTS = {
    "short": "What is the capital of France?",
    "long": "Summarise the following notes. " + " ".join(f"Note {i}: the meeting moved to room {i % 7}." for i in range(60)),
}
TARGET_RATIO = 1.5


def warm_client(grpc_url: str) -> None:
    """Client-side first-call costs (imports, channel, stream set-up) out of the first sample: a
    metadata call and an opened-and-closed stream, neither of which reaches the model's execute()."""
    import tritonclient.grpc as grpcclient
    with grpcclient.InferenceServerClient(grpc_url) as client:
        client.get_model_metadata("moe_llm")
        client.start_stream(callback=lambda *_: None)
        client.stop_stream()


def measure(grpc_url: str, prompt: str, repeats: int, max_tokens: int) -> dict:
    first = timed_stream(grpc_url, prompt, max_tokens=max_tokens, min_tokens=max_tokens)
    steady = [timed_stream(grpc_url, prompt, max_tokens=max_tokens, min_tokens=max_tokens).ttft for _ in range(repeats)]
    median = statistics.median(steady)
    return {"first_ttft_s": first.ttft, "steady_ttft_median_s": median, "steady_ttft_all_s": steady,
            "ratio": first.ttft / median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    rows = {}
    t0 = time.monotonic()
    with TritonServer(model_dir, parse_params(args.param), exit_timeout_s=10).start() as server:
        ready_s = time.monotonic() - t0
        warm_client(server.grpc_url)
        for name, prompt in PROMPTS.items():    # "short" goes first: it is the first request of the server
            rows[name] = measure(server.grpc_url, prompt, args.repeats, args.max_tokens)
    print(f"warm start of {model_dir.name}: ready after {ready_s:.2f} s (load + warm-up; readiness polled every 0.1 s)\n")
    print("| prompt | first request TTFT (s) | steady TTFT median (s) | first / steady | target |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['first_ttft_s']:.3f} | {r['steady_ttft_median_s']:.3f} | {r['ratio']:.2f}x "
              f"| <= {TARGET_RATIO}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model_dir), "ready_s": ready_s, **rows}, indent=1))
    return int(rows["short"]["ratio"] > TARGET_RATIO)


if __name__ == "__main__":
    sys.exit(main())

"""Time in Triton's queue per request, from Triton's own traces: bursts of simultaneous streams, with and
without a queue policy, under optional background CPU load.

    python -m perf_analyzer_configs.queue_trace [--model DIR] [--rounds 12] [--streams 8] [--cpu-load 2]
                                                [--compare max_queue_size=64] [--param k=v ...] [--json OUT]

Each configuration gets its own tritonserver with `--trace-config level=TIMESTAMPS rate=1`; every round
sends --streams identical requests at once and waits for all. Queue time = COMPUTE_START - QUEUE_START of
each request (the dynamic batcher's wait, before execute() sees it). --cpu-load N runs N busy processes
beside the server, as a full test suite does on a 2-core machine: the race behind a 500 ms wait (see
backend/triton/settings.queue_policy_warning) needs a request to arrive while execute() runs.
"""
import argparse
import collections
import json
import multiprocessing
import statistics
import sys
import threading
from pathlib import Path

from backend.serve import TritonServer, parse_params
from client.timed import timed_stream

PROMPT = "Tell me a story about the quick brown fox."


class TracedServer(TritonServer):
    def __init__(self, model_dir, params, trace_file: Path):
        super().__init__(model_dir, params, exit_timeout_s=3)
        self.trace_file = trace_file

    def command(self, repository):
        trace = ["mode=triton", f"triton,file={self.trace_file}", "triton,log-frequency=1", "level=TIMESTAMPS", "rate=1"]
        return super().command(repository) + [arg for setting in trace for arg in ("--trace-config", setting)]


def queue_times_ms(trace_file: Path) -> list[float]:
    """COMPUTE_START - QUEUE_START of every traced request (log-frequency=1 writes one file per trace)."""
    stamps = collections.defaultdict(dict)
    for path in trace_file.parent.glob(trace_file.name + "*"):
        for entry in json.loads(path.read_text()):
            for stamp in entry.get("timestamps", []):
                stamps[entry["id"]].setdefault(stamp["name"], stamp["ns"])
    return sorted((s["COMPUTE_START"] - s["QUEUE_START"]) / 1e6 for s in stamps.values() if "COMPUTE_START" in s)


def burst(grpc_url: str, streams: int, max_tokens: int) -> None:
    start = threading.Barrier(streams)
    errors = []

    def one():
        start.wait()
        try:
            timed_stream(grpc_url, PROMPT, max_tokens=max_tokens, min_tokens=max_tokens)
        except Exception as e:   # reported after the burst; the other streams still finish
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def spin() -> None:
    while True:
        pass


def measure(model_dir: Path, params: dict, run_dir: Path, rounds: int, streams: int, max_tokens: int) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    trace_file = run_dir / "trace.json"
    with TracedServer(model_dir, params, trace_file) as server:
        for r in range(rounds):
            burst(server.grpc_url, streams, max_tokens)
            print(f"  round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    waits = queue_times_ms(trace_file)
    return {"requests": len(waits), "queue_ms_median": statistics.median(waits), "queue_ms_max": waits[-1],
            "over_100_ms": sum(w > 100 for w in waits)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.queue_trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="for every configuration")
    parser.add_argument("--compare", action="append", metavar="KEY=VALUE",
                        help="settings of the second configuration (default: max_queue_size=64)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cpu-load", type=int, default=2, help="busy processes beside the server")
    parser.add_argument("--out", default="bench_out/queue-trace", help="trace files go here")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args(argv)
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    base, compare = parse_params(args.param), args.compare or ["max_queue_size=64"]
    configs = {"config.pbtxt as shipped": base, " ".join(compare): {**base, **parse_params(compare)}}
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.cpu_load)]
    for p in spinners:
        p.start()
    try:
        rows = {}
        for i, (name, params) in enumerate(configs.items()):
            print(f"{name}: {args.rounds} bursts of {args.streams} streams", file=sys.stderr, flush=True)
            rows[name] = measure(model_dir, params, Path(args.out) / f"config{i}", args.rounds, args.streams, args.max_tokens)
    finally:
        for p in spinners:
            p.terminate()
    print(f"\n{args.rounds} bursts of {args.streams} simultaneous streams ({args.max_tokens} tokens each), "
          f"{args.cpu_load} busy processes beside the server; queue time = COMPUTE_START - QUEUE_START\n")
    print("| configuration | requests | queue p50 (ms) | queue max (ms) | requests over 100 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['requests']} | {row['queue_ms_median']:.1f} | {row['queue_ms_max']:.1f} | {row['over_100_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

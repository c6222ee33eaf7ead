"""Soak: many streamed requests of random lengths, a share cancelled mid-stream, against one server.

    python -m perf_analyzer_configs.soak [--model DIR] [--requests 500] [--concurrency 8] [--cancel-fraction 0.2]
                                         [--seed 0] [--max-minutes 30] [--json OUT]
    python -m perf_analyzer_configs.soak --url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics ...

Without --url it starts tritonserver on free 127.0.0.1 ports (default model unless --model) and stops it
at the end. Passes when: every request not cancelled ends with a final response and no error; the KV
cache returns to 0 used blocks and no request stays active; the resident memory of the server process
tree grew by less than 5% between the first --baseline-after requests and the end. Bounded by
--requests and --max-minutes; only loopback addresses are accepted (it reads the server's /proc too).
Exit code 1 on failure, with the reasons.
"""
import argparse
import json
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from client.generate import DEFAULT_MODEL, decode_outputs, grpc_inputs
from perf_analyzer_configs.process_tree import rss_bytes
from perf_analyzer_configs.server_metrics import engine_gauges

WORDS = ("the quick brown fox jumps over a lazy dog while paged attention keeps keys and values in blocks and "
         "experts route every token to a few of them so the server streams tokens to many clients").split()
MAX_RSS_GROWTH = 0.05


@dataclass
class SoakReport:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: list = field(default_factory=list)       # "request i: message" for every unexpected error
    output_tokens: int = 0
    seconds: float = 0.0
    rss_baseline_mib: float = 0.0                     # after the first baseline_after requests
    rss_end_mib: float = 0.0
    rss_samples_mib: list = field(default_factory=list)   # (requests done, MiB) every tenth of the run
    kv_used_end: float = -1
    active_end: float = -1
    failures: list = field(default_factory=list)      # why the soak failed (empty: passed)

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mib / self.rss_baseline_mib - 1 if self.rss_baseline_mib else 0.0


def one_request(grpc_url: str, index: int, rng: random.Random, cancel: bool, model: str) -> tuple[str, int]:
    """Returns ("completed" | "cancelled", output tokens seen); raises RuntimeError on an unexpected error."""
    prompt = f"Request {index}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 120)))
    max_tokens = rng.randint(4, 96)
    cancel_after = rng.randint(1, max(1, max_tokens // 2))
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    tokens = 0
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        inputs = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "return_num_output_tokens": True}
        if cancel:   # it must still be running when the client cancels it
            inputs["min_tokens"] = max_tokens
        client.async_stream_infer(model, grpc_inputs(inputs),
                                  request_id=uuid.uuid4().hex, enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=300)
            if error is not None:
                raise RuntimeError(error.message())
            final = result.get_response().parameters["triton_final_response"].bool_param
            if result.get_response().outputs:
                outputs = decode_outputs(result)
                tokens += outputs.get("num_output_tokens", 0)
                if final and outputs.get("finish_reason") not in ("stop", "length"):
                    raise RuntimeError(f"final response with finish_reason {outputs.get('finish_reason')!r}")
            if final:
                if tokens > max_tokens or tokens == 0:
                    raise RuntimeError(f"{tokens} output tokens for max_tokens {max_tokens}")
                return "completed", tokens
            if cancel and tokens >= cancel_after:
                client.stop_stream(cancel_requests=True)   # the server must notice, abort, free the blocks
                return "cancelled", tokens
    finally:
        client.close()


def run_soak(grpc_url: str, metrics_url: str, server_pid: int, num_requests: int = 500, concurrency: int = 8,
             cancel_fraction: float = 0.2, seed: int = 0, baseline_after: int = 100, max_seconds: float = 1800,
             model: str = DEFAULT_MODEL, log=print) -> SoakReport:
    report = SoakReport(requests=num_requests)
    plan_rng = random.Random(seed)
    to_cancel = set(plan_rng.sample(range(num_requests), round(cancel_fraction * num_requests)))
    cancels = [i in to_cancel for i in range(num_requests)]
    next_index = iter(range(num_requests))
    lock = threading.Lock()
    done = [0]
    deadline = time.monotonic() + max_seconds
    sample_every = max(1, num_requests // 10)
    t0 = time.monotonic()

    def worker():
        while time.monotonic() < deadline:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            rng = random.Random(seed * 1_000_003 + index)
            try:
                outcome, tokens = one_request(grpc_url, index, rng, cancels[index], model)
            except Exception as e:   # an unexpected error is a finding, not a crash of the soak
                outcome, tokens = "error", 0
                report.errors.append(f"request {index}: {e}")
            with lock:
                report.output_tokens += tokens
                report.completed += outcome == "completed"
                report.cancelled += outcome == "cancelled"
                done[0] += 1
                n = done[0]
            if n == baseline_after:
                report.rss_baseline_mib = rss_bytes(server_pid) / 2**20
            if n % sample_every == 0:
                report.rss_samples_mib.append((n, round(rss_bytes(server_pid) / 2**20, 1)))
                log(f"soak: {n}/{num_requests} requests, {report.cancelled} cancelled, {len(report.errors)} errors, "
                    f"RSS {report.rss_samples_mib[-1][1]:.0f} MiB")

    threads = [threading.Thread(target=worker, name=f"soak-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.monotonic() - t0
    settle_deadline = time.monotonic() + 30     # cancellations reach the engine within a check period or two
    while True:
        g = engine_gauges(metrics_url)
        report.kv_used_end, report.active_end = g["kv_used"], g["active"]
        if (report.kv_used_end == 0 and report.active_end == 0) or time.monotonic() > settle_deadline:
            break
        time.sleep(0.2)
    report.rss_end_mib = rss_bytes(server_pid) / 2**20
    finished = report.completed + report.cancelled + len(report.errors)
    if finished < num_requests:
        report.failures.append(f"only {finished} of {num_requests} requests ran within {max_seconds:.0f} s")
    if report.errors:
        report.failures.append(f"{len(report.errors)} unexpected errors, first: {report.errors[0]}")
    if report.kv_used_end != 0 or report.active_end != 0:
        report.failures.append(f"after the soak: {report.kv_used_end:.0f} KV blocks used, {report.active_end:.0f} "
                               "requests active (expected 0 and 0)")
    if report.rss_baseline_mib and report.rss_growth >= MAX_RSS_GROWTH:
        report.failures.append(f"server RSS grew {100 * report.rss_growth:.1f}% after the first {baseline_after} "
                               f"requests ({report.rss_baseline_mib:.0f} -> {report.rss_end_mib:.0f} MiB)")
    return report


def summary(report: SoakReport) -> str:
    return (f"soak: {report.requests} requests in {report.seconds:.0f} s: {report.completed} completed, "
            f"{report.cancelled} cancelled mid-stream, {len(report.errors)} errors; {report.output_tokens} output "
            f"tokens; KV blocks used after: {report.kv_used_end:.0f}, active: {report.active_end:.0f}; server RSS "
            f"{report.rss_baseline_mib:.0f} MiB -> {report.rss_end_mib:.0f} MiB ({100 * report.rss_growth:+.2f}%, "
            f"limit +{100 * MAX_RSS_GROWTH:.0f}%)\n" + ("PASS" if not report.failures else
                                                        "FAIL: " + "; ".join(report.failures)))


def _loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder for the started server (default: the embedded default model)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="for the started server")
    parser.add_argument("--url", help="gRPC address of a running server on this machine (127.0.0.1:PORT)")
    parser.add_argument("--metrics-url", help="its /metrics URL (with --url)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cancel-fraction", type=float, default=0.2)
    parser.add_argument("--baseline-after", type=int, default=100, help="RSS baseline after this many requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=30)
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args(argv)
    if not 0 < args.baseline_after < args.requests:
        parser.error("--baseline-after must be between 0 and --requests")
    if args.url:
        from perf_analyzer_configs.idle_cpu import pid_listening_on
        if not args.metrics_url or not _loopback(args.url) or not _loopback(args.metrics_url):
            parser.error("--url and --metrics-url must both be given and be loopback addresses (127.0.0.1:PORT)")
        report = run_soak(args.url, args.metrics_url, pid_listening_on(int(args.url.rsplit(":", 1)[1])), args.requests,
                          args.concurrency, args.cancel_fraction, args.seed, args.baseline_after, 60 * args.max_minutes)
    else:
        from backend.serve import TritonServer, parse_params
        from backend.default_model import model_dir_or_default
        model_dir = model_dir_or_default(args.model)
        with TritonServer(model_dir, parse_params(args.param), exit_timeout_s=10).start() as server:
            report = run_soak(server.grpc_url, server.metrics_url, server.process.pid, args.requests, args.concurrency,
                              args.cancel_fraction, args.seed, args.baseline_after, 60 * args.max_minutes)
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps({**asdict(report), "rss_growth": report.rss_growth}, indent=1))
    return int(bool(report.failures))


if __name__ == "__main__":
    sys.exit(main())

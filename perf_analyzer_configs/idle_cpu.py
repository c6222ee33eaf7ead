"""Idle CPU of a tritonserver process tree (tritonserver + Python stub + children), in % of one core.

    python -m perf_analyzer_configs.idle_cpu --url 127.0.0.1:8001       # a running server (any of its ports)
    python -m perf_analyzer_configs.idle_cpu --pid PID                  # a running server by pid
    python -m perf_analyzer_configs.idle_cpu [--model DIR] [--param k=v] # start one (default model), measure, stop

By default it first sends --warm-requests streamed requests and waits for them to finish, so the
pollers have gone from busy to idle once (the harder case), then measures --seconds of wall time.
Exit code 1 when the tree used more than --max-percent of one core.
"""
import argparse
import sys
import time

import psutil

from perf_analyzer_configs.process_tree import measure_cpu

TARGET_PERCENT = 1.0


def pid_listening_on(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise SystemExit(f"no process listens on port {port} (or it is not visible to this user): pass --pid")


def send_requests(grpc_url: str, count: int, max_tokens: int = 16) -> None:
    from client.generate import stream_grpc
    for i in range(count):
        for _ in stream_grpc(grpc_url, f"Warm request {i}: the quick brown fox", max_tokens=max_tokens, timeout_s=300):
            pass


def report(sample, label: str) -> str:
    lines = [f"idle CPU of {label}: {sample.percent_of_one_core:.3f}% of one core "
             f"({sample.cpu_seconds:.3f} CPU s in {sample.seconds:.1f} s; target < {TARGET_PERCENT}%)"]
    lines += [f"  {name}: {seconds:.3f} s" for name, seconds in sample.per_process.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.idle_cpu", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="host:port of a running server (HTTP, gRPC or metrics port)")
    where.add_argument("--pid", type=int, help="pid of a running tritonserver")
    where.add_argument("--model", help="start a server on this model folder (default: the embedded default model)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="for a started server")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warm-requests", type=int, default=2, help="requests sent before measuring (gRPC; 0: none)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait after them before measuring")
    parser.add_argument("--max-percent", type=float, default=TARGET_PERCENT)
    args = parser.parse_args(argv)

    if args.url or args.pid:
        pid = args.pid or pid_listening_on(int(args.url.rsplit(":", 1)[1]))
        grpc_url = args.url if args.url and args.warm_requests else None
        if args.warm_requests and grpc_url:
            send_requests(grpc_url, args.warm_requests)
            time.sleep(args.settle)
        sample = measure_cpu(pid, args.seconds)
        print(report(sample, f"pid {pid}"))
        return int(sample.percent_of_one_core >= args.max_percent)

    from backend.serve import TritonServer, parse_params
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    with TritonServer(model_dir, parse_params(args.param), exit_timeout_s=10).start() as server:
        if args.warm_requests:
            send_requests(server.grpc_url, args.warm_requests)
        time.sleep(args.settle)
        sample = measure_cpu(server.process.pid, args.seconds)
    print(report(sample, f"tritonserver serving {model_dir.name}"))
    return int(sample.percent_of_one_core >= args.max_percent)


if __name__ == "__main__":
    sys.exit(main())

"""Load report: the real perf_analyzer against the real server, inflight vs V1 (static) batching.

    python -m perf_analyzer_configs.load_report [--model DIR] [--concurrency 1 2 4 8 16] [--window-seconds 15]
        [--strategies inflight_batching V1] [--input mixed] [--param key=value ...] [--out DIR] [--no-benchmarks-md]

For each batching strategy it starts tritonserver (default model unless --model; the strategy goes in
through config.pbtxt's gpt_model_type parameter), warms it up, then runs perf_analyzer over gRPC streaming
at each concurrency: closed loop, three measurement windows of --window-seconds each (time_windows mode;
every level takes the same time whatever its speed), numbers taken inside the windows while all streams
are busy (perf_analyzer's drain at the end of the last window left out). Per level: output tokens/s, TTFT p50/p99,
inter-token latency p50/p99 (per request, genai-perf's definition: (last - first response) / (tokens - 1)),
plus, from the server itself over the same time (perf_analyzer_configs/level_sampler.py), ms per engine
step, tokens per step and the CPU the server process tree used. Writes under --out (default
bench_out/load-<time>/): per level the perf_analyzer CSV and profile export, summary.json, summary.csv,
report.md and load_report.png; copies the plot to docs/load_report.png and rewrites the "load" section of
BENCHMARKS.md.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from backend.serve import ROOT, TritonServer, parse_params
from client.timed import timed_stream
from perf_analyzer_configs.level_sampler import LevelSampler, window_rates
from perf_analyzer_configs.server_metrics import engine_gauges
from perf_analyzer_configs.summarize import summarize

PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
CUDART = ROOT / ".tools" / "perf_analyzer" / "nvidia" / "cuda_runtime" / "lib"
INPUTS = {name: ROOT / "perf_analyzer_configs" / f"{name}_prompts.json" for name in ("short", "long", "mixed")}
# Fixed KV budget so runs compare (the default sizes it from free memory, which others on the machine change).
DEFAULT_PARAMS = {"max_tokens_in_paged_kv_cache": "32768"}
TARGETS = "inflight tok/s at 16 >= 5x at 1; >= 2x V1 at 16; inflight p99 ITL at 16 <= 3x at 1"


def run_level(server: TritonServer, concurrency: int, window_s: float, input_file: Path, out: Path) -> dict:
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(CUDART), os.environ.get("LD_LIBRARY_PATH")]))}
    before = engine_gauges(server.metrics_url)
    command = [str(PERF_ANALYZER), "-m", "moe_llm", "-u", server.grpc_url, "-i", "grpc", "--streaming", "--async",
               "--input-data", str(input_file), "--concurrency-range", f"{concurrency}:{concurrency}",
               # three windows, accepted whatever their spread (-s 1000%): a fixed time per level
               "--measurement-mode", "time_windows", "--measurement-interval", str(int(window_s * 1000)),
               "-r", "3", "-s", "1000", "-f", str(out / f"c{concurrency}.csv"),
               "--profile-export-file", str(out / f"c{concurrency}.json")]
    with LevelSampler(server.metrics_url, server.process.pid) as sampler, open(out / f"c{concurrency}.log", "w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"perf_analyzer failed at concurrency {concurrency}; see {out / f'c{concurrency}.log'}")
    time.sleep(0.3)   # one stats refresh after the last request
    after = engine_gauges(server.metrics_url)
    row = summarize(out / f"c{concurrency}.json")
    rates = window_rates(sampler.samples, row["steady_start_ns"], row["steady_end_ns"]) if row["steady_seconds"] else None
    if rates is None:   # no two samples inside the steady window: the whole level
        rates = window_rates(sampler.samples, 0, time.time_ns()) or {}
    nan = float("nan")
    row.update({"engine_steps": nan, "step_ms": nan, "tokens_per_step": nan, "server_cpu_percent": nan, **rates,
                "preemptions": after["vllm:num_preemptions_total"] - before["vllm:num_preemptions_total"]})
    return row


def run_strategy(model_dir: Path, strategy: str, params: dict, levels: list[int], window_s: float, input_file: Path,
                 out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with TritonServer(model_dir, {**params, "gpt_model_type": strategy}, exit_timeout_s=10).start() as server:
        for i in range(2):                     # first-request costs out of the measurement
            timed_stream(server.grpc_url, f"Warm-up {i}: hello", max_tokens=4)
        for c in levels:
            print(f"load_report: {strategy}, concurrency {c}: 3 x {window_s:.0f} s", file=sys.stderr, flush=True)
            rows.append({"strategy": strategy, **run_level(server, c, window_s, input_file, out)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| batching | concurrency | requests | output tok/s | vs c=1 | TTFT p50 (s) | TTFT p99 (s) | ITL p50 (ms) "
             "| ITL p99 (ms) | token gap p99 (ms) | engine step (ms) | tokens/step | server CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    low = min(r["concurrency"] for r in rows)
    base = {r["strategy"]: r["steady_tok_per_s"] for r in rows if r["concurrency"] == low}
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['concurrency']} | {r['steady_requests']} | {r['steady_tok_per_s']:.1f} "
            f"| {r['steady_tok_per_s'] / base[r['strategy']]:.2f}x | {r['steady_ttft_p50']:.3f} "
            f"| {r['steady_ttft_p99']:.3f} | {1000 * r['steady_tpot_p50']:.0f} | {1000 * r['steady_tpot_p99']:.0f} "
            f"| {1000 * r['gap_p99']:.0f} | {r['step_ms']:.0f} | {r['tokens_per_step']:.1f} "
            f"| {r['server_cpu_percent']:.0f}% |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    def get(strategy, c, key):
        return next((r["steady_" + key] for r in rows if r["strategy"] == strategy and r["concurrency"] == c), None)
    top, low = max(r["concurrency"] for r in rows), min(r["concurrency"] for r in rows)
    out = []
    inflight_top, inflight_low = get("inflight_batching", top, "tok_per_s"), get("inflight_batching", low, "tok_per_s")
    if inflight_top and inflight_low:
        ratio = inflight_top / inflight_low
        out.append(f"inflight output tok/s at {top} vs {low}: {ratio:.2f}x (target >= 5x): "
                   f"{'met' if ratio >= 5 else 'NOT met'}")
        itl = get("inflight_batching", top, "tpot_p99") / get("inflight_batching", low, "tpot_p99")
        out.append(f"inflight p99 ITL at {top} vs {low}: {itl:.2f}x (target <= 3x): {'met' if itl <= 3 else 'NOT met'}")
    v1_top = get("V1", top, "tok_per_s")
    if inflight_top and v1_top:
        ratio = inflight_top / v1_top
        out.append(f"inflight vs V1 output tok/s at {top}: {ratio:.2f}x (target >= 2x): "
                   f"{'met' if ratio >= 2 else 'NOT met'}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for strategy, style, color in (("inflight_batching", "-o", "tab:blue"), ("V1", "--s", "tab:orange")):
        rs = [r for r in rows if r["strategy"] == strategy]
        if not rs:
            continue
        c = [r["concurrency"] for r in rs]
        axes[0].plot(c, [r["steady_tok_per_s"] for r in rs], style, color=color, label=strategy)
        for ax, key, scale in ((axes[1], "steady_ttft", 1), (axes[2], "steady_tpot", 1000)):
            ax.plot(c, [scale * r[key + "_p50"] for r in rs], style, color=color, label=f"{strategy} p50")
            ax.plot(c, [scale * r[key + "_p99"] for r in rs], style, color=color, alpha=0.4, label=f"{strategy} p99")
    for ax, title, unit in zip(axes, ("output throughput", "time to first token", "inter-token latency"),
                               ("tokens/s", "s", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (streams)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.suptitle("moe_llm through tritonserver + perf_analyzer (gRPC streaming), inflight vs V1 batching")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.load_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--window-seconds", type=float, default=15, help="perf_analyzer measurement window (3 per level)")
    parser.add_argument("--strategies", nargs="+", default=["inflight_batching", "V1"], choices=["inflight_batching", "V1"])
    parser.add_argument("--input", default="mixed", help="short, long, mixed (perf_analyzer_configs/<name>_prompts.json) "
                                                       "or a perf_analyzer --input-data file")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="engine setting for both servers")
    parser.add_argument("--out", help="output folder (default bench_out/load-<time>)")
    parser.add_argument("--no-benchmarks-md", action="store_true", help="do not touch BENCHMARKS.md or docs/")
    parser.add_argument("--render", metavar="RUN_DIR", help="only re-render the report of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        render(Path(args.render), benchmarks_md=not args.no_benchmarks_md)
        return 0
    subprocess.run([str(ROOT / "scripts" / "install_perf_analyzer.sh")], check=True, stdout=subprocess.DEVNULL)
    input_file = INPUTS.get(args.input, Path(args.input))
    if not input_file.is_file():
        parser.error(f"--input: no such file {input_file}")
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    out = Path(args.out or ROOT / "bench_out" / f"load-{time.strftime('%Y%m%d-%H%M%S')}")
    params = {**DEFAULT_PARAMS, **parse_params(args.param)}
    t0 = time.monotonic()
    rows = []
    for strategy in args.strategies:
        rows += run_strategy(model_dir, strategy, params, args.concurrency, args.window_seconds, input_file,
                             out / strategy)
    minutes = (time.monotonic() - t0) / 60

    command = "python -m perf_analyzer_configs.load_report " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command.strip(), "minutes": minutes, "window_seconds": args.window_seconds,
            "model": model_dir.name, "input": input_file.name, "params": params, "load": os.getloadavg()}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    render(out, benchmarks_md=not args.no_benchmarks_md)
    print(f"\nload_report: results in {out}", file=sys.stderr)
    return 0


def bottleneck(rows: list[dict], params: dict) -> str:
    """What the engine's own step time allows: if a step of B requests costs step(B), output tok/s can grow
    at most (B / step(B)) / (1 / step(1)) from 1 to B streams, whatever the serving layer does."""
    rs = sorted((r for r in rows if r["strategy"] == "inflight_batching"), key=lambda r: r["concurrency"])
    if len(rs) < 2:
        return ""
    low, top = rs[0], rs[-1]
    threads = (f"num_threads {params['num_threads']}" if params.get("num_threads")
               else "num_threads unset = every core for the task pool, see backend/models/placement.place_threads")
    slope = (top["step_ms"] - low["step_ms"]) / (top["tokens_per_step"] - low["tokens_per_step"])
    bound = (top["tokens_per_step"] / top["step_ms"]) / (low["tokens_per_step"] / low["step_ms"])
    return (f"Reading: the engine step grows from {low['step_ms']:.0f} ms at {low['tokens_per_step']:.1f} tokens/step "
            f"(concurrency {low['concurrency']}) to {top['step_ms']:.0f} ms at {top['tokens_per_step']:.1f} tokens/step "
            f"(concurrency {top['concurrency']}): about {slope:.1f} ms more "
            f"per request in the batch. At these step times output tok/s can grow {bound:.2f}x from "
            f"{low['concurrency']} to {top['concurrency']} streams; the steady windows give "
            f"{top['steady_tok_per_s'] / low['steady_tok_per_s']:.2f}x. The steps are measured inside the server, "
            f"whose process tree used {top['server_cpu_percent']:.0f}% of a core at concurrency {top['concurrency']} "
            f"({threads}), with Triton's frontend and the clients on the same cores; "
            "`python -m perf_analyzer_configs.engine_only` gives the engine's own scaling without them. "
            "V1 keeps TTFT waiting for whole batches.")


def render(out: Path, benchmarks_md: bool) -> str:
    """report.md and load_report.png from a run folder's summary.json and meta.json (also BENCHMARKS.md's
    load section and docs/load_report.png when benchmarks_md)."""
    rows, meta = json.loads((out / "summary.json").read_text()), json.loads((out / "meta.json").read_text())
    plot(rows, out / "load_report.png")
    load = meta["load"]
    body = "\n".join([
        f"`{meta['command']}` ({meta['minutes']:.1f} min). The real perf_analyzer (gRPC streaming, closed loop, "
        f"time_windows mode: 3 windows of {meta['window_seconds']:.0f} s per level) against "
        f"tritonserver serving {meta['model']}; input `{meta['input']}` (for `mixed_prompts.json`: prompts of 14-104 "
        f"tokens, fixed output lengths 16-192, mean 91); engine parameters {meta['params']}; batching switched with "
        "`gpt_model_type`. Output tok/s counts the tokens streamed inside the windows while every stream is busy "
        "(perf_analyzer stops sending before the last window ends; that drain is left out, see "
        "perf_analyzer_configs/summarize.py); TTFT and ITL are over the requests sent in that time; ITL = per request (last - first response) / (tokens - 1) (genai-perf); token "
        "gap p99 = every gap between two responses of any request of the level, pooled (vLLM's ITL); engine step "
        "(ms per engine iteration), tokens/step and server CPU (CPU time of the tritonserver process tree / wall "
        "time, 200% = both cores) over the same steady time, from the server's counters sampled every 0.5 s. "
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 cores shared with other work: "
        "read ratios, not absolute numbers. Re-render from the run folder: "
        "`python -m perf_analyzer_configs.load_report --render bench_out/load-...`.", "",
        markdown(rows), "", *[f"- {v}" for v in verdicts(rows)], "", bottleneck(rows, meta["params"]), "",
        "![load report](docs/load_report.png)"])
    (out / "report.md").write_text(body + "\n")
    print(body)
    if benchmarks_md:
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "load_report.png").write_bytes((out / "load_report.png").read_bytes())
        from backend.benchmarks_md import write_section
        write_section("load", body)
    return body


if __name__ == "__main__":
    sys.exit(main())

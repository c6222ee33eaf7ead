"""The load report's workload on the engine alone: closed-loop clients, no Triton, no client processes.

    python -m perf_analyzer_configs.engine_only [--model DIR] [--concurrency 1 16] [--seconds 20] [--input mixed]
                                                [--param k=v ...]

Each of C clients sends the next request of the load report's input (its prompts, max_tokens and min_tokens)
as soon as its previous request finishes, and this thread steps the engine, as the server's engine thread
does. Per level it prints engine steps, ms per step, tokens per step, output tok/s, and TTFT and inter-token
latency (p50, p99) of the requests sent and finished in the timed seconds, as load_report defines them. Next to
load_report's table, it separates the engine's own scaling from what the serving layer (Triton, the
Python stub's IPC, the response thread) and perf_analyzer cost on the same cores.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from backend import LLMEngine, SamplingParams
from backend.config import EngineConfig
from backend.default_model import model_dir_or_default
from backend.serve import parse_params
from perf_analyzer_configs.load_report import DEFAULT_PARAMS, INPUTS
from perf_analyzer_configs.summarize import percentile

WARMUP_STEPS = 20


def load_requests(path: Path) -> list[tuple[str, SamplingParams]]:
    requests = []
    for row in json.loads(path.read_text())["data"]:
        params = SamplingParams(max_tokens=row["max_tokens"][0], min_tokens=row.get("min_tokens", [0])[0])
        requests.append((row["text_input"][0], params))
    return requests


def run_level(engine: LLMEngine, requests: list, concurrency: int, seconds: float) -> dict:
    open_ids, sent = set(), 0
    sent_at, token_times = {}, {}          # request id -> send time; -> times its tokens came out

    def send() -> None:
        nonlocal sent
        prompt, params = requests[sent % len(requests)]
        request_id = f"c{concurrency}-{sent}"
        engine.add_request(request_id, prompt, params)
        sent_at[request_id] = time.perf_counter()
        token_times[request_id] = []
        open_ids.add(request_id)
        sent += 1

    def refill(outputs) -> None:           # a client sends its next request when its previous one finishes
        now = time.perf_counter()
        for o in outputs:
            token_times[o.request_id].extend([now] * len(o.new_token_ids))
            if o.finished:
                open_ids.discard(o.request_id)
                send()

    for _ in range(concurrency):
        send()
    for _ in range(WARMUP_STEPS):          # the first steps prefill every client's first prompt at once
        refill(engine.step())
    steps, tokens = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        outputs = engine.step()
        steps.append(time.perf_counter() - t0)
        tokens += sum(len(o.new_token_ids) for o in outputs)
        refill(outputs)
    wall = time.perf_counter() - start
    for request_id in open_ids:            # the level's leftovers, not timed
        engine.abort(request_id)
    while engine.has_unfinished_requests():
        engine.step()
    # Latencies of the requests sent and finished inside the timed seconds (genai-perf's definitions, as in
    # load_report): TTFT = first token - send; ITL = (last - first token) / (tokens - 1) per request.
    done = [r for r, t in token_times.items()
            if r not in open_ids and len(t) > 1 and start <= sent_at[r] <= t[-1] <= start + wall]
    ttft = [1000 * (token_times[r][0] - sent_at[r]) for r in done]
    itl = [1000 * (token_times[r][-1] - token_times[r][0]) / (len(token_times[r]) - 1) for r in done]

    def p(values, q):
        return percentile(values, q) if values else float("nan")

    return dict(concurrency=concurrency, steps=len(steps), step_ms=1000 * statistics.mean(steps),
                tokens_per_step=tokens / len(steps), tok_s=tokens / wall, requests=len(done),
                ttft_p50=p(ttft, 0.5), ttft_p99=p(ttft, 0.99), itl_p50=p(itl, 0.5), itl_p99=p(itl, 0.99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.engine_only", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per level")
    parser.add_argument("--input", default="mixed", help="short, long, mixed (perf_analyzer_configs/<name>_prompts.json)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="engine setting")
    args = parser.parse_args(argv)
    params = {**DEFAULT_PARAMS, **parse_params(args.param)}
    engine = LLMEngine(EngineConfig.from_dict({"model": str(model_dir_or_default(args.model)), **params}))
    requests = load_requests(INPUTS.get(args.input, Path(args.input)))
    rows = [run_level(engine, requests, c, args.seconds) for c in args.concurrency]
    print(f"engine alone, input {args.input}, {params}, {args.seconds:.0f} s per level after {WARMUP_STEPS} steps:")
    print("| concurrency | steps | ms per step | tokens/step | output tok/s | vs first level | requests | TTFT p50 / p99 (ms) "
          "| ITL p50 / p99 (ms) | p99 ITL vs first level |\n|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['steps']} | {r['step_ms']:.1f} | {r['tokens_per_step']:.1f} | {r['tok_s']:.1f} | "
              f"{r['tok_s'] / rows[0]['tok_s']:.2f}x | {r['requests']} | {r['ttft_p50']:.1f} / {r['ttft_p99']:.1f} | "
              f"{r['itl_p50']:.1f} / {r['itl_p99']:.1f} | {r['itl_p99'] / rows[0]['itl_p99']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prefix reuse through the server: a long shared system prompt + short questions, with and without
enable_kv_cache_reuse, on the default model (or --model).

    python -m perf_analyzer_configs.prefix_reuse [--model DIR] [--questions 6] [--max-tokens 24] [--out DIR]

Starts the server twice (prefix cache on, then off), sends the same requests one after the other to each
and reports time to first token per request, the prefix-cache hit rate and reused blocks from /metrics,
and whether the outputs are identical (greedy). Target: later requests' TTFT at least 2x lower with the
cache than without. Writes prefix_reuse.json and prefix_reuse.md under --out (default bench_out/).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from backend.serve import ROOT, TritonServer
from client.timed import timed_stream
from perf_analyzer_configs.server_metrics import engine_gauges

SYSTEM = ("You are the support assistant of a company that runs large language models on small servers. "
          "Answer in one or two sentences, politely, and say when you do not know. Background: the server "
          "keeps the keys and values of every request in a paged cache made of blocks of sixteen tokens; a "
          "scheduler decides at every step which requests run, admits new ones when blocks are free, and can "
          "pause a request and recompute it later when memory runs out; a mixture-of-experts model sends each "
          "token to two of its experts, chosen by a router, so only part of the weights is read per token; "
          "requests that start with the same text can share the cached blocks of that text, which saves the "
          "time of computing them again. ") * 4
QUESTIONS = ["What is a block?", "Why are requests paused?", "What does the router do?", "How is memory saved?",
             "Who decides which requests run?", "How many experts does a token use?", "What is shared?",
             "What happens when memory runs out?"]
TARGET_SPEED_UP = 2.0


def prompt_of(question: str) -> str:
    return f"{SYSTEM}\nQuestion: {question}\nAnswer:"


def run(model_dir: Path, reuse: bool, questions: list[str], max_tokens: int) -> dict:
    params = {"enable_kv_cache_reuse": str(reuse).lower(), "max_tokens_in_paged_kv_cache": "16384"}
    with TritonServer(model_dir, params, exit_timeout_s=10).start() as server:
        timed_stream(server.grpc_url, "Warm-up request.", max_tokens=2)     # first-connection costs out of the way
        before = engine_gauges(server.metrics_url)
        results = [timed_stream(server.grpc_url, prompt_of(q), max_tokens=max_tokens, min_tokens=1)
                   for q in questions]
        time.sleep(0.5)   # one stats refresh
        after = engine_gauges(server.metrics_url)
    return {"ttft_s": [r.ttft for r in results], "texts": [r.text for r in results],
            "prefix_cache_queries": after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"],
            "prefix_cache_hits": after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"],
            "reused_blocks": after["kv_reused"] - before["kv_reused"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf_analyzer_configs.prefix_reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--questions", type=int, default=6, choices=range(2, len(QUESTIONS) + 1))
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", default=str(ROOT / "bench_out"))
    args = parser.parse_args(argv)
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    from transformers import AutoTokenizer
    system_tokens = len(AutoTokenizer.from_pretrained(model_dir).encode(SYSTEM))
    questions = QUESTIONS[:args.questions]
    on = run(model_dir, True, questions, args.max_tokens)
    off = run(model_dir, False, questions, args.max_tokens)
    later_on, later_off = statistics.median(on["ttft_s"][1:]), statistics.median(off["ttft_s"][1:])
    speed_up = later_off / later_on
    identical = on["texts"] == off["texts"]
    hit_rate = on["prefix_cache_hits"] / on["prefix_cache_queries"] if on["prefix_cache_queries"] else 0.0
    lines = [f"Shared system prompt of {system_tokens} tokens + {len(questions)} short questions, one after the other, "
             f"greedy, {args.max_tokens} new tokens at most; model {model_dir.name}.", "",
             "| request | TTFT with prefix cache (ms) | TTFT without (ms) |", "|---:|---:|---:|"]
    lines += [f"| {i + 1}{' (cold)' if i == 0 else ''} | {a * 1000:.0f} | {b * 1000:.0f} |"
              for i, (a, b) in enumerate(zip(on["ttft_s"], off["ttft_s"]))]
    lines += ["", f"Later requests (2..{len(questions)}), median TTFT: {later_on * 1000:.0f} ms with the cache, "
              f"{later_off * 1000:.0f} ms without: **{speed_up:.1f}x** faster (target >= {TARGET_SPEED_UP:.0f}x). "
              f"Prefix cache: {on['prefix_cache_hits']:.0f} of {on['prefix_cache_queries']:.0f} prompt tokens hit "
              f"({100 * hit_rate:.0f}%), {on['reused_blocks']:.0f} blocks reused. Outputs identical with and without "
              f"the cache: **{'yes' if identical else 'NO'}**."]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_reuse.md").write_text(text + "\n")
    (out / "prefix_reuse.json").write_text(json.dumps({"model": str(model_dir), "system_tokens": system_tokens,
                                                       "with_cache": on, "without_cache": off, "speed_up": speed_up,
                                                       "hit_rate": hit_rate, "identical": identical}, indent=1))
    return int(not identical or speed_up < TARGET_SPEED_UP)


if __name__ == "__main__":
    sys.exit(main())

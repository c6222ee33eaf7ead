"""Prefill benchmark: time to first token of one request alone, at several prompt lengths, on the engine.

    python -m backend.bench_prefill [--model DIR] [--lengths 250 1000 2000] [--repeats 3]

Each prompt (the first N tokens of a fixed text) runs alone with max_tokens=1 and the prefix cache off, so
every repeat prefills the whole prompt in one step (max_num_tokens is raised to the longest). Prints the
median ms and prompt tokens/s per length. Long prompts are where attention's share of a prefill grows.
"""
import argparse
import statistics
import sys
import time

from backend import LLMEngine, SamplingParams
from backend.config import EngineConfig
from backend.default_model import model_dir_or_default

TEXT = ("The harbour town woke slowly. Fishing boats came back before sunrise, and the market opened as soon as "
        "the first crates were unloaded. Traders argued about the price of mackerel while the gulls waited. ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.bench_prefill", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 1000, 2000], help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    longest = max(args.lengths)
    engine = LLMEngine(EngineConfig.from_dict({"model": str(model_dir_or_default(args.model)),
                                               "max_num_tokens": str(max(2048, longest)), "enable_kv_cache_reuse": "false"}))
    ids = engine.tokenizer(TEXT * (longest // 20 + 1))["input_ids"]
    if len(ids) < longest:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than --lengths asks for")
    print("| prompt tokens | TTFT ms (median) | runs (ms) | prompt tokens/s |\n|---:|---:|---|---:|")
    for n in args.lengths:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            engine.generate(ids[:n], SamplingParams(max_tokens=1))
            times.append(time.perf_counter() - t0)
        ms = 1000 * statistics.median(times)
        print(f"| {n} | {ms:.1f} | {', '.join(f'{1000 * t:.1f}' for t in times)} | {n / ms * 1000:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

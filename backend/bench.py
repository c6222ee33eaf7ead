"""Engine benchmark: TTFT and output tokens/s at several concurrencies on the default model, next
to transformers `generate` (static batch, same prompts and lengths) measured in the same run.

    python -m backend.bench [--model DIR] [--concurrency 1 4 16] [--max-tokens 64] [--write]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

from backend.benchmarks_md import write_section

TEXT = ("Mixture-of-experts models route every token to a few experts, so a server must batch requests "
        "from many users at every step to keep the hardware busy. Paged attention stores keys and values in "
        "fixed-size blocks, which lets requests of very different lengths share one cache without waste. ")


def make_prompts(tokenizer, n: int) -> list[list[int]]:
    """Mixed prompt lengths (about 20 to 200 tokens), deterministic."""
    words = (TEXT * 8).split()
    prompts = []
    for i in range(n):
        length = 12 + (i * 37) % 120
        question = " ".join(words[i % 17: i % 17 + length])
        chat = [{"role": "user", "content": f"Summarise: {question}"}]
        prompts.append(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))
    return prompts


def bench_engine(engine, prompts, max_tokens):
    from backend import SamplingParams
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    first = {}
    for i, p in enumerate(prompts):
        engine.add_request(f"b{i}", p, params)
    generated = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            generated += len(out.new_token_ids)
            first.setdefault(out.request_id, time.perf_counter() - start)
    wall = time.perf_counter() - start
    return dict(ttft_ms=1000 * statistics.median(first.values()), tok_s=generated / wall, wall_s=wall)


class _FirstTokenClock:
    """Logits processor that notes when generate() has produced its first logits (= TTFT)."""

    def __init__(self, start):
        self.start, self.ttft = start, None

    def __call__(self, input_ids, scores):
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.start
        return scores


def bench_transformers(model, tokenizer, prompts, max_tokens):
    from transformers import LogitsProcessorList
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    clock = _FirstTokenClock(start)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=pad, logits_processor=LogitsProcessorList([clock]))
    wall = time.perf_counter() - start
    generated = (out.shape[1] - longest) * len(prompts)
    return dict(ttft_ms=1000 * clock.ttft, tok_s=generated / wall, wall_s=wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--expert-dtypes", nargs="+", default=["fp32", "int8"],
                    help="engine runs, one per routed-expert dtype (fp32 = the same arithmetic as transformers)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per cell; the best is kept (the machine is noisy)")
    ap.add_argument("--json", default=os.path.join("bench_out", "engine_bench.json"))
    ap.add_argument("--write", action="store_true", help="update the engine section of BENCHMARKS.md")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from backend import LLMEngine
    model_dir = args.model
    if model_dir is None:
        from backend.default_model import ensure_default_model
        model_dir = ensure_default_model()
    # fp32 experts run with fp32 dense linears and KV: transformers' arithmetic; the others with the defaults.
    exact = dict(dense_dtype="fp32", kv_cache_dtype="fp32")
    engines = {d: LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=64 * 1024, max_seq_len=2048,
                                            expert_dtype=d, **(exact if d == "fp32" else {})) for d in args.expert_dtypes}
    tokenizer = next(iter(engines.values())).tokenizer
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts_all = make_prompts(tokenizer, max(args.concurrency))
    bench_transformers(hf, tokenizer, prompts_all[:1], 2)        # warm up before timing (engines warm up at load)
    rows = []
    for c in args.concurrency:
        prompts = prompts_all[:c]
        best = lambda runs: max(runs, key=lambda r: r["tok_s"])
        ref = best([bench_transformers(hf, tokenizer, prompts, args.max_tokens) for _ in range(args.repeats)])
        for dtype, engine in engines.items():
            ours = best([bench_engine(engine, prompts, args.max_tokens) for _ in range(args.repeats)])
            rows.append(dict(concurrency=c, expert_dtype=dtype, prompt_tokens=sum(map(len, prompts)), engine=ours,
                             transformers=ref, speedup=ours["tok_s"] / ref["tok_s"]))
            print(f"c={c} {dtype}: engine {ours['tok_s']:.1f} tok/s, transformers {ref['tok_s']:.1f} tok/s", file=sys.stderr)

    header = ("| concurrent requests | engine experts | prompt tokens (total) | engine TTFT p50 ms | transformers TTFT ms | "
              "engine output tok/s | transformers output tok/s | engine / transformers |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {r['concurrency']} | {r['expert_dtype']} | {r['prompt_tokens']} | {r['engine']['ttft_ms']:.0f} | "
        f"{r['transformers']['ttft_ms']:.0f} | {r['engine']['tok_s']:.1f} | {r['transformers']['tok_s']:.1f} | "
        f"{r['speedup']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(model=str(model_dir), max_tokens=args.max_tokens, threads=torch.get_num_threads(), rows=rows), f, indent=2)
    if args.write:
        cmd = "python -m backend.bench --write" + ("" if args.concurrency == [1, 4, 16] else
                                                    " --concurrency " + " ".join(map(str, args.concurrency)))
        write_section("engine", f"Command: `{cmd}` (default model, mixed prompt lengths, {args.max_tokens} output tokens "
                      f"per request, greedy, fp32 activations; fp32 rows with fp32 dense linears and KV cache, the others "
                      f"with the defaults (bf16 dense linears and KV cache), default engine threads (every core in the task pool; "
                      f"all but one for the torch-run fp32 rows), best of {args.repeats} runs "
                      f"per cell; transformers "
                      f"`generate` runs the same prompts as one static left-padded batch with fp32 experts; "
                      f"all measured in the same run).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

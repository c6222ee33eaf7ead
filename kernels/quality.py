"""Quality of quantized routed experts on a real checkpoint.

Teacher-forces a fixed text through a Hugging Face MoE model (transformers 5 experts modules: gate_up_proj
[E, 2I, H], down_proj [E, H, I], SiLU) with every experts module replaced first by the fp32 torch
reference (kernels/moe_reference.py), then by CpuExperts of each expert dtype, and reports per dtype the
top-1 agreement of the next-token predictions and the mean KL(reference || quantized) per token.

    python -m kernels.quality --model .cache/models/smollm2-moe [--dtypes bf16,int8,int4] [--json out.json]
"""
import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.cpu_moe import CpuExperts, describe_cpu
from kernels.moe_reference import moe_reference

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / ".cache" / "models" / "smollm2-moe"
TARGETS = {"int8": 0.99}   # minimum top-1 agreement
TEXT = (
    "The harbour town woke slowly. Fishing boats came back before sunrise, and the market opened as soon as the "
    "first crates were unloaded. Traders argued about the price of mackerel, children carried bread from the "
    "bakery on the hill, and an old man repaired nets on the quay, as he had done every morning for forty years. "
    "In the afternoon the wind turned and clouds gathered over the lighthouse. The harbour master raised the storm "
    "flag, and the boats were tied twice. By evening the rain had arrived, heavy and warm, and the streets emptied. "
    "A computer stores numbers in binary. Each bit is either zero or one, and eight bits make a byte. Programs "
    "read bytes from memory, combine them with arithmetic, and write the results back. Memory is slower than the "
    "processor, so caches keep recently used data close to the cores. When a program reads the same data many "
    "times, the cache makes it fast; when it streams through a large array once, the speed is set by the memory "
    "bandwidth. Question: what is the capital of France? Answer: the capital of France is Paris. Question: how "
    "many days are there in a week? Answer: there are seven days in a week. To make a cup of tea, boil fresh "
    "water, warm the pot, add one spoon of leaves for each person, pour the water, and wait four minutes. "
    "The library on Elm Street keeps its oldest maps in a cool room without windows. Visitors sign a book at the "
    "door, wash their hands, and turn the pages with a thin wooden stick. One map shows the river before the dam "
    "was built, when the valley flooded every spring and the farmers planted rice instead of wheat. Another shows "
    "a road that was never finished; it stops in the middle of a forest, next to a stone marked with a date. "
    "Learning a language takes patience. At first every sentence is a puzzle: you look up each word, guess the "
    "grammar, and still miss the meaning. After a few months the common words become automatic and you start to "
    "notice the rhythm of the speech. Reading simple stories helps, and so does talking with people who are kind "
    "enough to repeat themselves. Mistakes are part of the process, not a sign of failure. "
    "To sort a list of numbers, a simple method compares each pair of neighbours and swaps them when they are in "
    "the wrong order, repeating until nothing changes. It is easy to write but slow for long lists. Faster methods "
    "split the list into halves, sort each half, and merge the results, or pick a pivot and move smaller values to "
    "its left and larger values to its right. Most programming languages provide a sort function that does this "
    "well, so you rarely need to write your own. "
    "The spring festival begins with a parade. Musicians walk in front, followed by dancers in red and gold, and "
    "at the end comes a dragon made of paper and cloth, carried by twenty people who make it twist and jump. "
    "Families buy sweets from the stalls along the square, and in the evening lanterns are lit and sent floating "
    "down the canal. Old friends meet, young couples walk slowly, and the celebration goes on past midnight. "
    "Question: which planet is closest to the sun? Answer: Mercury is the closest planet to the sun. Question: "
    "what do plants need to grow? Answer: plants need light, water, air and nutrients from the soil. Question: "
    "why is the sky blue? Answer: air scatters blue light from the sun more than red light, so the sky looks blue. "
    "A good recipe for bread needs only flour, water, salt and yeast. Mix them, knead the dough for ten minutes, "
    "and let it rise in a warm place until it has doubled in size. Shape the loaf, let it rise again, and bake it "
    "in a hot oven until the crust is brown and the bottom sounds hollow when you tap it."
)


def expert_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules holding stacked routed experts in our layout."""
    found = []
    for name, m in model.named_modules():
        gu, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
        if isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3 and down.dim() == 3:
            E, I2, H = gu.shape
            if tuple(down.shape) != (E, H, I2 // 2) or getattr(m, "gate_up_proj_bias", None) is not None:
                raise ValueError(f"{name}: experts layout {tuple(gu.shape)}/{tuple(down.shape)} is not "
                                 "gate_up_proj [E, 2I, H], down_proj [E, H, I] without biases")
            probe = torch.linspace(-4, 4, 9)
            act = getattr(m, "act_fn", None)
            if act is None or not torch.allclose(act(probe), F.silu(probe)):
                raise ValueError(f"{name}: activation {getattr(m, 'act_fn', None)} is not SiLU")
            found.append((name, m))
    return found


class ReferenceExperts:
    def __init__(self, w13: torch.Tensor, w2: torch.Tensor):
        self.w13, self.w2 = w13.float(), w2.float()

    def forward(self, x, topk_ids, topk_weights):
        return moe_reference(x.float(), self.w13, self.w2, topk_ids, topk_weights).to(x.dtype)


def install(modules, make) -> None:
    """Replace each experts module's forward by make(w13, w2).forward."""
    for _, m in modules:
        experts = make(m.gate_up_proj.detach(), m.down_proj.detach())

        def forward(self, hidden_states, top_k_index, top_k_weights, _experts=experts):
            return _experts.forward(hidden_states, top_k_index, top_k_weights.float())

        m.forward = types.MethodType(forward, m)


@torch.inference_mode()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids[None]).logits[0, :-1].float()            # [L-1, V]: predictions for ids[1:]


def compare(ref: torch.Tensor, out: torch.Tensor, targets: torch.Tensor) -> dict:
    # float64: in fp32 the log-softmax rounding alone gives |KL| ~1e-8 (even negative) for logits equal to ~1e-6.
    ref_logp, logp = F.log_softmax(ref.double(), -1), F.log_softmax(out.double(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)                   # [L-1]
    return {"top1_agreement": (ref.argmax(-1) == out.argmax(-1)).float().mean().item(),
            "mean_kl": kl.mean().item(), "max_kl": kl.max().item(),
            "ppl": math.exp(F.nll_loss(logp, targets).item())}


def run(model_dir: str, dtypes: list[str], group_size: int, max_tokens: int, kernel: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    modules = expert_modules(model)
    if not modules:
        raise SystemExit(f"{model_dir}: no experts modules with gate_up_proj [E, 2I, H] / down_proj [E, H, I] found")
    ids = torch.tensor(tok(TEXT)["input_ids"][:max_tokens])
    install(modules, ReferenceExperts)
    ref = logits_of(model, ids)
    result = {"model": str(model_dir), "tokens": int(ids.numel()), "expert_layers": len(modules),
              "cpu": describe_cpu(), "group_size": group_size,
              "reference": {"ppl": math.exp(F.cross_entropy(ref, ids[1:]).item())}, "dtypes": {}}
    for dtype in dtypes:
        t0 = time.perf_counter()
        install(modules, lambda w13, w2: CpuExperts.from_weights(w13, w2, dtype, group_size, kernel=kernel))
        out = logits_of(model, ids)
        result["dtypes"][dtype] = {**compare(ref, out, ids[1:]), "seconds": round(time.perf_counter() - t0, 1),
                                   "target_top1": TARGETS.get(dtype)}
    return result


def format_table(r: dict) -> str:
    lines = [f"model {r['model']}: {r['tokens']} tokens teacher-forced, {r['expert_layers']} expert layers; "
             f"fp32 reference ppl {r['reference']['ppl']:.3f}",
             f"{'experts':<8} {'top-1 agree':>11} {'mean KL':>10} {'max KL':>9} {'ppl':>8}  target"]
    for dtype, m in r["dtypes"].items():
        label = f"{dtype}(g{r['group_size']})" if dtype == "int4" else dtype
        target = m["target_top1"]
        verdict = "" if target is None else f">= {target:.0%}: {'PASS' if m['top1_agreement'] >= target else 'FAIL'}"
        lines.append(f"{label:<8} {m['top1_agreement']:>11.2%} {m['mean_kl']:>10.2e} {m['max_kl']:>9.2e} "
                     f"{m['ppl']:>8.3f}  {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="HF MoE checkpoint folder (default: %(default)s)")
    p.add_argument("--dtypes", default="bf16,int8,int4", help="comma-separated expert dtypes to compare")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--tokens", type=int, default=1024, help="at most this many tokens of the text")
    p.add_argument("--kernel", default="auto", help="CpuExperts kernel: auto, a variant name or torch")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--check", action="store_true", help="exit 1 when a dtype misses its target")
    args = p.parse_args(argv)
    if not Path(args.model).is_dir():
        print(f"--model {args.model}: no such folder (the default model is built by `python -m backend.default_model`)",
              file=sys.stderr)
        return 2
    result = run(args.model, args.dtypes.split(","), args.group_size, args.tokens, args.kernel)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    missed = [d for d, m in result["dtypes"].items() if m["target_top1"] and m["top1_agreement"] < m["target_top1"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Greedy tokens must equal transformers `generate`, family by family, including prompts that end
exactly on and just past a KV block boundary, alone and batched, with prefills and decodes mixed."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from backend import LLMEngine, SamplingParams
from tests.tiny_models import FAMILIES

BLOCK = 16
PROMPT_LENS = (1, 7, BLOCK, BLOCK + 1, 2 * BLOCK, 45)
NEW_TOKENS = 32


def prompts():
    return [[(7 * i + 3 * n) % 300 + 5 for i in range(n)] for n in PROMPT_LENS]


def bf16_experts_forward(self, x, topk_ids, topk_weights):
    """transformers' experts computed as bf16 experts are specified: bf16 weights, bf16 inputs to each
    GEMM, fp32 accumulation (what the fused CPU kernel implements)."""
    r = lambda t: t.to(torch.bfloat16).float()
    w13, w2, inter = r(self.gate_up_proj), r(self.down_proj), self.down_proj.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(topk_ids.shape[1]):
            e = int(topk_ids[t, k])
            h = r(x[t]) @ w13[e].T
            out[t] += topk_weights[t, k] * (r(torch.nn.functional.silu(h[:inter]) * h[inter:]) @ w2[e].T)
    return out


def hf_greedy(model_dir, prompt_list, n=NEW_TOKENS, expert_dtype="fp32"):
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if expert_dtype == "bf16":
        for module in hf.modules():
            if hasattr(module, "gate_up_proj") and hasattr(module, "down_proj"):
                module.forward = bf16_experts_forward.__get__(module)
    out = []
    for p in prompt_list:
        ids = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
        out.append(ids[0, len(p):].tolist())
    return out


@pytest.mark.parametrize("expert_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_transformers(tiny_model, family, expert_dtype):
    """fp32 experts run the torch reference; bf16 experts run the fused CPU kernel."""
    model_dir = tiny_model(family)
    ref = hf_greedy(model_dir, prompts(), expert_dtype=expert_dtype)
    engine = LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK,
                                       warmup=False, expert_dtype=expert_dtype)
    greedy = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    together = engine.generate(prompts(), greedy)
    assert [r.token_ids for r in together] == ref
    alone = [engine.generate(p, greedy)[0].token_ids for p in prompts()]
    assert alone == ref
    assert engine.stats().kv_blocks_used == 0


def test_staggered_arrivals_match(tiny_model):
    """Requests joining a running batch at different steps (inflight batching) give the same tokens."""
    model_dir = tiny_model("qwen3_moe")
    ref = hf_greedy(model_dir, prompts())
    engine = LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK,
                                       warmup=False, expert_dtype="fp32")
    greedy = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    tokens: dict[str, list[int]] = {}
    pending = list(enumerate(prompts()))
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and step % 3 == 0:          # a new request every third step
            i, p = pending.pop(0)
            engine.add_request(str(i), p, greedy)
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        step += 1
    assert [tokens[str(i)] for i in range(len(ref))] == ref
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("settings", [
    dict(enable_chunked_context=True, max_num_tokens=10),
    dict(batch_scheduler_policy="max_utilization", max_tokens_in_paged_kv_cache=160),
    dict(batching_strategy="V1", max_batch_size=2),
    dict(enable_kv_cache_reuse=True),
])
def test_scheduling_modes_keep_greedy_tokens(tiny_model, settings):
    model_dir = tiny_model("mixtral")
    ref = hf_greedy(model_dir, prompts())
    cfg = dict(max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK, warmup=False, expert_dtype="fp32")
    engine = LLMEngine.from_pretrained(model_dir, **{**cfg, **settings})
    greedy = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    assert [r.token_ids for r in engine.generate(prompts(), greedy)] == ref
    if settings.get("batch_scheduler_policy") == "max_utilization":
        assert engine.stats().num_preemptions > 0, "the small KV budget must force preemption"
    if settings.get("enable_kv_cache_reuse"):   # second pass hits the prefix cache and still matches
        assert [r.token_ids for r in engine.generate(prompts(), greedy)] == ref
        assert engine.stats().prefix_cache_hits > 0
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_torch_decode_attention_matches_too(tiny_model, family):
    """Without the CPU extension, prefills run torch SDPA and decodes gather the context in torch: the same tokens."""
    model_dir = tiny_model(family)
    engine = LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK,
                                       warmup=False, expert_dtype="fp32")
    assert engine.runner.use_paged_kernel, "the CPU extension should be built here (python -m kernels.build)"
    engine.runner.use_paged_kernel = False
    out = engine.generate(prompts(), SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in out] == hf_greedy(model_dir, prompts())
    assert engine.stats().kv_blocks_used == 0


def test_bf16_dense_linears_keep_requests_batch_invariant(tiny_model):
    """dense_dtype=bf16 (the default for bf16 checkpoints) on a tiny model: tokens alone == tokens batched."""
    engine = LLMEngine.from_pretrained(tiny_model("qwen2_moe"), max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK,
                                       warmup=False, dense_dtype="bf16")
    assert engine.kv_dtype == torch.bfloat16
    greedy = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    together = [r.token_ids for r in engine.generate(prompts(), greedy)]
    assert together == [engine.generate(p, greedy)[0].token_ids for p in prompts()]
    assert engine.stats().kv_blocks_used == 0


def test_prefill_attention_does_not_depend_on_how_the_prompt_arrives(tiny_model):
    """With the CPU extension, every prefill row attends through the paged kernel like a decode row: a prompt
    prefilled whole, in chunks of 10 tokens, or after a prefix-cache hit gives the same logprobs, bit for bit
    (batch-invariant bf16 dense linears and bf16 experts, so attention is the only path that could differ)."""
    cfg = dict(max_tokens_in_paged_kv_cache=4096, tokens_per_block=BLOCK, warmup=False, dense_dtype="bf16",
               expert_dtype="bf16")
    model_dir = tiny_model("qwen3_moe")
    params = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True)
    long_prompts = [p for p in prompts() if len(p) > BLOCK]

    def run(engine, rounds=1):
        for _ in range(rounds):
            out = [(r.token_ids, r.logprobs) for r in engine.generate(long_prompts, params)]
        assert engine.stats().kv_blocks_used == 0
        return out

    whole = LLMEngine.from_pretrained(model_dir, **cfg)
    assert whole.runner.use_paged_kernel, "the CPU extension should be built here (python -m kernels.build)"
    expected = run(whole)
    assert run(LLMEngine.from_pretrained(model_dir, **cfg, enable_chunked_context=True, max_num_tokens=10)) == expected
    reuse = LLMEngine.from_pretrained(model_dir, **cfg, enable_kv_cache_reuse=True)
    assert run(reuse, rounds=2) == expected and reuse.stats().prefix_cache_hits > 0

"""KV capacity, admission under both policies, preemption, chunking, and no leaked blocks."""
import pytest

from backend import LLMEngine, SamplingParams

BLOCK = 16


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("mixtral")


def engine(model_dir, **cfg):
    return LLMEngine.from_pretrained(model_dir, **{"tokens_per_block": BLOCK, "warmup": False, **cfg})


@pytest.mark.parametrize("tokens,blocks", [(1000, 63), (1008, 63), (1009, 64), (16, 1)])
def test_capacity_is_configured_tokens_rounded_up_to_blocks(model_dir, tokens, blocks):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=tokens)
    s = e.stats()
    assert (s.kv_blocks_max, s.kv_blocks_free, s.kv_blocks_used, s.tokens_per_block) == (blocks, blocks, 0, BLOCK)


def test_capacity_from_free_memory_when_unset(model_dir):
    e = engine(model_dir, kv_cache_free_mem_fraction=0.01, max_batch_size=4)
    # capped at max_batch_size x max_seq_len (512 for the tiny model)
    assert e.stats().kv_blocks_max == 4 * 512 // BLOCK


def run_until_first_step(e, n, prompt_len, max_tokens, outs=None):
    for i in range(n):
        e.add_request(str(i), [5 + i] * prompt_len, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    for o in e.step():
        if outs is not None:
            outs.setdefault(o.request_id, []).extend(o.new_token_ids)
    return e.stats()


def test_no_evict_schedules_all_the_budget_holds(model_dir):
    # each request reserves prompt 16 + max_tokens 48 = 64 tokens = 4 blocks; 8 requests fit in 32 blocks
    e = engine(model_dir, max_tokens_in_paged_kv_cache=32 * BLOCK)
    s = run_until_first_step(e, 12, 16, 48)
    assert (s.active, s.scheduled, s.waiting) == (12, 8, 4)
    assert s.kv_blocks_used == 32
    while e.has_unfinished_requests():
        e.step()
        assert e.stats().num_preemptions == 0
    assert e.stats().kv_blocks_used == 0


def test_max_utilization_schedules_more_and_preempts(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=32 * BLOCK, batch_scheduler_policy="max_utilization")
    outs = {}
    s = run_until_first_step(e, 12, 16, 48, outs)
    assert s.scheduled > 8                        # allocates as it goes: more run at once
    while e.has_unfinished_requests():
        for o in e.step():
            outs.setdefault(o.request_id, []).extend(o.new_token_ids)
    assert e.stats().num_preemptions > 0
    assert all(len(v) == 48 for v in outs.values()) and len(outs) == 12
    assert e.stats().kv_blocks_used == 0


def test_max_batch_size_caps_the_batch(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096, max_batch_size=3)
    s = run_until_first_step(e, 5, 8, 4)
    assert (s.scheduled, s.waiting) == (3, 2)


def test_token_budget_limits_prefills_per_step(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096, max_num_tokens=40)
    s = run_until_first_step(e, 4, 16, 4)
    assert s.scheduled == 2 and s.context_tokens == 32


def test_chunked_context_splits_a_long_prompt(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096, max_num_tokens=32, enable_chunked_context=True)
    e.add_request("long", list(range(5, 105)), SamplingParams(max_tokens=2, ignore_eos=True))
    steps = 0
    while e.has_unfinished_requests():
        outs = e.step()
        steps += 1
        assert e.stats().context_tokens <= 32
    assert steps == 4 + 1        # ceil(100 / 32) prefill steps, then one decode


def test_v1_batching_waits_for_the_batch_to_finish(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096, batching_strategy="V1")
    e.add_request("a", [5] * 8, SamplingParams(max_tokens=6, ignore_eos=True))
    e.step()
    e.add_request("b", [6] * 8, SamplingParams(max_tokens=2, ignore_eos=True))
    e.step()
    assert e.stats().scheduled == 1 and e.stats().waiting == 1   # inflight batching would have taken b
    while e.has_unfinished_requests():
        e.step()
    assert e.stats().kv_blocks_used == 0


def test_abort_frees_blocks_within_one_step(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096)
    e.add_request("a", [5] * 20, SamplingParams(max_tokens=50, ignore_eos=True))
    e.add_request("b", [6] * 20, SamplingParams(max_tokens=50, ignore_eos=True))
    e.step()
    e.abort("a")
    outs = e.step()
    cancelled = [o for o in outs if o.request_id == "a"]
    assert cancelled and cancelled[0].finished and cancelled[0].finish_reason == "cancelled"
    e.abort("b")
    e.step()
    assert e.stats().kv_blocks_used == 0 and not e.has_unfinished_requests()


def test_prefix_cache_shares_blocks(model_dir):
    e = engine(model_dir, max_tokens_in_paged_kv_cache=4096, enable_kv_cache_reuse=True)
    system = list(range(5, 5 + 3 * BLOCK))
    first = e.generate(system + [200, 201], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    hits_before = e.stats().prefix_cache_hits
    second = e.generate(system + [200, 201], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    s = e.stats()
    assert s.prefix_cache_hits - hits_before == 3 * BLOCK and s.kv_blocks_reused >= 3
    assert first.token_ids == second.token_ids
    assert s.kv_blocks_used == 0

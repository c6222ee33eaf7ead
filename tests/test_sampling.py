"""Sampling parameters: seeded reproducibility in any batch, penalties, min_tokens, stops, logprobs."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from backend import LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen2_moe")


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=8192, warmup=False)


PROMPT = [11, 42, 97, 123, 7, 64]
OTHERS = [[5, 6, 7], list(range(30, 70)), [300] * 20]


def sampled(seed, **kw):
    return SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, top_k=50, seed=seed, ignore_eos=True, **kw)


def test_seeded_sampling_is_reproducible_in_any_batch(engine):
    alone = engine.generate(PROMPT, sampled(1234))[0].token_ids
    batch = engine.generate([OTHERS[0], PROMPT, OTHERS[1], OTHERS[2]],
                            [sampled(1), sampled(1234), sampled(2), SamplingParams(max_tokens=5)])
    assert batch[1].token_ids == alone
    assert engine.generate(PROMPT, sampled(99))[0].token_ids != alone   # the seed matters


def test_top_k_1_is_greedy(engine):
    greedy = engine.generate(PROMPT, SamplingParams(max_tokens=16, ignore_eos=True))[0].token_ids
    topk1 = engine.generate(PROMPT, SamplingParams(max_tokens=16, temperature=1.0, top_k=1, seed=3,
                                                   ignore_eos=True))[0].token_ids
    assert topk1 == greedy


def test_repetition_penalty_matches_transformers(engine, model_dir):
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = hf.generate(torch.tensor([PROMPT]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                      repetition_penalty=1.5, eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    ours = engine.generate(PROMPT, SamplingParams(max_tokens=20, repetition_penalty=1.5, ignore_eos=True))[0]
    assert ours.token_ids == ref


def test_presence_and_frequency_penalties_follow_openai():
    from backend.sampler import apply_penalties
    from backend.sequence import Sequence
    seq = Sequence("x", [1, 2], SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), frozenset(), 100)
    seq.output_token_ids = [3, 3, 4]
    row = apply_penalties(torch.zeros(6), seq)
    assert row.tolist() == [0, 0, 0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0]


def test_end_id_and_min_tokens(engine):
    greedy = engine.generate(PROMPT, SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    first = greedy[0]
    stop_now = engine.generate(PROMPT, SamplingParams(max_tokens=12, end_id=first))[0]
    assert stop_now.token_ids == [first] and stop_now.finish_reason == "stop"
    held = engine.generate(PROMPT, SamplingParams(max_tokens=12, end_id=first, min_tokens=5))[0]
    assert len(held.token_ids) >= 5 and first not in held.token_ids[:5]
    by_id = engine.generate(PROMPT, SamplingParams(max_tokens=12, stop_token_ids=[greedy[3]], ignore_eos=True))[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids[-1] == greedy[3]
    assert len(by_id.token_ids) == greedy.index(greedy[3]) + 1
    length = engine.generate(PROMPT, SamplingParams(max_tokens=7, ignore_eos=True))[0]
    assert length.finish_reason == "length" and len(length.token_ids) == 7


def test_min_tokens_holds_in_a_mixed_batch(engine):
    """Plain greedy rows (one batched argmax, min_tokens banning the end token) beside rows sampled one at a
    time (seeded, logprobs): each request gets the tokens it gets alone."""
    greedy = engine.generate(PROMPT, SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids
    params = [SamplingParams(max_tokens=12, end_id=greedy[0], min_tokens=5),
              SamplingParams(max_tokens=12, temperature=0.8, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=12, end_id=greedy[0], min_tokens=5, logprobs=True),
              SamplingParams(max_tokens=12, ignore_eos=True)]
    alone = [engine.generate(PROMPT, p)[0].token_ids for p in params]
    together = engine.generate([PROMPT] * len(params), params)
    assert [r.token_ids for r in together] == alone
    assert greedy[0] not in together[0].token_ids[:5] and together[3].token_ids == greedy


def test_stop_string_is_cut_and_never_streamed(engine):
    full = engine.generate(PROMPT, SamplingParams(max_tokens=40, ignore_eos=True))[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), "tiny model produced blank text; pick another prompt"
    engine.add_request("s", PROMPT, SamplingParams(max_tokens=40, stop=[stop], ignore_eos=True))
    deltas, last = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.text_delta)
            last = out
    streamed = "".join(deltas)
    assert last.finish_reason == "stop"
    assert streamed == full[:full.index(stop)]
    assert stop not in streamed


def test_logprobs(engine):
    r = engine.generate(PROMPT, SamplingParams(max_tokens=6, logprobs=True, ignore_eos=True))[0]
    assert len(r.logprobs) == 6 and all(lp <= 0 for lp in r.logprobs)

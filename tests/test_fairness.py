"""Fair progress: identical concurrent requests advance together; a short request arriving behind
long ones gets its first token within a bounded number of steps."""
import pytest

from backend import LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_model):
    return LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=8192, warmup=False,
                                     max_num_tokens=256, enable_chunked_context=True)


@pytest.mark.parametrize("n", [4, 8])
def test_identical_requests_finish_in_the_same_step(engine, n):
    for i in range(n):
        engine.add_request(f"same{i}", [7, 8, 9] * 10, SamplingParams(max_tokens=24, ignore_eos=True))
    finished_at, step = {}, 0
    while engine.has_unfinished_requests():
        step += 1
        for out in engine.step():
            if out.finished:
                finished_at[out.request_id] = step
    assert len(finished_at) == n and len(set(finished_at.values())) == 1


def test_short_request_behind_long_ones_is_served_in_bounded_steps(engine):
    for i in range(6):
        engine.add_request(f"long{i}", list(range(5, 205)), SamplingParams(max_tokens=200, ignore_eos=True))
    engine.step()
    engine.step()
    engine.add_request("short", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
    decoding = set()
    for steps in range(1, 10):
        outs = {o.request_id for o in engine.step()}
        assert decoding <= outs, "a decoding request was starved in this step"
        decoding |= outs - {"short"}
        if "short" in outs:
            break
    # FCFS behind 1200 - 2 * 256 = 688 prompt tokens still to prefill at 256 per step: 3 steps, then its own
    assert steps <= 4
    for rid in [f"long{i}" for i in range(6)] + ["short"]:
        engine.abort(rid)
    engine.step()
    assert engine.stats().kv_blocks_used == 0

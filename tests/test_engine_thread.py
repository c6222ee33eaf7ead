"""The background driver: concurrent submitters, callbacks, capacity waits, aborts, clean stop,
and no CPU burnt while idle."""
import threading
import time

import psutil
import pytest

from backend import EngineThread, InvalidRequest, LLMEngine, SamplingParams


@pytest.fixture()
def runner(tiny_model):
    engine = LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=4096, warmup=False)
    r = EngineThread(engine).start()
    yield r
    r.stop()


class Collector:
    def __init__(self):
        self.outputs, self.done = [], threading.Event()

    def __call__(self, out):
        self.outputs.append(out)
        if out.finished:
            self.done.set()

    @property
    def tokens(self):
        return [t for o in self.outputs for t in o.new_token_ids]


def test_concurrent_submitters_get_the_offline_tokens(runner):
    prompts = [[5 + i] * (3 + 5 * i) for i in range(8)]
    greedy = SamplingParams(max_tokens=12, ignore_eos=True)
    collectors = [Collector() for _ in prompts]
    threads = [threading.Thread(target=runner.submit, args=(f"r{i}", p, greedy, c))
               for i, (p, c) in enumerate(zip(prompts, collectors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in collectors:
        assert c.done.wait(60)
        assert c.outputs[-1].finish_reason == "length" and len(c.tokens) == 12
    runner.stop()
    offline = runner.engine.generate(prompts, greedy)
    assert [c.tokens for c in collectors] == [r.token_ids for r in offline]
    assert runner.engine.stats().kv_blocks_used == 0


def test_bad_request_raises_in_the_caller(runner):
    with pytest.raises(InvalidRequest):
        runner.submit("bad", "", SamplingParams(), lambda o: None)
    c = Collector()
    runner.submit("good", [5, 6], SamplingParams(max_tokens=3, ignore_eos=True), c)
    assert c.done.wait(30)


def test_abort_gives_a_cancelled_final_and_frees_blocks(runner):
    c = Collector()
    runner.submit("long", [5] * 10, SamplingParams(max_tokens=400, ignore_eos=True), c)
    while not c.outputs:
        time.sleep(0.01)
    runner.abort("long")
    assert c.done.wait(30)
    assert c.outputs[-1].finish_reason == "cancelled" and len(c.tokens) < 400
    assert runner.wait_for_capacity(5)
    time.sleep(0.05)
    assert runner.stats().kv_blocks_used == 0


def test_wait_for_capacity_blocks_while_requests_wait(tiny_model):
    engine = LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=512, warmup=False)
    r = EngineThread(engine).start()
    try:
        a, b = Collector(), Collector()
        r.submit("a", [5] * 8, SamplingParams(max_tokens=400, ignore_eos=True), a)   # reserves 408 of 512 tokens
        r.submit("b", [6] * 8, SamplingParams(max_tokens=400, ignore_eos=True), b)   # must wait for a
        assert not r.wait_for_capacity(0.1)
        assert not a.done.is_set()
        assert a.done.wait(60)
        assert r.wait_for_capacity(30)
        assert b.done.wait(60)
    finally:
        r.stop()


def test_stop_cancels_everything(tiny_model):
    engine = LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=4096, warmup=False)
    r = EngineThread(engine).start()
    c = Collector()
    r.submit("x", [5] * 10, SamplingParams(max_tokens=10000 // 30, ignore_eos=True), c)
    r.stop()
    assert c.done.wait(10) and c.outputs[-1].finish_reason == "cancelled"
    assert engine.stats().kv_blocks_used == 0


def test_idle_loop_does_not_spin(runner):
    proc = psutil.Process()
    c = Collector()
    runner.submit("warm", [5, 6], SamplingParams(max_tokens=2, ignore_eos=True), c)
    assert c.done.wait(30)
    time.sleep(0.2)
    before = sum(proc.cpu_times()[:2])
    time.sleep(2.0)
    used = sum(proc.cpu_times()[:2]) - before
    assert used < 0.05, f"idle engine thread used {used:.3f}s CPU in 2s"

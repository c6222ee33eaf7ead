"""KV-aware admission through the server, read from /metrics during the load.

The KV cache holds T = 4096 tokens (256 blocks); every request needs R = prompt + max_tokens = 1312
tokens (82 blocks), so guaranteed_no_evict, which reserves R at admission, runs T div R = 3 of 5 at once
and leaves the others waiting. max_utilization allocates as requests grow: it runs all 5 at first and
preempts (recompute) when blocks run out. The start-up log says how many max-length requests fit and
warns when guaranteed_no_evict holds fewer than 2.
"""
import re
import time
from pathlib import Path

from tests.load.conftest import BLOCK, KV_TOKENS
from tests.load.load_helpers import TimedStream, gauges, wait_idle, wait_until

NUM_REQUESTS = 5
BLOCKS_PER_REQUEST = 82


def requests_needing_r_tokens(server, tokenizer) -> tuple[list[TimedStream], int]:
    streams = []
    for i in range(NUM_REQUESTS):
        prompt = f"Request {i}: " + "experts route every token to a few of them " * 60
        prompt_tokens = len(tokenizer.encode(prompt))
        max_tokens = BLOCKS_PER_REQUEST * BLOCK - prompt_tokens
        assert max_tokens > 300, "the prompt should leave most of R to generation"
        streams.append(TimedStream(server, prompt, max_tokens=max_tokens, min_tokens=max_tokens))
    return streams, BLOCKS_PER_REQUEST * BLOCK


def watch(server, streams, until, timeout_s: float = 60) -> dict[str, float]:
    """Send the streams, then scrape /metrics until `until(peaks)` holds; returns the peak of each gauge."""
    for s in streams:
        s.send()
    peaks: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        g = gauges(server)
        g["active+pending"] = g["active"] + g["pending"]
        for key, value in g.items():
            peaks[key] = max(peaks.get(key, value), value)
        if until(peaks):
            break
        assert not any(s.error for s in streams), [s.error for s in streams]
        time.sleep(0.03)
    return peaks


def test_guaranteed_no_evict_runs_t_div_r_at_once(no_evict_server, tokenizer):
    streams, r = requests_needing_r_tokens(no_evict_server, tokenizer)
    fit = KV_TOKENS // r
    assert fit == 3
    try:
        peaks = watch(no_evict_server, streams, lambda p: p["scheduled"] >= fit and p["active+pending"] == NUM_REQUESTS
                      and p["waiting"] >= 1, timeout_s=30)
        admitted = wait_until(lambda: [s for s in streams if s.arrivals] if sum(bool(s.arrivals) for s in streams) >= fit
                              else None, timeout_s=30, what=f"{fit} streams with tokens")
        assert len(admitted) == fit, "exactly the admitted requests stream tokens"
        # Keep watching while the admitted run (on the tiny model they finish in about half a second): nothing more
        # may be scheduled, and no other stream may get a token before one of them has finished.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not any(s.done.is_set() for s in admitted):
            peaks["scheduled"] = max(peaks["scheduled"], gauges(no_evict_server)["scheduled"])
            others = sum(bool(s.arrivals) for s in streams if s not in admitted)
            assert others == 0 or any(s.done.is_set() for s in admitted), "a waiting request streamed early"
            time.sleep(0.03)
        print(f"guaranteed_no_evict peaks: {peaks}")
        assert peaks["scheduled"] == fit, peaks
        assert peaks["active+pending"] == NUM_REQUESTS, peaks
        assert peaks["waiting"] >= 1 and peaks["paused"] == 0, peaks
    finally:
        for s in streams:
            s.cancel()
    wait_idle(no_evict_server)


def test_max_utilization_runs_more_and_preempts(max_util_server, tokenizer):
    streams, r = requests_needing_r_tokens(max_util_server, tokenizer)
    before = gauges(max_util_server)
    try:
        # The counter is exported just after the gauges (one IPC each): a scrape in between sees paused = 1 and
        # the old count, so watch until both show.
        preempted = before["vllm:num_preemptions_total"]
        peaks = watch(max_util_server, streams, lambda p: p["paused"] >= 1 and p["scheduled"] > KV_TOKENS // r
                      and p["vllm:num_preemptions_total"] > preempted)
        print(f"max_utilization peaks: {peaks}")
        assert peaks["scheduled"] > KV_TOKENS // r, peaks
        assert peaks["paused"] >= 1, peaks
        assert peaks["vllm:num_preemptions_total"] > preempted, peaks
    finally:
        for s in streams:
            s.cancel()
    wait_idle(max_util_server)


def log_text(server) -> str:
    return Path(server.log_file).read_text(errors="replace")


def test_start_up_log_says_how_many_requests_fit_and_warns(no_evict_server, max_util_server):
    text = log_text(no_evict_server)
    # 4096 tokens against max_seq_len 4096: one max-length request fits, so guaranteed_no_evict warns.
    assert "KV cache: 4096 tokens = 256 blocks x 16 tokens" in text
    assert re.search(r"1 max-length \(4096-token\) requests fit", text)
    # The start-up heap (torch, transformers, the engine: well over 100k objects) is out of the cyclic GC's way.
    frozen = re.search(r"; (\d+) start-up objects frozen out of the GC", text)
    assert frozen and int(frozen.group(1)) > 100_000, text[-3000:]
    assert re.search(r"^W\d{4} .*guaranteed_no_evict reserves prompt \+ max_tokens", text, re.M), text[-3000:]
    assert "guaranteed_no_evict reserves" not in log_text(max_util_server)

"""Fair progress through the real server: identical concurrent requests finish together, and a short
request arriving behind long running ones gets its first token within a few engine steps."""
import pytest

from tests.load.load_helpers import TimedStream, wait_idle, wait_until

TOKENS = 256


@pytest.mark.parametrize("n", [4, 8])
def test_identical_concurrent_requests_finish_within_10_percent(no_evict_server, n):
    streams = [TimedStream(no_evict_server, "Tell me a story about the quick brown fox.", max_tokens=TOKENS,
                           min_tokens=TOKENS) for _ in range(n)]
    for s in streams:
        s.send()
    for s in streams:
        s.wait()
        s.cancel()
    e2e = [s.e2e for s in streams]
    spread = (max(e2e) - min(e2e)) / max(e2e)
    print(f"n={n}: end-to-end {min(e2e):.2f}..{max(e2e):.2f} s, spread {100 * spread:.1f}%")
    assert all(s.num_output_tokens == TOKENS for s in streams)
    assert len({s.text for s in streams}) == 1, "greedy decoding of one prompt must not depend on the batch"
    assert spread <= 0.10, f"end-to-end times {e2e} differ by {100 * spread:.1f}% (> 10%)"


def test_short_request_behind_long_ones_gets_its_first_token_within_a_few_steps(no_evict_server):
    longs = [TimedStream(no_evict_server, f"Long request {i}: " + "paged attention keeps keys in blocks " * 12,
                         max_tokens=400, min_tokens=400) for i in range(6)]
    try:
        for s in longs:
            s.send()
        wait_until(lambda: all(len(s.arrivals) >= 2 for s in longs), 30, "all six long requests decoding")
        short = TimedStream(no_evict_server, "Short?", max_tokens=4, min_tokens=4).send().wait(30)
        short.cancel()
        # A decoding request gets one token per engine step: count the steps by the tokens of a long one.
        steps = [sum(short.sent_at < t <= short.first for t in s.arrivals) for s in longs]
        print(f"engine steps between the short request's arrival and its first token: {steps}")
        assert max(steps) <= 4, steps
        assert all(not s.done.is_set() for s in longs), "the long requests should still be running"
    finally:
        for s in longs:
            s.cancel()
    wait_idle(no_evict_server)

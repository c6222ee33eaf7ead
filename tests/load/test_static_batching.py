"""Static batching (TRT-LLM's gpt_model_type=V1, set through config.pbtxt parameters): a batch runs to
completion before the next one starts, even when some of its requests have finished. Same scenario
against the inflight server for contrast: there a late request starts at once."""
from tests.load.load_helpers import TimedStream, gauges, wait_idle, wait_until

BATCH_TOKENS = (100, 200, 300)


def scenario(server, static: bool):
    """A long "blocker" runs; three requests arrive behind it; it is cancelled; then a late request arrives
    while the three run."""
    blocker = TimedStream(server, "Blocker: " + "the lazy dog sleeps " * 10, max_tokens=2000, min_tokens=2000).send()
    batch = [TimedStream(server, f"Batch request {i}: the quick brown fox", max_tokens=n, min_tokens=n)
             for i, n in enumerate(BATCH_TOKENS)]
    late = None
    try:
        wait_until(lambda: blocker.arrivals, 30, "the blocker streaming")
        for s in batch:
            s.send()
        if static:   # they wait in the engine, behind the running batch of one
            wait_until(lambda: gauges(server)["active"] == 4, 30, "three requests waiting behind the blocker")
            assert not any(s.arrivals for s in batch)
        else:
            wait_until(lambda: all(s.arrivals for s in batch), 30, "three requests running beside the blocker")
        blocker.cancel()
        cancelled_at = blocker.last
        wait_until(lambda: all(s.arrivals for s in batch), 30, "the three requests streaming")
        late = TimedStream(server, "Late request: the quick brown fox", max_tokens=20, min_tokens=20).send()
        for s in batch:
            s.wait(60)
        late.wait(60)
    finally:   # an open stream would hold tritonserver's shutdown until its exit timeout
        for s in [blocker, *batch, late]:
            if s is not None:
                s.cancel()
    wait_idle(server)
    return cancelled_at, batch, late


def test_v1_batches_run_to_completion_through_the_server(static_server):
    cancelled_at, batch, late = scenario(static_server, static=True)
    assert all(s.num_output_tokens == n for s, n in zip(batch, BATCH_TOKENS))
    assert min(s.first for s in batch) > cancelled_at, "the batch started only after the blocker's batch ended"
    assert max(s.first for s in batch) < min(s.last for s in batch), "the three ran as one batch"
    assert late.sent_at < min(s.last for s in batch), "test precondition: the late request came during the batch"
    # The late request waited for the whole batch, not for a slot. The client sees each stream's responses on its
    # own thread, so the batch's final response may land a moment after the late request's first token (2.7 ms
    # once, in CI); a V1 server that admitted it into the running batch would show it ~280 tokens early.
    longest = max(batch, key=lambda s: s.last)
    after = sum(t > late.first for t in longest.arrivals)
    assert after <= 2, f"{after} responses of the batch came after the late request's first token"


def test_inflight_batching_starts_a_late_request_at_once(no_evict_server):
    _, batch, late = scenario(no_evict_server, static=False)
    assert late.first < max(s.last for s in batch), "inflight batching admits a request while others run"

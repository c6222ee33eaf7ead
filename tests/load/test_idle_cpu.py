"""No busy-waiting: once the requests are done, the whole server process tree (tritonserver, the
Python stub and anything they start) uses under 1% of one core over 10 s."""
import time

from perf_analyzer_configs.idle_cpu import TARGET_PERCENT, report
from perf_analyzer_configs.process_tree import measure_cpu, tree
from tests.load.load_helpers import TimedStream, wait_idle


def test_idle_server_tree_uses_under_one_percent_of_a_core(no_evict_server):
    # Make every poller go busy first (engine loop, response sender, cancellation sweep, metrics refresh),
    # then idle: the harder case, since a thread that misses its way back to sleep would spin from now on.
    streams = [TimedStream(no_evict_server, f"Warm the pollers {i}", max_tokens=32).send() for i in range(3)]
    for s in streams:
        s.wait()
        s.cancel()
    wait_idle(no_evict_server)
    time.sleep(1.0)
    assert len(tree(no_evict_server.process.pid)) >= 2, "expected tritonserver and its Python stub"
    sample = measure_cpu(no_evict_server.process.pid, 10.0)
    print(report(sample, "the test server"))
    assert sample.percent_of_one_core < TARGET_PERCENT, report(sample, "the test server")

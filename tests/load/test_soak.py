"""A shortened soak (python -m perf_analyzer_configs.soak runs the 500-request one): 60 streamed requests
of random lengths, 20% cancelled mid-stream, 6 at a time: no error but the cancellations, the KV cache
back to 0 used blocks, and the server's resident memory flat after the first 20 requests."""
from perf_analyzer_configs.soak import run_soak, summary


def test_short_soak_with_cancellations(max_util_server):
    report = run_soak(max_util_server.grpc_url, max_util_server.metrics_url, max_util_server.process.pid,
                      num_requests=60, concurrency=6, cancel_fraction=0.2, seed=1, baseline_after=20, max_seconds=180)
    print(summary(report))
    assert report.cancelled == 12 and report.completed == 48, summary(report)
    assert not report.failures, summary(report)

"""Warm start: the engine warms up inside initialize(), so Triton reports the model loaded (and ready)
only after the warm-up ran. The first request's TTFT against steady state is measured by
python -m perf_analyzer_configs.warm_start (timings are not asserted here)."""
from pathlib import Path


def test_warm_up_runs_before_triton_loads_the_model(no_evict_server):
    log = Path(no_evict_server.log_file).read_text(errors="replace")
    warm = log.find("warm-up done")
    loaded = log.find("successfully loaded 'moe_llm'")
    assert warm != -1 and loaded != -1, log[-3000:]
    assert warm < loaded

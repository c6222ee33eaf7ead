"""The engine-only counterpart of the load report: closed-loop clients keep every level's concurrency."""
import math

from perf_analyzer_configs import engine_only


def test_engine_only_keeps_each_level_full_and_reports_it(load_model_dir, capsys):
    assert engine_only.main(["--model", load_model_dir, "--concurrency", "1", "4", "--seconds", "1",
                             "--input", "short", "--param", "max_tokens_in_paged_kv_cache=4096"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [int(r[0]) for r in rows[1:]] == [1, 4]
    one, four = ({"steps": int(r[1]), "ms_per_step": float(r[2]), "tokens_per_step": float(r[3]), "requests": int(r[6]),
                  "ttft": [float(v) for v in r[7].split("/")], "itl": [float(v) for v in r[8].split("/")]}
                 for r in rows[1:])
    assert one["steps"] > 0 and one["tokens_per_step"] == 1.0   # one client: one token per decode step
    assert 3.0 <= four["tokens_per_step"] <= 4.0                # four clients, refilled as they finish
    for level in (one, four):
        assert level["requests"] > 0
        assert 0 < level["ttft"][0] <= level["ttft"][1]
        itl_p50, itl_p99 = level["itl"]
        assert 0 < itl_p50 <= itl_p99 and not math.isnan(itl_p99)
    # One client's tokens come one step apart: its inter-token latency is about the step time.
    assert 0.5 * one["ms_per_step"] <= one["itl"][0] <= 2 * one["ms_per_step"]

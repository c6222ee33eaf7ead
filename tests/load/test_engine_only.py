"""The engine-only counterpart of the load report: closed-loop clients keep every level's concurrency."""
from perf_analyzer_configs import engine_only


def test_engine_only_keeps_each_level_full_and_reports_it(load_model_dir, capsys):
    assert engine_only.main(["--model", load_model_dir, "--concurrency", "1", "4", "--seconds", "1",
                             "--input", "short", "--param", "max_tokens_in_paged_kv_cache=4096"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [int(r[0]) for r in rows[1:]] == [1, 4]
    one, four = ({"steps": int(r[1]), "tokens_per_step": float(r[3])} for r in rows[1:])
    assert one["steps"] > 0 and one["tokens_per_step"] == 1.0   # one client: one token per decode step
    assert 3.0 <= four["tokens_per_step"] <= 4.0                # four clients, refilled as they finish

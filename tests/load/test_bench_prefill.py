"""The prefill benchmark's code path on a tiny model (numbers are not asserted: performance is measured)."""
from backend import bench_prefill


def test_bench_prefill_prints_a_row_per_length(load_model_dir, capsys):
    assert bench_prefill.main(["--model", load_model_dir, "--lengths", "20", "60", "--repeats", "2"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [int(r[0]) for r in rows[1:]] == [20, 60]
    for r in rows[1:]:
        assert float(r[1]) > 0 and len(r[2].split(",")) == 2

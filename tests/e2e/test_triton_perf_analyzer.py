"""The real perf_analyzer drives the model over gRPC streaming through perf_analyzer_configs/sweep.sh,
and the summary reads its profile exports."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_runs_perf_analyzer_and_summarizes(server, tmp_path):
    run = subprocess.run([str(ROOT / "perf_analyzer_configs" / "sweep.sh"), "-u", server.grpc_url, "-i", "short",
                          "-c", "1 2", "-n", "2", "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr + run.stdout
    for level in (1, 2):
        assert (tmp_path / f"c{level}.csv").read_text().startswith("Concurrency,")
        assert (tmp_path / f"c{level}.json").is_file()
    rows = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2"]
    assert all(r.split("|")[3].strip() == "64" for r in rows), "min_tokens = max_tokens fixes the output length"

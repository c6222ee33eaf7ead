"""The queue-time tool reads Triton's own traces of a real server: one small burst per configuration."""
import json

from perf_analyzer_configs import queue_trace


def test_queue_trace_reports_every_request_of_each_configuration(load_model_dir, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert queue_trace.main(["--model", load_model_dir, "--rounds", "2", "--streams", "3", "--max-tokens", "4",
                             "--cpu-load", "0", "--out", str(tmp_path / "traces"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == ["config.pbtxt as shipped", "max_queue_size=64"]
    for row in rows.values():
        assert row["requests"] == 6
        assert 0 <= row["queue_ms_median"] <= row["queue_ms_max"]
    assert "| config.pbtxt as shipped | 6 |" in capsys.readouterr().out

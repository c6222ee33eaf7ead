"""The benchmark's code path on a tiny layer (numbers are not asserted: performance is measured, not tested)."""
from kernels import bench, build, cpu_moe


def test_bench_runs_on_a_tiny_layer(monkeypatch):
    monkeypatch.setitem(bench.MODELS, "tiny", dict(H=64, I=32, E=8, K=2, resident=8))
    result = bench.run(["tiny"], (1, 8), quick=True, probe_mib=8, flush_mib=4)
    impls = {r["impl"] for r in result["rows"]}
    assert {"torch/grouped_mm fp32", "torch/expert loop bf16"} <= impls
    ours = [i for i in impls if i.startswith("fused_cpu/")]
    assert sum(not bench.is_baseline(i) for i in ours) == len(bench.OURS)
    amx = cpu_moe.best_variant() == "amx" and build.load_variant("amx").amx_enabled()
    assert sum(i.endswith("VNNI only") for i in ours) == (2 if amx else 0)   # int8, int4 baselines
    for r in result["rows"]:
        assert r["ms"] > 0 and r["bandwidth_gbps"] > 0 and r["bytes"] > 0
        assert r["vs_torch_fp32"] > 0 and r["torch_bf16_baseline"].startswith("torch/")
    table = bench.format_table(result, {"date": "now", "command": "python -m kernels.bench", "cpu": "cpu",
                                        "variants": "auto", "threads": 1, "load_before": "0", "load_after": "0"})
    assert "### tiny: H 64, I 32, 8 experts, top-2" in table
    assert "| 8 | fused_cpu/" in table


def test_bench_runs_the_variants_asked_for(monkeypatch):
    """--variants avx2,generic: fused rows for each, in the same rounds; the targets read the first."""
    monkeypatch.setitem(bench.MODELS, "tiny", dict(H=64, I=32, E=8, K=2, resident=8))
    result = bench.run(["tiny"], (1,), quick=True, probe_mib=8, flush_mib=4, variants=("generic", cpu_moe.best_variant()))
    ours = {r["impl"] for r in result["rows"] if r["impl"].startswith("fused_cpu/") and not bench.is_baseline(r["impl"])}
    assert {i.split()[0] for i in ours} == {"fused_cpu/generic", f"fused_cpu/{cpu_moe.best_variant()}"}
    assert any(line.startswith("- tiny:") for line in bench.targets(result))


def test_prefetch_baseline_rows_run_in_the_same_rounds(monkeypatch):
    """--prefetch-baseline: each fused row also runs with the next-block prefetch off; the targets ignore those rows."""
    monkeypatch.setitem(bench.MODELS, "tiny", dict(H=64, I=32, E=8, K=2, resident=8))
    result = bench.run(["tiny"], (1,), quick=True, probe_mib=8, flush_mib=4, prefetch_baseline=True)
    off = [r for r in result["rows"] if r["impl"].endswith("no next-block prefetch")]
    assert len(off) == len(bench.OURS) and all(r["impl"].startswith("fused_cpu/") for r in off)


def test_attention_bench_prints_its_table(capsys):
    from kernels import bench_attention
    assert bench_attention.main(["--repeats", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(("| decode", "| prefill", "| rotary + cache write"))]
    assert len(lines) == 9 and all(line.count("x |") == 2 for line in lines)

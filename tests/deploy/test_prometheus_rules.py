"""deploy/prometheus: promtool check/test on the real rules and config, and proof that broken
copies fail (a syntax error, a changed threshold the unit tests must notice, a bad config)."""
import shutil

import yaml

from tests.deploy.deploy_tools import REPO, check, run
from tests.deploy.exported_metrics import EXPORTED, metric_names

PROMETHEUS = REPO / "deploy" / "prometheus"


def test_rules_pass_promtool_check(promtool):
    out = check([promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_rules_pass_their_unit_tests(promtool):
    check([promtool, "test", "rules", "rules_test.yml"], cwd=PROMETHEUS)


def test_compose_prometheus_config_is_valid(promtool):
    out = check([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert "1 rule files found" in out


def test_rules_use_only_exported_and_recorded_series():
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert alerts == {"TritonKVCacheNearlyFull", "TritonQueueGrowing", "TritonTimeToFirstTokenP99High",
                      "TritonModelNotReady"}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - EXPORTED - recorded - {"up"}
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown series {unknown}"


def broken_copy(tmp_path, old: str, new: str):
    dest = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, dest)
    rules = dest / "rules.yml"
    text = rules.read_text()
    assert old in text, f"{old!r} not in rules.yml"
    rules.write_text(text.replace(old, new, 1))
    return dest


def test_a_syntax_error_fails_check_rules(promtool, tmp_path):
    dest = broken_copy(tmp_path, "sum by (model) (rate(vllm:generation_tokens_total[1m]))",
                       "sum by (model) (rate(vllm:generation_tokens_total[1m])")
    proc = run([promtool, "check", "rules", "rules.yml"], cwd=dest)
    assert proc.returncode != 0 and "rules.yml" in proc.stdout + proc.stderr


def test_a_changed_kv_threshold_fails_the_unit_tests(promtool, tmp_path):
    dest = broken_copy(tmp_path, 'kv_cache_block_type="fraction"}) > 0.9', 'kv_cache_block_type="fraction"}) > 0.96')
    proc = run([promtool, "test", "rules", "rules_test.yml"], cwd=dest)
    assert proc.returncode != 0 and "TritonKVCacheNearlyFull" in proc.stdout + proc.stderr


def test_a_changed_ttft_target_fails_the_unit_tests(promtool, tmp_path):
    dest = broken_copy(tmp_path, "expr: vector(2.0)", "expr: vector(5.0)")
    proc = run([promtool, "test", "rules", "rules_test.yml"], cwd=dest)
    assert proc.returncode != 0 and "TritonTimeToFirstTokenP99High" in proc.stdout + proc.stderr


def test_a_bad_config_fails_check_config(promtool, tmp_path):
    dest = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, dest)
    config = dest / "prometheus.yml"
    config.write_text(config.read_text().replace("scrape_interval: 15s", "scrape_interval: fifteen"))
    assert run([promtool, "check", "config", "prometheus.yml"], cwd=dest).returncode != 0

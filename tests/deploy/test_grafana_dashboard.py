"""The Grafana dashboard: valid JSON, only exported metrics and label values, every query parses
(promtool) and returns data on a synthetic scrape of the exported series (promtool test rules)."""
import copy
import json
import re

import pytest
import yaml

from tests.deploy.deploy_tools import REPO, check, run
from tests.deploy.exported_metrics import EXPORTED, GAUGE_CATEGORIES, category_values, metric_names, synthetic_scrape

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "triton-moe-backend.json"
# What Grafana substitutes before it sends a query ($__rate_interval is 4 scrapes of 15 s).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$instance": ".*"}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def variable_queries(dashboard: dict) -> list[str]:
    return [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def as_sent(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def contract_violations(dashboard: dict) -> list[str]:
    problems = []
    for title, expr in panel_queries(dashboard):
        for name in sorted(metric_names(expr) - EXPORTED):
            problems.append(f"panel {title!r}: {name} is not exported")
        for label, values in category_values(expr).items():
            allowed = next(v for lbl, v in GAUGE_CATEGORIES.values() if lbl == label)
            problems += [f"panel {title!r}: {label}={v!r} is not exported" for v in sorted(values - allowed)]
    for query in variable_queries(dashboard):
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert inner, f"unexpected variable query {query!r}"
        problems += [f"variable query {query!r}: {n} is not exported" for n in metric_names(inner[1]) - EXPORTED]
    return problems


def test_dashboard_is_valid_json_with_unique_panels():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "triton-moe-backend" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_dashboard_uses_only_exported_metrics_and_label_values():
    assert contract_violations(load_dashboard()) == []


def test_contract_check_catches_a_misspelled_metric_and_label_value():
    dashboard = load_dashboard()
    broken = copy.deepcopy(dashboard)
    target = broken["panels"][0]["targets"][0]
    target["expr"] = target["expr"].replace("nv_trt_llm_kv_cache_block_metrics", "nv_trt_llm_kv_cache_blocks")
    assert any("nv_trt_llm_kv_cache_blocks is not exported" in p for p in contract_violations(broken))
    broken = copy.deepcopy(dashboard)
    for panel in broken["panels"]:
        for t in panel["targets"]:
            t["expr"] = t["expr"].replace('"active|scheduled|waiting', '"active|scheduled|queued')
    assert any("request_type='queued'" in p for p in contract_violations(broken))


def test_dashboard_covers_the_serving_signals():
    exprs = " ".join(expr for _, expr in panel_queries(load_dashboard()))
    for needed in ['kv_cache_block_type="fraction"', "active|scheduled|waiting", "nv_inference_pending_request_count",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:time_per_output_token_seconds_bucket",
                   "rate(vllm:generation_tokens_total"]:
        assert needed in exprs, f"no panel queries {needed}"


def write_query_tests(tmp_path, queries: list[tuple[str, str]]):
    """Every query as a recording rule (promtool parses it) and as an expression test that must
    return at least one series on the synthetic scrape."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": as_sent(expr)} for i, (_, expr) in enumerate(queries)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    test = {"rule_files": ["dashboard_rules.yml"], "evaluation_interval": "15s", "tests": [{
        "interval": "15s", "input_series": synthetic_scrape(),
        "promql_expr_test": [{"expr": f"clamp_max(count({as_sent(expr)}), 1)", "eval_time": "5m",
                              "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in queries]}]}
    (tmp_path / "dashboard_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))


def test_every_query_parses_and_returns_data(promtool, tmp_path):
    write_query_tests(tmp_path, panel_queries(load_dashboard()))
    check([promtool, "check", "rules", "dashboard_rules.yml"], cwd=tmp_path)
    check([promtool, "test", "rules", "dashboard_test.yml"], cwd=tmp_path)


@pytest.mark.parametrize("mutation", [
    ('kv_cache_block_type="fraction"', 'kv_cache_block_type="fracton"'),   # matches no series
    ("sum by (le) (rate(", "sum by (le) rate(("),                            # syntax error
])
def test_a_broken_query_fails_promtool(promtool, tmp_path, mutation):
    queries = panel_queries(load_dashboard())
    broken = [(t, e.replace(*mutation)) for t, e in queries]
    assert broken != queries, f"mutation {mutation} changed nothing"
    write_query_tests(tmp_path, broken)
    parsed = run([promtool, "check", "rules", "dashboard_rules.yml"], cwd=tmp_path)
    tested = run([promtool, "test", "rules", "dashboard_test.yml"], cwd=tmp_path)
    assert parsed.returncode != 0 or tested.returncode != 0


def test_provisioning_points_at_the_dashboard_and_its_datasource():
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/triton-moe-backend.yml").read_text())["providers"][0]
    variable = next(v for v in load_dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert datasource["type"] == variable["query"] == "prometheus"
    assert variable["current"]["value"] == datasource["uid"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

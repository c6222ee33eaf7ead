"""deploy/helm/triton-moe-backend: `helm lint --strict`, `helm template` over a values matrix piped
into `kubernetes-validate --strict`, what the manifests say, and broken values/templates that must fail."""
import shutil
import subprocess
import sys

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.deploy.deploy_tools import CHART, KUBE_VERSION, REPO, check, run
from tests.deploy.exported_metrics import EXPORTED, metric_names

MATRIX = {  # case -> values files (the chart's ci/ folder, as chart-testing reads it)
    "default-gpu": [],
    "gpu-pvc": ["ci/gpu-pvc-values.yaml"],
    "cpu-numa": ["ci/cpu-numa-values.yaml"],
    "autoscaling-queue-servicemonitor": ["ci/autoscaling-queue-servicemonitor-values.yaml"],
    "autoscaling-kv-cpu": ["ci/autoscaling-kv-values.yaml"],
    "autoscaling-cpu-fallback-only": ["ci/autoscaling-cpu-only-values.yaml"],
}


def values_args(files: list[str]) -> list[str]:
    return [arg for f in files for arg in ("-f", str(CHART / f))]


def template(helm: str, chart=CHART, args=()) -> subprocess.CompletedProcess:
    return run([helm, "template", "moe", str(chart), "--namespace", "llm", "--kube-version", KUBE_VERSION, *args])


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, dict]:
    """case -> {"file": rendered manifest path, "docs": {kind: manifest}}"""
    out_dir = tmp_path_factory.mktemp("rendered")
    cases = {}
    for case, files in MATRIX.items():
        proc = template(helm, args=values_args(files))
        assert proc.returncode == 0, f"{case}: helm template failed\n{proc.stderr}"
        path = out_dir / f"{case}.yaml"
        path.write_text(proc.stdout)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        cases[case] = {"file": path, "docs": {d["kind"]: d for d in docs}}
        assert len(cases[case]["docs"]) == len(docs), f"{case}: two manifests of one kind"
    return cases


def container(docs: dict) -> dict:
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", MATRIX)
def test_lint_strict(helm, case):
    check([helm, "lint", "--strict", str(CHART), *values_args(MATRIX[case])])


@pytest.mark.parametrize("case", MATRIX)
def test_manifests_pass_kubernetes_validate_strict(kubernetes_validate, rendered, case):
    out = check([kubernetes_validate, "--strict", "-k", KUBE_VERSION, str(rendered[case]["file"])])
    for kind in rendered[case]["docs"]:
        if kind != "ServiceMonitor":  # a CRD: no bundled schema, checked below
            assert f"passed for resource {kind.lower()}/" in out, f"{case}: {kind} was not validated\n{out}"


def test_gpu_variant_asks_for_gpus_and_tolerates_their_taint(rendered):
    for case, gpus in (("default-gpu", 1), ("gpu-pvc", 2)):
        docs = rendered[case]["docs"]
        assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container(docs)["image"] == "triton-moe-backend:0.1.0"
        tolerations = docs["Deployment"]["spec"]["template"]["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_variant_has_no_gpu_and_guaranteed_whole_cores(rendered):
    docs = rendered["cpu-numa"]["docs"]
    resources = container(docs)["resources"]
    assert "nvidia.com/gpu" not in resources["limits"] and resources["requests"] == resources["limits"]
    assert container(docs)["image"] == "triton-moe-backend:0.1.0-cpu"
    assert "tolerations" not in docs["Deployment"]["spec"]["template"]["spec"]


def test_probes_use_triton_health_endpoints_with_a_generous_startup(rendered):
    c = container(rendered["default-gpu"]["docs"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, "large models need minutes to load"
    assert "--strict-readiness=true" in c["args"]


def test_service_exposes_http_grpc_metrics_on_the_container_ports(rendered):
    docs = rendered["default-gpu"]["docs"]
    ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert {n: p["port"] for n, p in ports.items()} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert all(p["targetPort"] in container_ports for p in ports.values())
    assert container_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    args = container(docs)["args"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_host_policies_reach_tritonserver_and_the_entrypoint_binds_instances(rendered, tiny_model, tmp_path):
    c = container(rendered["cpu-numa"]["docs"])
    assert c["command"] == ["python3", "-m", "deploy.triton_entrypoint"]
    args = c["args"]
    assert args[:3] == ["--model=/models/smollm2-moe", "--param=expert_dtype=int8", "--param=num_threads=32"]
    policies = [a for a in args if a.startswith("--host-policy=")]
    assert policies == ["--host-policy=numa0,numa-node=0", "--host-policy=numa0,cpu-cores=0-31",
                        "--host-policy=numa1,numa-node=1", "--host-policy=numa1,cpu-cores=32-63"]
    # The chart's exact arguments, through the real entrypoint (only the model folder swapped).
    ours = ["--model", tiny_model("mixtral"), *args[1:args.index("--")]]
    proc = run([sys.executable, "-m", "deploy.triton_entrypoint", *ours, "--repository-dir", str(tmp_path / "r"),
                "--dry-run", *args[args.index("--"):]], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    config = text_format.Parse((tmp_path / "r/moe_llm/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [g.host_policy for g in config.instance_group] == ["numa0", "numa1"]
    assert config.parameters["expert_dtype"].string_value == "int8"


def test_model_storage_from_pvc_or_init_container(rendered):
    pod = rendered["gpu-pvc"]["docs"]["Deployment"]["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "moe-models", "readOnly": True}
    assert "initContainers" not in pod
    assert "--model=/models/qwen3-30b-a3b" in pod["containers"][0]["args"]

    pod = rendered["default-gpu"]["docs"]["Deployment"]["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in models
    init = pod["initContainers"][0]
    assert {"name": "MODEL_DIR", "value": "/models/smollm2-moe"} in init["env"]
    assert "--model=/models/smollm2-moe" in pod["containers"][0]["args"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_autoscaling_signals_and_cpu_fallback(rendered):
    assert "HorizontalPodAutoscaler" not in rendered["default-gpu"]["docs"]
    assert rendered["default-gpu"]["docs"]["Deployment"]["spec"]["replicas"] == 1

    def metrics(case):
        docs = rendered[case]["docs"]
        assert "replicas" not in docs["Deployment"]["spec"], f"{case}: the HPA owns the replica count"
        return docs["HorizontalPodAutoscaler"]["spec"]["metrics"]

    queue, cpu = metrics("autoscaling-queue-servicemonitor")
    assert queue["pods"]["metric"] == {"name": "nv_inference_pending_request_count"}
    assert queue["pods"]["target"] == {"type": "AverageValue", "averageValue": "2"}
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
    kv, cpu = metrics("autoscaling-kv-cpu")
    assert kv["pods"]["metric"] == {"name": "nv_trt_llm_kv_cache_block_metrics",
                                    "selector": {"matchLabels": {"kv_cache_block_type": "fraction"}}}
    assert cpu["resource"]["target"]["averageUtilization"] == 85
    (only,) = metrics("autoscaling-cpu-fallback-only")
    assert only["type"] == "Resource"


def test_hpa_custom_metrics_are_served_by_the_adapter_rules(rendered):
    adapter = yaml.safe_load((REPO / "deploy/helm/prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    for rule in adapter["rules"]["custom"]:
        assert metric_names(rule["seriesQuery"]) <= EXPORTED
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    for case in ("autoscaling-queue-servicemonitor", "autoscaling-kv-cpu"):
        for metric in rendered[case]["docs"]["HorizontalPodAutoscaler"]["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served


def test_service_monitor_scrapes_the_metrics_port_as_job_triton(rendered):
    assert "ServiceMonitor" not in rendered["default-gpu"]["docs"]
    docs = rendered["autoscaling-queue-servicemonitor"]["docs"]
    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in docs["Service"]["spec"]["ports"]} and endpoint["port"] == "metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "triton"} in endpoint["relabelings"]


def test_pod_disruption_budget(rendered):
    pdb = rendered["default-gpu"]["docs"]["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = rendered["default-gpu"]["docs"]["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert rendered["autoscaling-kv-cpu"]["docs"]["PodDisruptionBudget"]["spec"]["maxUnavailable"] == "50%"
    assert "PodDisruptionBudget" not in rendered["autoscaling-cpu-fallback-only"]["docs"]


# --- broken values and templates must fail -----------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ("accelerater: cpu", "accelerater"),                                            # misspelled key
    ("replicaCount: two", "replicaCount"),                                          # wrong type
    ("server: {hostPolicies: [{name: numa0, cpuCores: '0-3,8-11'}]}", "cpuCores"),  # Triton takes one range
    ("model: {storage: {type: pvc}}", "pvc"),                                       # pvc without a claim
    ("autoscaling: {enabled: true, customMetric: queue}", "customMetric"),          # unknown signal
    ("service: {ports: {http: 80000, grpc: 8001, metrics: 8002}}", "http"),         # port out of range
])
def test_bad_values_fail_lint_and_template(helm, tmp_path, values, message):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(values + "\n")
    lint = run([helm, "lint", "--strict", str(CHART), "-f", str(bad)])
    assert lint.returncode != 0 and message in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    assert template(helm, args=["-f", str(bad)]).returncode != 0


def test_autoscaling_without_any_signal_fails(helm):
    proc = template(helm, args=["--set", "autoscaling.enabled=true", "--set", "autoscaling.customMetric=none",
                                "--set", "autoscaling.targetCPUUtilizationPercentage=0"])
    assert proc.returncode != 0 and "autoscaling needs a signal" in proc.stderr


def broken_chart(tmp_path, template_name: str, old: str, new: str):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    path = chart / "templates" / template_name
    text = path.read_text()
    assert old in text, f"{old!r} not in {template_name}"
    path.write_text(text.replace(old, new, 1))
    return chart


def test_a_misspelled_manifest_field_fails_kubernetes_validate(helm, kubernetes_validate, tmp_path):
    chart = broken_chart(tmp_path, "deployment.yaml", "readinessProbe:", "readinesProbe:")
    proc = template(helm, chart)
    assert proc.returncode == 0, "helm renders it: only the schema check can catch this"
    (tmp_path / "out.yaml").write_text(proc.stdout)
    result = run([kubernetes_validate, "--strict", "-k", KUBE_VERSION, str(tmp_path / "out.yaml")])
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def test_a_wrongly_typed_manifest_value_fails_kubernetes_validate(helm, kubernetes_validate, tmp_path):
    chart = broken_chart(tmp_path, "service.yaml", "port: {{ .Values.service.ports.http }}", "port: eighty")
    proc = template(helm, chart)
    (tmp_path / "out.yaml").write_text(proc.stdout)
    result = run([kubernetes_validate, "--strict", "-k", KUBE_VERSION, str(tmp_path / "out.yaml")])
    assert result.returncode != 0


def test_a_template_syntax_error_fails_lint(helm, tmp_path):
    chart = broken_chart(tmp_path, "hpa.yaml", "{{- $a := .Values.autoscaling }}", "{{- $a := .Values.autoscaling }")
    proc = run([helm, "lint", "--strict", str(chart)])
    assert proc.returncode != 0 and "hpa.yaml" in proc.stdout + proc.stderr

"""docker-compose.yml through the real Compose v2 binary (`config`, no engine needed): it validates,
says what the stack needs, the CPU override drops the GPU, and broken copies fail."""
import json
import os
import sys

import pytest
import yaml

from tests.deploy.deploy_tools import REPO, check, run

COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "deploy" / "compose" / "cpu.yml"
# A clean environment: the stack's variables must come from the file's defaults unless a test sets them.
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}


def config(compose: str, *files, env=None, project_dir=REPO) -> dict:
    args = [a for f in files for a in ("-f", str(f))]
    out = check([compose, *args, "--project-directory", str(project_dir), "config", "--format", "json"],
                env={**CLEAN_ENV, **(env or {})})
    return json.loads(out)


def test_config_quiet_validates(compose):
    check([compose, "-f", str(COMPOSE_FILE), "config", "-q"], env=CLEAN_ENV)
    check([compose, "-f", str(COMPOSE_FILE), "-f", str(CPU_OVERRIDE), "config", "-q"], env=CLEAN_ENV)


def test_tritonserver_service(compose):
    triton = config(compose, COMPOSE_FILE)["services"]["tritonserver"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert int(triton["shm_size"]) >= 1 << 30, "the Python backend needs a large /dev/shm"
    health = triton["healthcheck"]
    assert any("/v2/health/ready" in part for part in health["test"])
    assert health["start_period"] in ("30m0s", "30m")
    mounts = {v["target"]: v for v in triton["volumes"]}
    assert mounts["/models"]["source"] == str(REPO / ".cache" / "models") and mounts["/models"]["read_only"]
    assert mounts["/opt/triton-moe-backend/model_repository"]["source"] == str(REPO / "model_repository")
    assert {p["target"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert triton["command"][:3] == ["python3", "-m", "deploy.triton_entrypoint"]
    assert "--model=/models/smollm2-moe" in triton["command"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--strict-readiness=true"} <= set(
        triton["command"])


def test_gateway_service_defaults_and_overrides(compose):
    services = config(compose, COMPOSE_FILE)["services"]
    gateway = services["gateway"]
    assert gateway["command"] == ["python3", "-m", "openai_gateway"]
    assert gateway["environment"] == {"GATEWAY_HOST": "0.0.0.0", "GATEWAY_PORT": "9000",
                                      "TRITON_GRPC_URL": "tritonserver:8001", "TRITON_MODEL": "moe_llm",
                                      "OPENAI_API_KEY": "", "TOKENIZER_DIR": "/models/smollm2-moe"}
    assert gateway["depends_on"]["tritonserver"]["condition"] == "service_healthy"
    assert gateway["image"] == services["tritonserver"]["image"]

    env = {"GATEWAY_PORT": "9100", "OPENAI_API_KEY": "sk-test", "MODEL_DIR": "/srv/models", "MODEL_NAME": "my-moe",
           "GPU_COUNT": "2"}
    services = config(compose, COMPOSE_FILE, env=env)["services"]
    gateway, triton = services["gateway"], services["tritonserver"]
    assert gateway["environment"]["GATEWAY_PORT"] == "9100" and gateway["environment"]["OPENAI_API_KEY"] == "sk-test"
    assert [(p["published"], p["target"]) for p in gateway["ports"]] == [("9100", 9100)]
    assert "--model=/models/my-moe" in triton["command"]
    assert {v["target"]: v["source"] for v in triton["volumes"]}["/models"] == "/srv/models"
    # the gateway reads the chat template from the same model folder
    assert {v["target"]: v["source"] for v in gateway["volumes"]}["/models"] == "/srv/models"
    assert gateway["environment"]["TOKENIZER_DIR"] == "/models/my-moe"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_the_entrypoint_accepts_the_compose_command(compose, tiny_model, tmp_path):
    command = config(compose, COMPOSE_FILE)["services"]["tritonserver"]["command"]
    split = command.index("--")
    ours = [a for a in command[3:split] if not a.startswith("--model=")]
    proc = run([sys.executable, "-m", "deploy.triton_entrypoint", "--model", tiny_model("mixtral"), *ours,
                "--repository-dir", str(tmp_path / "r"), "--dry-run", *command[split:]], cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_prometheus_and_grafana_mount_the_checked_configs(compose):
    services = config(compose, COMPOSE_FILE)["services"]
    prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert prom["/etc/prometheus"] == str(REPO / "deploy" / "prometheus")
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    triton_job = next(j for j in scrape if j["job_name"] == "triton")
    assert triton_job["static_configs"][0]["targets"] == ["tritonserver:8002"]
    grafana = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning"] == str(REPO / "deploy" / "grafana" / "provisioning")
    assert grafana["/var/lib/grafana/dashboards"] == str(REPO / "deploy" / "grafana" / "dashboards")
    assert (REPO / "deploy/grafana/dashboards/triton-moe-backend.json").is_file()
    for service in ("prometheus", "grafana"):
        image = services[service]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{service} image must be pinned: {image}"


def test_cpu_override_drops_the_gpu_reservation(compose):
    services = config(compose, COMPOSE_FILE, CPU_OVERRIDE)["services"]
    triton = services["tritonserver"]
    assert "devices" not in triton["deploy"]["resources"].get("reservations", {})
    assert triton["image"].endswith("-cpu") and services["gateway"]["image"] == triton["image"]
    assert triton["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("old, new", [
    ("    shm_size: 2gb\n", "    shm_sise: 2gb\n"),                          # unknown key
    ('      - "8000:8000"\n', '      - "eight-thousand"\n'),                 # invalid port
    ("      retries: 3\n", "      retries: three\n"),                         # wrong type
    ("        condition: service_healthy\n", "        condition: healthy\n"),  # invalid enum
    ("  gateway:\n", "  gateway\n"),                                          # YAML syntax
])
def test_a_broken_compose_file_fails_config(compose, tmp_path, old, new):
    text = COMPOSE_FILE.read_text()
    assert old in text, f"{old!r} not in docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    proc = run([compose, "-f", str(broken), "config", "-q"], env=CLEAN_ENV)
    assert proc.returncode != 0, f"compose accepted {new!r}"

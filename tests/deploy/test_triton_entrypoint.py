"""deploy.triton_entrypoint, the container command of docker-compose.yml and the Helm chart: it renders
the repository, binds one instance per NUMA host policy and becomes a real tritonserver that exports
every series the dashboard and the alert rules read."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from backend.serve import TRITONSERVER, BACKENDS, free_ports, server_env
from tests.deploy.deploy_tools import REPO, missing, run
from tests.deploy.exported_metrics import EXPORTED

ENTRYPOINT = [sys.executable, "-m", "deploy.triton_entrypoint"]


def rendered_config(repository) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repository / "moe_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_dry_run_fills_the_parameters_and_binds_one_instance_per_host_policy(tiny_model, tmp_path):
    model = tiny_model("mixtral")
    proc = run([*ENTRYPOINT, "--model", model, "--param", "max_tokens_in_paged_kv_cache=4096",
                "--param", "max_queue_size=8", "--repository-dir", str(tmp_path / "repo"), "--dry-run", "--",
                "--http-port=8000", "--host-policy=numa0,numa-node=0", "--host-policy=numa0,cpu-cores=0-15",
                "--host-policy", "numa1,numa-node=1"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"tritonserver --model-repository={tmp_path / 'repo'} "
                                        "--disable-auto-complete-config --http-port=8000 "
                                        "--host-policy=numa0,numa-node=0 --host-policy=numa0,cpu-cores=0-15 "
                                        "--host-policy numa1,numa-node=1")
    config = rendered_config(tmp_path / "repo")
    assert config.parameters["model"].string_value == str(model)
    assert config.parameters["max_tokens_in_paged_kv_cache"].string_value == "4096"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 8
    assert [(g.name, g.count, g.host_policy, g.kind) for g in config.instance_group] == [
        ("numa0", 1, "numa0", model_config_pb2.ModelInstanceGroup.KIND_CPU),
        ("numa1", 1, "numa1", model_config_pb2.ModelInstanceGroup.KIND_CPU)]


def test_without_host_policies_the_instance_group_is_kept(tiny_model, tmp_path):
    proc = run([*ENTRYPOINT, "--model", tiny_model("mixtral"), "--repository-dir", str(tmp_path / "repo"),
                "--dry-run"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    source = text_format.Parse((REPO / "model_repository/moe_llm/config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert rendered_config(tmp_path / "repo").instance_group == source.instance_group


@pytest.mark.parametrize("args, message", [
    (["--param", "max_tokens_in_paged_kv_cach=4096"], "max_tokens_in_paged_kv_cach"),
    (["--param", "tokens_per_block=-1"], "tokens_per_block"),
    (["--", "--model-repository=/models"], "do not pass --model-repository"),
    (["--", "--host-policy=numa0"], "--host-policy"),
])
def test_bad_input_is_refused_with_the_field_named(tiny_model, tmp_path, args, message):
    proc = run([*ENTRYPOINT, "--model", tiny_model("mixtral"), "--repository-dir", str(tmp_path / "r"),
                "--dry-run", *args], cwd=REPO)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_missing_model_folder_says_what_to_mount(tmp_path):
    proc = run([*ENTRYPOINT, "--dry-run"], cwd=REPO, env={**os.environ, "MOE_MODEL_DIR": str(tmp_path / "none")})
    assert proc.returncode != 0 and "MOE_MODEL_DIR" in proc.stderr


def wait_ready(server: subprocess.Popen, http_port: int, log) -> None:
    deadline = time.monotonic() + 300
    while True:
        assert server.poll() is None, f"tritonserver exited {server.returncode}:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"not ready after 300 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)


def exported_names(metrics_port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_real_tritonserver_through_the_entrypoint_exports_every_dashboard_series(tiny_model, tmp_path):
    if not TRITONSERVER.exists():
        missing("tritonserver (scripts/install_tritonserver.sh)")
    numa = run([sys.executable, "-m", "deploy.numa_policy", "--format", "args", "--only-allowed"], cwd=REPO)
    assert numa.returncode == 0, numa.stderr
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "server.log"
    cmd = [*ENTRYPOINT, "--model", tiny_model("mixtral"), "--param", "max_tokens_in_paged_kv_cache=1024",
           "--repository-dir", str(tmp_path / "repo"), "--",
           f"--backend-directory={BACKENDS}", "--http-address=127.0.0.1", f"--http-port={http}",
           "--grpc-address=127.0.0.1", f"--grpc-port={grpc}", "--metrics-address=127.0.0.1",
           f"--metrics-port={metrics}", "--strict-readiness=true", "--exit-timeout-secs=15", *numa.stdout.split()]
    env = {**server_env(), "TRITONSERVER": str(TRITONSERVER)}
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(server, http, log)
        assert rendered_config(tmp_path / "repo").instance_group[0].host_policy == "numa0"
        body = json.dumps({"text_input": "The quick brown fox", "max_tokens": 4}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/moe_llm/generate", body, timeout=60) as r:
            assert json.load(r)["text_output"] is not None
        missing_series = EXPORTED - exported_names(metrics)
        assert not missing_series, f"the dashboard and rules read series the server does not export: {missing_series}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # the Python stub, if the server left it behind
        except ProcessLookupError:
            pass
        server.wait()

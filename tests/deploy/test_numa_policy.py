"""deploy.numa_policy on canned sysfs trees (1, 2, 4 nodes, SMT, interleaved, broken) and on a
real tritonserver, which must accept the printed arguments and pin the Python stub to them."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from backend.serve import BACKENDS, TRITONSERVER, free_ports, server_env
from deploy.numa_policy import NumaNode, format_cpulist, main, parse_cpulist, parse_lscpu
from tests.deploy.deploy_tools import REPO, missing


def fake_sysfs(root: Path, cpulists: dict[int, str]) -> Path:
    node_dir = root / "sys/devices/system/node"
    node_dir.mkdir(parents=True)
    (node_dir / "online").write_text(format_cpulist(sorted(cpulists)) + "\n")  # not a node dir: ignored
    for node_id, cpulist in cpulists.items():
        (node_dir / f"node{node_id}").mkdir()
        (node_dir / f"node{node_id}" / "cpulist").write_text(cpulist + "\n")
    return root


def run_tool(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_node(tmp_path, capsys):
    root = fake_sysfs(tmp_path, {0: "0-7"})
    code, out, _ = run_tool(capsys, "--sysfs-root", str(root), "--format", "args")
    assert code == 0
    assert out.splitlines() == ["--host-policy=numa0,numa-node=0", "--host-policy=numa0,cpu-cores=0-7"]
    code, out, _ = run_tool(capsys, "--sysfs-root", str(root), "--format", "instance-group")
    assert out.strip() == 'instance_group [\n  { name: "numa0" count: 1 kind: KIND_CPU host_policy: "numa0" }\n]'


def test_two_nodes_with_smt_siblings_bind_one_thread_per_core(tmp_path, capsys):
    root = fake_sysfs(tmp_path, {0: "0-15,32-47", 1: "16-31,48-63"})
    code, out, err = run_tool(capsys, "--sysfs-root", str(root), "--format", "args")
    assert code == 0
    assert out.splitlines() == [
        "--host-policy=numa0,numa-node=0", "--host-policy=numa0,cpu-cores=0-15",
        "--host-policy=numa1,numa-node=1", "--host-policy=numa1,cpu-cores=16-31",
    ]
    assert "node 0: CPUs 32-47 left out" in err and "node 1: CPUs 48-63 left out" in err


def test_four_nodes_skip_memory_only_node_and_sort_numerically(tmp_path, capsys):
    # node10 is a CPU-less memory node (e.g. CXL/HBM): no instance for it.
    root = fake_sysfs(tmp_path, {2: "16-23", 0: "0-7", 3: "24-31", 1: "8-15", 10: ""})
    code, out, _ = run_tool(capsys, "--sysfs-root", str(root), "--prefix", "socket")
    assert code == 0
    args = [line for line in out.splitlines() if line.startswith("--")]
    assert args == [f"--host-policy=socket{n},{kind}" for n in range(4)
                    for kind in (f"numa-node={n}", f"cpu-cores={8 * n}-{8 * n + 7}")]
    groups = [line for line in out.splitlines() if "KIND_CPU" in line]
    assert len(groups) == 4 and all(f'host_policy: "socket{n}"' in groups[n] for n in range(4))
    assert "engine num_threads 8" in out and "node 10" not in out


def test_helm_values_format_matches_chart_keys(tmp_path, capsys):
    import yaml
    root = fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"})
    code, out, _ = run_tool(capsys, "--sysfs-root", str(root), "--format", "helm-values")
    assert code == 0
    assert yaml.safe_load(out) == {"server": {"hostPolicies": [
        {"name": "numa0", "numaNode": 0, "cpuCores": "0-3"}, {"name": "numa1", "numaNode": 1, "cpuCores": "4-7"}]}}


def test_interleaved_numbering_gets_memory_policy_only(tmp_path, capsys):
    root = fake_sysfs(tmp_path, {0: "0,2,4,6", 1: "1,3,5,7"})
    code, out, err = run_tool(capsys, "--sysfs-root", str(root), "--format", "args")
    assert code == 0
    assert out.splitlines() == ["--host-policy=numa0,numa-node=0", "--host-policy=numa1,numa-node=1"]
    assert "memory policy only" in err


def test_broken_cpulist_names_the_file(tmp_path, capsys):
    root = fake_sysfs(tmp_path, {0: "0-3", 1: "7-4"})
    code, out, err = run_tool(capsys, "--sysfs-root", str(root))
    assert code == 1 and out == ""
    assert "node1/cpulist" in err and "7-4" in err


def test_missing_cpulist_file_is_an_error(tmp_path, capsys):
    (tmp_path / "sys/devices/system/node/node0").mkdir(parents=True)
    code, _, err = run_tool(capsys, "--sysfs-root", str(tmp_path))
    assert code == 1 and "node0/cpulist is missing" in err


def test_no_numa_in_sysfs_falls_back_to_lscpu(tmp_path, capsys):
    code, out, _ = run_tool(capsys, "--sysfs-root", str(tmp_path))  # a root without sys/devices/system/node
    assert code == 0
    assert out.startswith("# NUMA topology from lscpu:")
    assert "--host-policy=numa0,numa-node=0" in out


def test_parse_lscpu_and_cpulist():
    text = "# The following is the parsable format\n# CPU,Node\n0,0\n1,1\n2,0\n3,1\n"
    assert parse_lscpu(text) == [NumaNode(0, [0, 2]), NumaNode(1, [1, 3])]
    assert parse_lscpu("0,\n1,\n") == [NumaNode(0, [0, 1])]  # kernel without NUMA: empty NODE column
    assert parse_cpulist("0-2,5,9-10\n", "x") == [0, 1, 2, 5, 9, 10]
    assert format_cpulist([0, 1, 2, 5, 9, 10]) == "0-2,5,9-10"


def test_only_allowed_restricts_to_the_process_cpuset(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs to restrict the affinity to one of them")
    last = cpus[-1]
    root = fake_sysfs(tmp_path, {0: format_cpulist(cpus[:-1]), 1: str(last)})
    code = (f"import os, sys; os.sched_setaffinity(0, {{{last}}}); from deploy.numa_policy import main; "
            f"sys.exit(main(['--sysfs-root', {str(root)!r}, '--format', 'args', '--only-allowed']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["--host-policy=numa1,numa-node=1", f"--host-policy=numa1,cpu-cores={last}-{last}"]


# --- the printed arguments on a real tritonserver -------------------------------------------------

AFFINITY_MODEL = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        cpus = sorted(os.sched_getaffinity(0))   # of the stub process that runs this instance
        out = np.array([[cpus[0], cpus[-1], len(cpus)]], dtype=np.int32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("CPUS", out)]) for _ in requests]
'''


def test_tritonserver_accepts_the_policies_and_pins_the_python_stub(tmp_path, capsys):
    pinned = max(os.sched_getaffinity(0))  # a node whose only CPU is the last one we may use
    root = fake_sysfs(tmp_path / "host", {0: str(pinned)})
    assert main(["--sysfs-root", str(root), "--format", "args"]) == 0
    args = capsys.readouterr().out.split()
    assert main(["--sysfs-root", str(root), "--format", "instance-group"]) == 0
    instance_group = capsys.readouterr().out

    model = tmp_path / "repo" / "affinity"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(AFFINITY_MODEL)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "CPUS" data_type: TYPE_INT32 dims: [ 1, 3 ] } ]\n' + instance_group)
    if not TRITONSERVER.exists():
        missing("tritonserver (scripts/install_tritonserver.sh)")
    http, grpc, metrics = free_ports(3)
    cmd = [str(TRITONSERVER), "--backend-directory", str(BACKENDS), "--model-repository", str(tmp_path / "repo"),
           "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
           "--grpc-port", str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
           "--exit-timeout-secs", "5", *args]
    log = open(tmp_path / "tritonserver.log", "w")
    server = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"tritonserver exited: {(tmp_path / 'tritonserver.log').read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "tritonserver.log").read_text()
                time.sleep(0.5)
        body = b'{"inputs":[{"name":"IN","shape":[1],"datatype":"INT32","data":[0]}]}'
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/affinity/infer", body, timeout=30) as r:
            cpus = json.load(r)["outputs"][0]["data"]
        assert cpus == [pinned, pinned, 1], f"stub affinity (first, last, count) = {cpus}, args {args}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

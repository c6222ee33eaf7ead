"""Per-NUMA-node tritonserver host policies and the matching instance groups.

For every NUMA node that has CPUs it prints
  --host-policy=numa<N>,numa-node=<N>          memory policy of the instance: allocate on node N
  --host-policy=numa<N>,cpu-cores=<lo>-<hi>    CPU affinity of the instance thread; the Python
                                               backend stub process inherits it (checked on 2.51)
and one KIND_CPU instance per node bound to that policy, so each instance's experts, KV cache and
threads stay on one node instead of paying cross-socket memory traffic on every MoE GEMM.

Triton's cpu-cores setting takes exactly one `lo-hi` range. A node whose CPUs are not one range
(SMT siblings numbered after all first threads, e.g. 0-15,64-79) is bound to its longest range,
which holds one hardware thread per core; if no range covers half of the node (interleaved
numbering), only numa-node is emitted and a warning says so.

Usage: python -m deploy.numa_policy [--format all|args|instance-group|helm-values]
                                    [--sysfs-root /] [--only-allowed] [--prefix numa]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


class TopologyError(ValueError):
    pass


@dataclass
class NumaNode:
    node_id: int
    cpus: list[int]
    notes: list[str] = field(default_factory=list)

    def core_range(self) -> tuple[int, int] | None:
        """The one contiguous CPU range given to Triton's cpu-cores, or None if none is big enough."""
        if not self.cpus:
            return None
        lo, hi = max(contiguous_ranges(self.cpus), key=lambda r: (r[1] - r[0], -r[0]))
        return (lo, hi) if 2 * (hi - lo + 1) >= len(self.cpus) else None


def parse_cpulist(text: str, source: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise TopologyError(f"{source}: cannot parse CPU list {text.strip()!r} (expected e.g. '0-3,8')")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def contiguous_ranges(cpus: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], cpu)
        else:
            ranges.append((cpu, cpu))
    return ranges


def format_cpulist(cpus: list[int]) -> str:
    return ",".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in contiguous_ranges(cpus))


def read_sysfs_nodes(sysfs_root: Path) -> list[NumaNode] | None:
    """Nodes from <root>/sys/devices/system/node/node*/cpulist; None if the kernel shows no nodes."""
    node_dir = sysfs_root / "sys/devices/system/node"
    dirs = [d for d in node_dir.glob("node*") if re.fullmatch(r"node\d+", d.name)] if node_dir.is_dir() else []
    if not dirs:
        return None
    nodes = []
    for d in sorted(dirs, key=lambda d: int(d.name[4:])):
        cpulist = d / "cpulist"
        if not cpulist.is_file():
            raise TopologyError(f"{cpulist} is missing; is {sysfs_root} a sysfs root?")
        nodes.append(NumaNode(int(d.name[4:]), parse_cpulist(cpulist.read_text(), str(cpulist))))
    return nodes


def parse_lscpu(text: str) -> list[NumaNode]:
    """Nodes from `lscpu -p=CPU,NODE`; an empty NODE column (kernel without NUMA) means node 0."""
    by_node: dict[int, list[int]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cpu, _, node = line.partition(",")
        if not cpu.strip().isdigit() or not (node.strip() == "" or node.strip().isdigit()):
            raise TopologyError(f"lscpu -p=CPU,NODE: unexpected line {line!r}")
        by_node.setdefault(int(node or 0), []).append(int(cpu))
    return [NumaNode(n, sorted(cpus)) for n, cpus in sorted(by_node.items())]


def read_lscpu_nodes() -> list[NumaNode]:
    if shutil.which("lscpu") is None:
        raise TopologyError("no NUMA nodes in sysfs and no lscpu on PATH (install util-linux, or pass --sysfs-root)")
    out = subprocess.run(["lscpu", "-p=CPU,NODE"], check=True, capture_output=True, text=True).stdout
    return parse_lscpu(out)


def read_topology(sysfs_root: Path, allowed: set[int] | None = None) -> tuple[list[NumaNode], str]:
    """NUMA nodes that have CPUs (restricted to `allowed` CPUs if given) and where they were read from."""
    nodes = read_sysfs_nodes(sysfs_root)
    source = f"{sysfs_root / 'sys/devices/system/node'}"
    if nodes is None:
        nodes, source = read_lscpu_nodes(), "lscpu"
    if allowed is not None:
        for node in nodes:
            node.cpus = [c for c in node.cpus if c in allowed]
    usable = [n for n in nodes if n.cpus]
    if not usable:
        raise TopologyError(f"no NUMA node with {'allowed ' if allowed is not None else ''}CPUs found in {source}")
    for node in usable:
        rng = node.core_range()
        if rng is None:
            node.notes.append(f"no CPU range covers half of node {node.node_id} ({format_cpulist(node.cpus)}): "
                              "memory policy only, threads unpinned")
        elif rng[1] - rng[0] + 1 < len(node.cpus):
            left_out = [c for c in node.cpus if not rng[0] <= c <= rng[1]]
            node.notes.append(f"CPUs {format_cpulist(left_out)} left out (usually SMT siblings): "
                              "Triton's cpu-cores takes one range")
    return usable, source


def host_policy_args(nodes: list[NumaNode], prefix: str) -> list[str]:
    args = []
    for node in nodes:
        name = f"{prefix}{node.node_id}"
        args.append(f"--host-policy={name},numa-node={node.node_id}")
        rng = node.core_range()
        if rng is not None:
            args.append(f"--host-policy={name},cpu-cores={rng[0]}-{rng[1]}")
    return args


def instance_group_pbtxt(nodes: list[NumaNode], prefix: str) -> str:
    rows = [f'  {{ name: "{prefix}{n.node_id}" count: 1 kind: KIND_CPU host_policy: "{prefix}{n.node_id}" }}'
            for n in nodes]
    return "instance_group [\n" + ",\n".join(rows) + "\n]"


def helm_values(nodes: list[NumaNode], prefix: str) -> str:
    """The chart's server.hostPolicies (deploy/helm/triton-moe-backend/values.yaml)."""
    lines = ["server:", "  hostPolicies:"]
    for node in nodes:
        lines += [f"    - name: {prefix}{node.node_id}", f"      numaNode: {node.node_id}"]
        rng = node.core_range()
        if rng is not None:
            lines.append(f'      cpuCores: "{rng[0]}-{rng[1]}"')
    return "\n".join(lines)


def describe(nodes: list[NumaNode], source: str) -> str:
    lines = [f"# NUMA topology from {source}: {len(nodes)} node(s) with CPUs"]
    for node in nodes:
        rng = node.core_range()
        pinned = f"cpu-cores {rng[0]}-{rng[1]}, engine num_threads {rng[1] - rng[0] + 1}" if rng else "unpinned"
        lines.append(f"#   node {node.node_id}: CPUs {format_cpulist(node.cpus)} -> {pinned}")
        lines += [f"#     note: {note}" for note in node.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.numa_policy", description=__doc__.split("\n")[0])
    parser.add_argument("--format", choices=["all", "args", "instance-group", "helm-values"], default="all",
                        help="all (default): commented summary, arguments and instance_group")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/"),
                        help="root that holds sys/devices/system/node (default /; tests pass a fake tree)")
    parser.add_argument("--only-allowed", action="store_true",
                        help="keep only CPUs this process may run on (a container's cpuset)")
    parser.add_argument("--prefix", default="numa", help="host policy name prefix (default numa -> numa0, numa1...)")
    opts = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", opts.prefix):
        parser.error(f"--prefix must be letters, digits or '_' starting with a letter, got {opts.prefix!r}")
    if not opts.sysfs_root.is_dir():
        parser.error(f"--sysfs-root {opts.sysfs_root} is not a directory")
    try:
        allowed = set(os.sched_getaffinity(0)) if opts.only_allowed else None
        nodes, source = read_topology(opts.sysfs_root, allowed)
    except (TopologyError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if opts.format != "all":  # "all" carries the notes in its summary
        for node in nodes:
            for note in node.notes:
                print(f"warning: node {node.node_id}: {note}", file=sys.stderr)
    args = host_policy_args(nodes, opts.prefix)
    if opts.format == "args":
        print("\n".join(args))
    elif opts.format == "instance-group":
        print(instance_group_pbtxt(nodes, opts.prefix))
    elif opts.format == "helm-values":
        print(helm_values(nodes, opts.prefix))
    else:
        print(describe(nodes, source))
        print("# tritonserver arguments:")
        print("\n".join(args))
        print("# config.pbtxt of the model: one CPU instance per NUMA node")
        print(instance_group_pbtxt(nodes, opts.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())

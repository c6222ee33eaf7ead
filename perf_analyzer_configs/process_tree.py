"""CPU time and resident memory of a whole server process tree (tritonserver + Python stub + children).

Read with psutil from /proc. Processes that start or end between two samples are handled: CPU time is
summed per pid over the processes alive at each sample, so a process that exits loses at most its last
interval (the servers measured here keep a fixed set of processes once ready).
"""
import time
from dataclasses import dataclass

import psutil


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def _cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for p in processes:
        try:
            t = p.cpu_times()
            seconds[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return seconds


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the tree of `pid` has used so far."""
    return sum(_cpu_seconds(tree(pid)).values())


def rss_bytes(pid: int) -> int:
    """Resident memory of the tree (sum of RSS; shared pages are counted in each process)."""
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


@dataclass
class CpuSample:
    seconds: float            # wall time measured
    cpu_seconds: float        # CPU time the tree used in it (user + system)
    per_process: dict         # "name[pid]" -> CPU seconds

    @property
    def percent_of_one_core(self) -> float:
        return 100 * self.cpu_seconds / self.seconds


def measure_cpu(pid: int, seconds: float = 10.0) -> CpuSample:
    """CPU the tree of `pid` uses over `seconds` of wall time (blocks that long: one sleep, no polling)."""
    processes = tree(pid)
    names = {}
    for p in processes:
        try:
            names[p.pid] = f"{p.name()}[{p.pid}]"
        except psutil.NoSuchProcess:
            pass
    before = _cpu_seconds(processes)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = _cpu_seconds(tree(pid))
    elapsed = time.monotonic() - t0
    used = {pid_: after[pid_] - before.get(pid_, 0.0) for pid_ in after}
    return CpuSample(elapsed, sum(used.values()),
                     {names.get(p, f"?[{p}]"): round(s, 4) for p, s in sorted(used.items())})

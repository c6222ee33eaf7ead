"""The server's engine counters and CPU time, sampled while perf_analyzer runs a level, so that the level's engine
figures (ms per step, tokens per step, server CPU) cover the same steady window as its output tok/s.

perf_analyzer's profile export stamps requests in wall-clock ns (time.time_ns()); the samples use the same clock.
"""
import threading
import time
from dataclasses import dataclass

import requests

from perf_analyzer_configs.process_tree import cpu_seconds
from perf_analyzer_configs.server_metrics import engine_gauges


@dataclass(frozen=True)
class Sample:
    time_ns: int            # wall clock, as perf_analyzer's timestamps
    iterations: float       # engine steps so far
    tokens: float           # generated tokens so far
    cpu_s: float            # CPU seconds of the server's process tree so far


class LevelSampler:
    """Samples every period_s on its own thread (it sleeps on an Event between samples) until the with-block ends."""

    def __init__(self, metrics_url: str, pid: int, period_s: float = 0.5):
        self.metrics_url, self.pid, self.period_s = metrics_url, pid, period_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="level-sampler", daemon=True)

    def __enter__(self) -> "LevelSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                g = engine_gauges(self.metrics_url)
                self.samples.append(Sample(time.time_ns(), g["iterations"], g["vllm:generation_tokens_total"],
                                           cpu_seconds(self.pid)))
            except requests.RequestException:   # one missed scrape leaves a gap between samples, nothing more
                pass
            if self._stop.wait(self.period_s):
                return


def window_rates(samples: list[Sample], start_ns: int, end_ns: int) -> dict | None:
    """Engine steps, ms per step, tokens per step and server CPU % between the first and the last sample inside
    [start_ns, end_ns]; None when fewer than two samples fall inside or the engine made no step between them."""
    inside = [s for s in samples if start_ns <= s.time_ns <= end_ns]
    if len(inside) < 2 or inside[-1].iterations <= inside[0].iterations:
        return None
    a, b = inside[0], inside[-1]
    steps, seconds = b.iterations - a.iterations, (b.time_ns - a.time_ns) / 1e9
    return dict(engine_steps=steps, step_ms=1000 * seconds / steps, tokens_per_step=(b.tokens - a.tokens) / steps,
                server_cpu_percent=100 * (b.cpu_s - a.cpu_s) / seconds)

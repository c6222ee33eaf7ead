"""`python -m openai_gateway` as a real subprocess on a free 127.0.0.1 port, and Triton metric reads."""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from backend.serve import free_ports

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-gateway-key"


class GatewayProcess:
    def __init__(self, triton_grpc_url: str, tokenizer_dir: Path | None = None, api_key: str | None = API_KEY,
                 **env: str):
        self.port = free_ports(1)[0]
        self.env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port),
                    "TRITON_GRPC_URL": triton_grpc_url, "OPENAI_API_KEY": api_key or "",
                    "TOKENIZER_DIR": str(tokenizer_dir or ""), "HF_HUB_OFFLINE": "1", **env}
        self.log = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout_s: float = 60) -> "GatewayProcess":
        self.process = subprocess.Popen([sys.executable, "-m", "openai_gateway"], cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:   # up once /health answers at all (503 is a valid answer while Triton is down)
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/health", timeout=5)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the gateway did not start in {timeout_s} s:\n{self.log_text()}")
                time.sleep(0.2)

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_gateway(*args, **kwargs):
    """Fixture body: a started gateway; its log is printed when it stops (pytest shows it on failure)."""
    gateway = GatewayProcess(*args, **kwargs).start()
    yield gateway
    log = gateway.log_text()
    gateway.stop()
    print(f"\n--- gateway log ---\n{log[-4000:]}")


def triton_metric(server, family: str, **labels) -> float:
    """The one sample of a Triton metric family whose labels include `labels`."""
    page = httpx.get(server.metrics_url, timeout=5).text
    values = [sample.value for fam in text_string_to_metric_families(page) if fam.name == family
              for sample in fam.samples if labels.items() <= sample.labels.items()]
    assert len(values) == 1, f"{family}{labels}: {values}"
    return values[0]


def kv_blocks_used(server) -> float:
    return triton_metric(server, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used")


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return value

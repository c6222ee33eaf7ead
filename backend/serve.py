"""Serve the engine from a real tritonserver (no Docker).

    python -m backend.serve [--model DIR] [--http-port N] [--grpc-port N] [--metrics-port N] [--param key=value ...]

Renders model_repository/ into a run folder with the model folder and the parameters filled in, starts
tritonserver with the Python backend from .tools/ (scripts/install_tritonserver.sh) in the environment
the stub needs, waits until the model is loaded and warm, and stops everything on Ctrl-C or SIGTERM.
Tests use the same class: `with TritonServer(model_dir, params).start() as server: ...` (free ports).
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from backend.triton.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
PYTRITON = ROOT / ".tools" / "pytriton"
TRITONSERVER = PYTRITON / "pytriton" / "tritonserver" / "bin" / "tritonserver"
BACKENDS = ROOT / ".tools" / "backends"
REPOSITORY = ROOT / "model_repository"
MODEL_NAME = "moe_llm"
# config.pbtxt is complete and model.py has no auto_complete_config. Without this flag the Python backend first starts
# a throwaway stub that imports model.py (torch and all) only to ask for one: 1.9 s of every start-up.
MODEL_LOAD_ARGS = ("--disable-auto-complete-config",)
# --param keys that set Triton's own config fields (TRT-LLM's fill_template names) rather than `parameters`.
TRITON_FIELDS = ("triton_max_batch_size", "max_queue_delay_microseconds", "max_queue_size")


def render_repository(dest: Path, model_dir: str | Path, params: dict[str, str]) -> Path:
    """Copy model_repository/ to dest with `model` and params filled in; checks every value first."""
    config = text_format.Parse((REPOSITORY / MODEL_NAME / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    triton = {k: int(v) for k, v in params.items() if k in TRITON_FIELDS}
    engine = {k: str(v) for k, v in params.items() if k not in TRITON_FIELDS}
    engine["model"] = str(Path(model_dir).resolve())
    values = {key: entry.string_value for key, entry in config.parameters.items()} | engine
    load_settings(values)   # raises ConfigError(field) for unknown keys and bad values, before any launch
    for key, value in engine.items():
        config.parameters[key].string_value = value
    if "triton_max_batch_size" in triton:
        config.max_batch_size = triton["triton_max_batch_size"]
    if "max_queue_delay_microseconds" in triton:
        config.dynamic_batching.max_queue_delay_microseconds = triton["max_queue_delay_microseconds"]
    if "max_queue_size" in triton:
        config.dynamic_batching.default_queue_policy.max_queue_size = triton["max_queue_size"]
    shutil.copytree(REPOSITORY / MODEL_NAME, dest / MODEL_NAME, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / MODEL_NAME / "config.pbtxt").write_text(text_format.MessageToString(config))
    return dest


def server_env() -> dict[str, str]:
    """The stub embeds libpython: it must load this venv's own build and find the venv and the repo."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, str(PYTRITON / "nvidia_pytriton.libs"),
                                                            env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "bin"), env.get("PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    def __init__(self, model_dir: str | Path, params: dict[str, str] | None = None, http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, host: str = "127.0.0.1", log_file: Path | None = None,
                 startup_timeout_s: float = 600, exit_timeout_s: int = 30, log_verbose: int = 0):
        """Ports of 0 are picked free. log_file None: tritonserver's log goes to the run folder, which stop()
        removes (read it before with log_tail())."""
        picked = iter(free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(picked) for p in (http_port, grpc_port, metrics_port))
        self.model_dir, self.params, self.host = Path(model_dir), dict(params or {}), host
        self.startup_timeout_s, self.exit_timeout_s, self.log_verbose = startup_timeout_s, exit_timeout_s, log_verbose
        self.run_dir: Path | None = None
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.local_host}:{self.metrics_port}/metrics"

    def command(self, repository: Path) -> list[str]:
        return [str(TRITONSERVER), f"--model-repository={repository}", f"--backend-directory={BACKENDS}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", *MODEL_LOAD_ARGS, f"--exit-timeout-secs={self.exit_timeout_s}",
                f"--log-verbose={self.log_verbose}"]

    def start(self) -> "TritonServer":
        if not TRITONSERVER.exists():
            raise FileNotFoundError(f"{TRITONSERVER} is missing: run scripts/install_tritonserver.sh")
        (ROOT / ".cache").mkdir(exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="triton-run-", dir=ROOT / ".cache"))
        repository = render_repository(self.run_dir / "model_repository", self.model_dir, self.params)
        self.log_file = self.log_file or self.run_dir / "tritonserver.log"
        with open(self.log_file, "ab") as log:
            # Own session: a terminal's Ctrl-C reaches us only, and stop() can end the stub processes too.
            self.process = subprocess.Popen(self.command(repository), env=server_env(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Polls /v2/health/ready: ready means the model is loaded, and initialize() warms the engine up first."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} during start-up; "
                                   f"log {self.log_file}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)   # a cheap local GET: noticing ready sooner is worth more than fewer polls
        raise TimeoutError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s; log {self.log_file}:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)   # tritonserver unloads the model: finalize() stops our threads
            try:
                self.process.wait(timeout=self.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            try:   # a stub left behind by a crash is in the server's process group
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def __enter__(self) -> "TritonServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def start_gateway(server: TritonServer, model_dir: Path, host: str) -> subprocess.Popen:
    """`python -m openai_gateway` in front of the server: the OpenAI API on GATEWAY_PORT (default 9000)."""
    env = {**server_env(), "GATEWAY_HOST": host, "TRITON_GRPC_URL": server.grpc_url, "TRITON_MODEL": MODEL_NAME,
           "TOKENIZER_DIR": str(Path(model_dir).resolve())}
    env.setdefault("GATEWAY_PORT", "9000")   # OPENAI_API_KEY passes through from the environment
    return subprocess.Popen([sys.executable, "-m", "openai_gateway"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def stop_gateway(gateway: subprocess.Popen) -> None:
    gateway.terminate()                      # uvicorn stops accepting and lets open streams end
    try:
        gateway.wait(timeout=15)
    except subprocess.TimeoutExpired:
        gateway.kill()
        gateway.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default model, built on first use)")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to bind (default 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002)))
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="engine setting (config.pbtxt parameters key, e.g. max_tokens_in_paged_kv_cache=4096) "
                             f"or one of {', '.join(TRITON_FIELDS)}; repeatable")
    parser.add_argument("--exit-timeout", type=int, default=30, metavar="SECONDS",
                        help="on Ctrl-C/SIGTERM, how long tritonserver lets running requests finish (default 30)")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--with-gateway", action="store_true",
                        help="also serve the OpenAI API (python -m openai_gateway) on GATEWAY_PORT (default 9000); "
                             "OPENAI_API_KEY, if set, is required as a Bearer token")
    args = parser.parse_args(argv)
    from backend.default_model import model_dir_or_default
    model_dir = model_dir_or_default(args.model)
    server = TritonServer(model_dir, parse_params(args.param), args.http_port, args.grpc_port, args.metrics_port,
                          host=args.host, log_file=Path("/dev/stdout"), exit_timeout_s=args.exit_timeout,
                          log_verbose=args.log_verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # SystemExit unwinds into server.stop()
    gateway = None
    try:
        start = time.monotonic()
        server.start()
        ready_s = time.monotonic() - start
        if args.with_gateway:
            gateway = start_gateway(server, model_dir, args.host)
        print(f"\nmoe_llm is ready after {ready_s:.1f} s ({model_dir})\n  HTTP    http://{server.http_url}\n"
              f"  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}\n\ntry:\n  curl -N http://{server.http_url}/v2/models/{MODEL_NAME}/"
              "generate_stream -d '{\"text_input\": \"The capital of France is\", \"max_tokens\": 32, "
              "\"stream\": true}'\n  python -m client.generate \"The capital of France is\"\n", flush=True)
        if gateway is not None:
            port = os.environ.get("GATEWAY_PORT", "9000")
            print(f"  OpenAI  http://{server.local_host}:{port}/v1  (model id: {Path(model_dir).name})\n"
                  f"  curl http://{server.local_host}:{port}/v1/chat/completions -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{Path(model_dir).name}\", \"messages\": [{{\"role\": \"user\", "
                  f"\"content\": \"What is the capital of France?\"}}]}}'\n", flush=True)
        return server.process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if gateway is not None:
            stop_gateway(gateway)            # before Triton, so no request is cut by the unload
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

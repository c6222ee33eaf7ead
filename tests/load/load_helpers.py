"""Streams whose every response is time-stamped on arrival (in the gRPC callback), metric polling."""
import threading
import time

import tritonclient.grpc as grpcclient

from client.generate import decode_outputs, grpc_inputs
from perf_analyzer_configs.server_metrics import engine_gauges
from tests.e2e.triton_helpers import wait_until  # noqa: F401  (re-exported for the tests)


class TimedStream:
    """One request on its own gRPC stream. Build first (connects), then send(): the send time excludes
    connection set-up, so a group of streams can start together."""

    def __init__(self, server, prompt: str, **inputs):
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.tensors = grpc_inputs({"text_input": prompt, "stream": True, "return_num_output_tokens": True, **inputs})
        self.arrivals: list[float] = []        # time.monotonic() of each response carrying tokens
        self.pieces: list[str] = []
        self.num_output_tokens = 0
        self.finish_reason = None
        self.error = None
        self.done = threading.Event()
        self.sent_at = None
        self.client.start_stream(callback=self._on_response)

    def send(self) -> "TimedStream":
        self.sent_at = time.monotonic()
        self.client.async_stream_infer("moe_llm", self.tensors, enable_empty_final_response=True)
        return self

    def _on_response(self, result, error) -> None:
        now = time.monotonic()
        if error is not None:
            self.error = error.message()
            self.done.set()
            return
        response = result.get_response()
        if response.outputs:
            outputs = decode_outputs(result)
            if outputs.get("num_output_tokens"):
                self.arrivals.append(now)
            self.num_output_tokens += outputs.get("num_output_tokens", 0)
            self.pieces.append(outputs.get("text_output", ""))
            self.finish_reason = outputs.get("finish_reason", self.finish_reason)
        if response.parameters["triton_final_response"].bool_param:
            self.done.set()

    def wait(self, timeout_s: float = 120) -> "TimedStream":
        assert self.done.wait(timeout_s), f"no final response within {timeout_s} s"
        assert self.error is None, self.error
        return self

    def cancel(self) -> None:
        self.client.stop_stream(cancel_requests=True)
        self.client.close()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def first(self) -> float:
        return self.arrivals[0]

    @property
    def last(self) -> float:
        return self.arrivals[-1]

    @property
    def e2e(self) -> float:
        return self.last - self.sent_at


def gauges(server) -> dict[str, float]:
    """The TRT-LLM gauges and our counters by short name, from one scrape."""
    return engine_gauges(server.metrics_url)


def wait_idle(server, timeout_s: float = 15) -> None:
    wait_until(lambda: (g := gauges(server))["active"] == 0 and g["kv_used"] == 0 and g["pending"] == 0,
               timeout_s, "no active request, no pending request and 0 KV blocks used")

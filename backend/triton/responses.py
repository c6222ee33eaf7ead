"""Engine outputs -> Triton responses, sent from one thread that owns every response sender.

The engine thread only enqueues its RequestOutputs here (a cheap put), so sending over the stub's IPC
never slows an engine step. The same thread notices cancelled requests: every
cancellation_check_period_ms it asks is_cancelled() of each active request (an IPC round trip, so not
after every token). It sleeps on its queue, with no timeout, when no request is active.
"""
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from backend.outputs import RequestOutput
from backend.triton.request_inputs import GenerateRequest

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@dataclass(slots=True, eq=False)
class ActiveRequest:
    request_id: str                 # the engine's id (unique); Triton's own id may repeat or be empty
    sender: object                  # pb_utils.InferenceResponseSender
    request: GenerateRequest
    arrival: float                  # time.monotonic() when execute() took the request
    first_token_at: float | None = None
    last_cancel_check: float = 0.0
    abort_sent: bool = False
    unsent_tokens: int = 0          # tokens made but not reported yet (empty text delta, non-streaming)
    unsent_logprobs: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)   # non-streaming: the whole output so far
    cum_log_prob: float = 0.0


@dataclass(slots=True)
class _Failure:
    request_id: str
    error: object                   # pb_utils.TritonError


class ResponseLoop:
    def __init__(self, runner, metrics, cancellation_check_period_ms: int):
        self._runner = runner
        self._metrics = metrics
        self._period = cancellation_check_period_ms / 1000
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[str, ActiveRequest] = {}
        self._last_sweep = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="triton-responses", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    # Called from execute(); add() must come before the engine can produce outputs for the request.
    def add(self, active: ActiveRequest) -> None:
        self._inbox.put(active)

    def fail(self, request_id: str, error) -> None:
        self._inbox.put(_Failure(request_id, error))

    # Called from the engine thread.
    def on_output(self, output: RequestOutput) -> None:
        self._inbox.put(output)

    def _run(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=self._period if self._active else None)
            except queue.Empty:
                item = "sweep"
            if item is None:
                break
            if isinstance(item, ActiveRequest):
                self._active[item.request_id] = item
            elif isinstance(item, RequestOutput):
                self._handle(item)
            elif isinstance(item, _Failure):
                self._finish(self._active.pop(item.request_id), error=item.error)
            self._sweep_cancelled()
        for active in self._active.values():
            self._finish(active, error=pb_utils.TritonError("the model is being unloaded; retry on another server",
                                                            pb_utils.TritonError.UNAVAILABLE))

    def _handle(self, output: RequestOutput) -> None:
        active = self._active.get(output.request_id)
        if active is None:
            return
        now = time.monotonic()
        if output.new_token_ids and active.first_token_at is None:
            active.first_token_at = now
        active.unsent_tokens += len(output.new_token_ids)
        active.unsent_logprobs += output.new_logprobs or []
        if output.finished:
            del self._active[output.request_id]
            if output.finish_reason == "cancelled":
                self._finish(active, error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED))
            elif output.error:
                self._finish(active, error=pb_utils.TritonError(output.error, pb_utils.TritonError.INTERNAL))
            else:
                self._finish(active, output=output)
                self._metrics.observe_request(active.arrival, active.first_token_at, now, output.num_output_tokens)
            return
        if not active.request.stream:
            active.text.append(output.text_delta)
        elif output.text_delta:   # an empty delta (half a UTF-8 character) waits for the next token
            self._send(active, self._response(active, output.text_delta, output), flags=0)

    def _finish(self, active: ActiveRequest, output: RequestOutput | None = None, error=None) -> None:
        if error is not None:
            self._send(active, pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        text = output.text_delta
        if not active.request.stream:
            text = "".join(active.text) + text
            if not active.request.exclude_input_in_output:
                text = active.request.prompt + text
        self._send(active, self._response(active, text, output), flags=FINAL)

    def _response(self, active: ActiveRequest, text: str, output: RequestOutput):
        request = active.request
        tensors = [pb_utils.Tensor("text_output", np.array([[text.encode()]], dtype=np.object_))]
        if output.finished:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([[output.finish_reason.encode()]], dtype=np.object_)))
        if request.return_num_input_tokens:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[output.num_prompt_tokens]], dtype=np.uint32)))
        if request.return_num_output_tokens:   # tokens in this response, as vLLM's backend reports them
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[active.unsent_tokens]], dtype=np.uint32)))
        if request.params.logprobs:
            active.cum_log_prob += sum(active.unsent_logprobs)
            tensors.append(pb_utils.Tensor("output_log_probs", np.array([active.unsent_logprobs], dtype=np.float32)))
            tensors.append(pb_utils.Tensor("cum_log_probs", np.array([[active.cum_log_prob]], dtype=np.float32)))
        active.unsent_tokens, active.unsent_logprobs = 0, []
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _send(self, active: ActiveRequest, response, flags: int) -> None:
        try:
            active.sender.send(response, flags=flags)
        except Exception as e:   # a sender whose client went away must not stop the loop for the others
            pb_utils.Logger.log_warn(f"request {active.request_id}: could not send a response: {e}")

    def _check_cancelled(self, active: ActiveRequest, now: float) -> None:
        active.last_cancel_check = now
        if not active.abort_sent and active.sender.is_cancelled():
            active.abort_sent = True
            self._runner.abort(active.request_id)   # the engine frees its blocks and answers "cancelled"

    def _sweep_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < self._period:
            return
        self._last_sweep = now
        for active in self._active.values():
            if now - active.last_cancel_check >= self._period:
                self._check_cancelled(active, now)

"""Triton adapter for the MoE LLM engine: Triton tensors in, engine calls, Triton responses out.

Threads in this stub process:
  - Triton's execute() thread: validates each request, submits it to the engine thread, then blocks
    until the engine has admitted everything (runner.wait_for_capacity()). While it blocks, Triton keeps
    later requests in its own queue (nv_inference_pending_request_count; bounded only when config.pbtxt
    sets max_queue_size, see backend.triton.settings.queue_policy_warning).
  - the engine thread (backend.EngineThread): schedule -> forward -> sample; sleeps when idle.
  - the response thread (backend.triton.responses): sends each token as it is made, FINAL at the end,
    and notices cancelled requests.
  - the metrics thread (backend.triton.metrics): gauges, counters, histograms and the stats log.
"""
import gc

gc.disable()   # until initialize() has loaded the model: see _start_up_heap_done()

import dataclasses
import itertools
import json
import time

import triton_python_backend_utils as pb_utils

from backend import EngineThread, InvalidRequest, LLMEngine
from backend.triton.log import route_engine_logs_to_triton
from backend.triton.metrics import TritonMetrics
from backend.triton.request_inputs import parse_request, tensor_name
from backend.triton.responses import FINAL, ActiveRequest, ResponseLoop
from backend.triton.settings import load_settings, parameters_of, queue_policy_warning


class TritonPythonModel:
    def initialize(self, args):
        try:
            model_config, settings = self._start(args)
        finally:
            _start_up_heap_done()
        _log_settings(self.engine, settings)
        if warning := queue_policy_warning(model_config):
            pb_utils.Logger.log_warn(f"moe_llm: {warning}")

    def _start(self, args):
        route_engine_logs_to_triton()
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("moe_llm streams tokens: set model_transaction_policy { decoupled: true }")
        self.config, settings = load_settings(parameters_of(model_config))
        model_dir = self.config.model or _default_model_dir()
        engine_kwargs = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "model"}
        self.engine = LLMEngine.from_pretrained(model_dir, **engine_kwargs)   # warms up before returning
        self.runner = EngineThread(self.engine)
        self.metrics = TritonMetrics(self.runner, args["model_name"], args["model_version"],
                                     settings.stats_check_period_ms, settings.stats_log_period_s)
        self.responses = ResponseLoop(self.runner, self.metrics, settings.cancellation_check_period_ms)
        self.request_ids = itertools.count()
        self.runner.start()
        self.responses.start()
        self.metrics.start()
        return model_config, settings

    def execute(self, requests):
        for request in requests:
            self._submit(request)
        self.metrics.wake()
        # Hold this execute() until the engine has scheduled what it was given: Triton then keeps the next
        # requests in its queue, where they are counted and cancellable.
        self.runner.wait_for_capacity()
        return None

    def _submit(self, request) -> None:
        sender = request.get_response_sender()
        if request.is_cancelled():
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "request cancelled while queued", pb_utils.TritonError.CANCELLED)), flags=FINAL)
            return
        try:
            parsed = parse_request({t.name(): t.as_numpy() for t in request.inputs()},
                                   exclude_input_in_output=self.config.exclude_input_in_output)
        except InvalidRequest as e:
            sender.send(pb_utils.InferenceResponse(error=_invalid(e)), flags=FINAL)
            return
        request_id = str(next(self.request_ids))
        self.responses.add(ActiveRequest(request_id, sender, parsed, arrival=time.monotonic()))
        try:
            self.runner.submit(request_id, parsed.prompt, parsed.params, self.responses.on_output)
        except InvalidRequest as e:
            self.responses.fail(request_id, _invalid(e))
        except Exception as e:   # one bad request must not take the model down for the others
            pb_utils.Logger.log_error(f"request {request.request_id()!r}: submit failed: {e!r}")
            self.responses.fail(request_id, pb_utils.TritonError(f"internal error: {e}", pb_utils.TritonError.INTERNAL))

    def finalize(self):
        self.runner.stop()
        self.responses.stop()
        self.metrics.stop()


def _start_up_heap_done() -> None:
    """Loading the model makes ~370k objects that live as long as it. With the cyclic GC on, start-up ran 4 full
    collections over them (75-180 ms each) for nothing. One collection now, then they are frozen out of every later
    one: a full collection under load (due after ~90k more long-lived objects) would stall every stream as long."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _invalid(error: InvalidRequest):
    return pb_utils.TritonError(f"{tensor_name(error.field)}: {error.message}", pb_utils.TritonError.INVALID_ARG)


def _default_model_dir() -> str:
    from backend.default_model import default_model_dir
    path = default_model_dir()
    if not (path / "config.json").exists():
        raise pb_utils.TritonModelException(
            f"parameter 'model' is unset and the default model is not built at {path}: "
            "run `python -m backend.default_model` or serve with `python -m backend.serve --model DIR`")
    return str(path)


def _log_settings(engine, settings) -> None:
    stats, config = engine.stats(), engine.config
    kv_tokens = stats.kv_blocks_max * stats.tokens_per_block
    max_len_blocks = -(-engine.max_seq_len // stats.tokens_per_block)
    pb_utils.Logger.log_info(
        f"moe_llm ready: model {config.model}; KV cache {kv_tokens} tokens = {stats.kv_blocks_max} blocks of "
        f"{stats.tokens_per_block}; max_seq_len {engine.max_seq_len}: {stats.kv_blocks_max // max_len_blocks} "
        f"max-length requests fit; max_batch_size {config.max_batch_size}, max_num_tokens {config.max_num_tokens}, "
        f"{config.batch_scheduler_policy}, chunked context {config.enable_chunked_context}, "
        f"KV reuse {config.enable_kv_cache_reuse}; cancellation check {settings.cancellation_check_period_ms} ms, "
        f"stats {settings.stats_check_period_ms} ms; {gc.get_freeze_count()} start-up objects frozen out of the GC")

"""Fast checks without a server: config.pbtxt parses strictly, carries no defaults of its own, renders;
request tensors map to SamplingParams with errors that name the tensor."""
import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from backend.errors import ConfigError, InvalidRequest
from backend.serve import REPOSITORY, render_repository
from backend.triton.request_inputs import parse_request
from backend.triton.settings import AdapterSettings, load_settings, queue_policy_warning

TRT_LLM_INPUTS = {
    "text_input": "TYPE_STRING", "max_tokens": "TYPE_INT32", "stream": "TYPE_BOOL", "exclude_input_in_output": "TYPE_BOOL",
    "temperature": "TYPE_FP32", "top_k": "TYPE_INT32", "top_p": "TYPE_FP32", "seed": "TYPE_UINT64",
    "repetition_penalty": "TYPE_FP32", "presence_penalty": "TYPE_FP32", "frequency_penalty": "TYPE_FP32",
    "end_id": "TYPE_INT32", "min_tokens": "TYPE_INT32", "min_length": "TYPE_INT32", "stop_words": "TYPE_STRING",
    "return_log_probs": "TYPE_BOOL", "return_num_input_tokens": "TYPE_BOOL", "return_num_output_tokens": "TYPE_BOOL",
}
OUTPUTS = {"text_output": "TYPE_STRING", "finish_reason": "TYPE_STRING", "num_input_tokens": "TYPE_UINT32",
           "num_output_tokens": "TYPE_UINT32", "output_log_probs": "TYPE_FP32", "cum_log_probs": "TYPE_FP32"}


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())   # unknown fields raise


def as_json(config) -> dict:
    """The model config as model.py's initialize() gets it (protobuf JSON: 64-bit integers as strings)."""
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_config_pbtxt_parses_strictly_and_declares_the_trt_llm_interface():
    config = parse(REPOSITORY / "moe_llm" / "config.pbtxt")
    assert config.name == "moe_llm" and config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert config.max_batch_size > 0
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    # No queue limits by default: Triton prefetches only without them (queue_policy_warning).
    assert not config.dynamic_batching.HasField("default_queue_policy") and config.dynamic_batching.priority_levels == 0
    assert queue_policy_warning(as_json(config)) is None
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    dtype = model_config_pb2.DataType.Name
    assert {i.name: dtype(i.data_type) for i in config.input} == TRT_LLM_INPUTS
    assert [i.name for i in config.input if not i.optional] == ["text_input"]
    assert {o.name: dtype(o.data_type) for o in config.output} == OUTPUTS


def test_parameters_are_unfilled_templates_that_the_engine_config_accepts():
    config = parse(REPOSITORY / "moe_llm" / "config.pbtxt")
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert all(value == "${" + key + "}" for key, value in params.items()), "config.pbtxt must carry no defaults"
    engine, adapter = load_settings(params)   # every key known; all unset -> the dataclass defaults
    assert engine.model == "" and adapter == AdapterSettings()


def test_render_fills_parameters_and_triton_fields(tmp_path):
    render_repository(tmp_path, tmp_path / "model", {"max_tokens_in_paged_kv_cache": "512", "max_queue_size": "3",
                                                    "triton_max_batch_size": "2", "stats_check_period_ms": "20"})
    config = parse(tmp_path / "moe_llm" / "config.pbtxt")
    assert config.parameters["model"].string_value == str((tmp_path / "model").resolve())
    assert config.parameters["max_tokens_in_paged_kv_cache"].string_value == "512"
    assert config.parameters["stats_check_period_ms"].string_value == "20"
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 3 and config.max_batch_size == 2
    assert (tmp_path / "moe_llm" / "1" / "model.py").is_file()
    assert "max_queue_size 3:" in queue_policy_warning(as_json(config))


def test_queue_policy_warning_names_every_field_that_stops_prefetching():
    config = {"dynamic_batching": {"priority_levels": "2", "default_queue_policy": {
        "default_timeout_microseconds": "5000", "allow_timeout_override": True}}}
    warning = queue_policy_warning(config)
    assert "default_timeout_microseconds 5000, allow_timeout_override True, priority_levels 2:" in warning
    assert queue_policy_warning({}) is None and queue_policy_warning({"dynamic_batching": {}}) is None


@pytest.mark.parametrize("params, field", [({"max_tokens_in_paged_kv_cache": "-5"}, "max_tokens_in_paged_kv_cache"),
                                           ({"no_such_key": "1"}, "no_such_key"),
                                           ({"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy"),
                                           ({"cancellation_check_period_ms": "0"}, "cancellation_check_period_ms")])
def test_render_rejects_bad_settings_before_launch(tmp_path, params, field):
    with pytest.raises(ConfigError) as error:
        render_repository(tmp_path, tmp_path, params)
    assert error.value.field == field


def tensors(**values):
    def as_array(value):
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, (str, bytes)):
            return np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
        return np.array([[value]])
    return {name: as_array(value) for name, value in values.items()}


def test_parse_maps_tensors_to_sampling_params():
    request = parse_request(tensors(text_input="hi", max_tokens=np.array([[7]], np.int32), stream=True,
                                    temperature=np.array([[0.5]], np.float32), top_k=np.array([[4]], np.int32),
                                    seed=np.array([[2**63 + 1]], np.uint64), min_length=np.array([[2]], np.int32),
                                    stop_words=np.array([[b"a", b"", b"bc"]], np.object_), end_id=np.array([[-1]], np.int32),
                                    return_num_output_tokens=True), exclude_input_in_output=True)
    p = request.params
    assert (request.prompt, request.stream, request.exclude_input_in_output) == ("hi", True, True)
    assert (p.max_tokens, p.temperature, p.top_k, p.seed, p.min_tokens, p.stop, p.end_id) == (
        7, 0.5, 4, 2**63 + 1, 2, ["a", "bc"], -1)
    assert request.return_num_output_tokens and not request.return_num_input_tokens


@pytest.mark.parametrize("values, field", [
    (dict(max_tokens=np.array([[1]], np.int32)), "text_input"),
    (dict(text_input=b"\xff\xfeabc"), "text_input"),
    (dict(text_input=np.array([[b"a"], [b"b"]], np.object_)), "text_input"),
    (dict(text_input="x", max_tokens=np.array([[0]], np.int32)), "max_tokens"),
    (dict(text_input="x", temperature=np.array([[-1.0]], np.float32)), "temperature"),
    (dict(text_input="x", top_p=np.array([[np.nan]], np.float32)), "top_p"),
    (dict(text_input="x", top_k=np.array([[-1]], np.int32)), "top_k"),
    (dict(text_input="x", presence_penalty=np.array([[9.0]], np.float32)), "presence_penalty"),
    (dict(text_input="x", min_length=np.array([[99]], np.int32)), "min_length"),
    (dict(text_input="x", end_id=np.array([[-3]], np.int32)), "end_id"),
    (dict(text_input="x", stop_words=np.array([[b"\xc3"]], np.object_)), "stop_words"),
    (dict(text_input="x", temperature=np.array([[1]], np.int32)), "temperature"),
    (dict(text_input="x", max_tokens=np.array([[1, 2]], np.int32)), "max_tokens"),
])
def test_parse_errors_name_the_tensor(values, field):
    with pytest.raises(InvalidRequest) as error:
        parse_request(tensors(**values))
    assert error.value.field == field

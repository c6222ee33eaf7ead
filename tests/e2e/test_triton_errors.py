"""Every bad input gets INVALID_ARG with a message naming the field; the model keeps serving, and a
request running meanwhile is unaffected."""
import threading

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from client.generate import GenerateError, stream_grpc
from tests.e2e.triton_helpers import RawStream

# HTTP generate maps the model's INVALID_ARG to 400; over a gRPC stream only the message travels.
HTTP_CASES = [
    ({"max_tokens": 4}, "text_input"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens"),
    ({"text_input": "hi", "max_tokens": -3}, "max_tokens"),
    ({"text_input": "hi", "temperature": -0.5}, "temperature"),
    ({"text_input": "hi", "top_p": 1.5}, "top_p"),
    ({"text_input": "hi", "top_p": 0.0}, "top_p"),
    ({"text_input": "hi", "top_k": -1}, "top_k"),
    ({"text_input": "hi", "repetition_penalty": 0.0}, "repetition_penalty"),
    ({"text_input": "hi", "presence_penalty": 2.5}, "presence_penalty"),
    ({"text_input": "hi", "frequency_penalty": -2.5}, "frequency_penalty"),
    ({"text_input": "hi", "max_tokens": 4, "min_tokens": 8}, "min_tokens"),
    ({"text_input": "hi", "max_tokens": 4, "min_length": 8}, "min_length"),
    ({"text_input": "hi", "end_id": -7}, "end_id"),
    ({"text_input": ""}, "text_input"),
    # 2100+ tokens: more than the whole 2048-token KV cache of this server
    ({"text_input": "Mixture of experts routes every token to a few experts. " * 300, "max_tokens": 1}, "text_input"),
]


@pytest.mark.parametrize("body, field", HTTP_CASES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(HTTP_CASES)])
def test_http_bad_input_is_invalid_arg_naming_the_field(server, body, field):
    reply = requests.post(f"http://{server.http_url}/v2/models/moe_llm/generate", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{field}: "), reply.json()["error"]


def test_prompt_larger_than_the_kv_cache_says_so(server):
    body = HTTP_CASES[-1][0]
    reply = requests.post(f"http://{server.http_url}/v2/models/moe_llm/generate", json=body, timeout=30)
    assert "KV cache holds 2048" in reply.json()["error"]


def grpc_error(server, tensors) -> str:
    inputs = []
    for name, array, datatype in tensors:
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    stream = RawStream(server, tensors=inputs)
    try:
        result, error = stream.next(30)
        assert error is not None, "expected an error response"
        return error.message()
    finally:
        stream.cancel()


TEXT = np.array([[b"hello"]], dtype=np.object_)
GRPC_CASES = [
    ([("text_input", np.array([[b"\xff\xfe bad"]], np.object_), "BYTES")], "text_input: not valid UTF-8"),
    ([("text_input", TEXT, "BYTES"), ("stop_words", np.array([[b"\xc3"]], np.object_), "BYTES")],
     "stop_words: not valid UTF-8"),
    ([("text_input", np.array([[b"a"], [b"b"]], np.object_), "BYTES")], "text_input: batch size must be 1"),
    ([("text_input", TEXT, "BYTES"), ("temperature", np.array([[1]], np.int32), "INT32")], "'temperature' data-type"),
    ([("text_input", TEXT, "BYTES"), ("max_tokens", np.array([[1, 2]], np.int32), "INT32")],
     "shape for input 'max_tokens'"),
    ([("text_input", TEXT, "BYTES"), ("no_such_input", np.array([[1]], np.int32), "INT32")], "'no_such_input'"),
]


@pytest.mark.parametrize("tensors, message", GRPC_CASES, ids=[m.split(":")[0].strip("'") for _, m in GRPC_CASES])
def test_grpc_bad_tensors_are_rejected_naming_the_field(server, tensors, message):
    assert message in grpc_error(server, tensors)


def test_bad_requests_do_not_disturb_a_running_one(server, offline_engine):
    from backend import SamplingParams
    expected = offline_engine.generate("The quick brown fox", SamplingParams(max_tokens=200))[0].text
    result = {}
    thread = threading.Thread(target=lambda: result.update(text="".join(
        r["text_output"] for r in stream_grpc(server.grpc_url, "The quick brown fox", max_tokens=200, timeout_s=60))))
    thread.start()
    for body, _ in HTTP_CASES[:6]:
        assert requests.post(f"http://{server.http_url}/v2/models/moe_llm/generate", json=body, timeout=30).status_code == 400
    with pytest.raises(GenerateError, match="max_tokens"):
        list(stream_grpc(server.grpc_url, "x", max_tokens=0, timeout_s=30))
    thread.join(60)
    assert result["text"] == expected
    assert list(stream_grpc(server.grpc_url, "afterwards", max_tokens=4, timeout_s=30))

"""Errors in OpenAI's format ({"error": {message, type, param, code}}) with the documented status:
400 bad parameters (checked locally, or Triton's INVALID_ARG naming the field), 401 missing or wrong
API key, 404 unknown model, 503 Triton down or model not ready. 
(429: test_gateway_disconnect_and_queue.py.)"""
import json
import os
import signal

import httpx
import openai
import pytest

from backend.serve import TritonServer
from tests.openai.gateway_process import API_KEY, GatewayProcess, free_ports, run_gateway

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]


def post(gateway, path, body, headers=HEADERS):
    return httpx.post(f"{gateway.base_url}{path}", json=body, headers=headers, timeout=60)


def assert_error(reply: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("fields, param", [
    ({"temperature": -1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"seed": -1}, "seed"),
    ({"stop": [1, 2]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"stream": "maybe"}, "stream"),
])
def test_bad_chat_parameters_are_400_naming_the_field(gateway, model_name, fields, param):
    error = assert_error(post(gateway, "/chat/completions", {"model": model_name, "messages": HELLO} | fields), 400, param)
    assert error["type"] == "invalid_request_error" and param.split("[")[0] in error["message"]


@pytest.mark.parametrize("fields, param", [
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"echo": True, "logprobs": 2}, "logprobs"),
    ({"best_of": 3}, "best_of"),
])
def test_bad_completion_parameters_are_400(gateway, model_name, fields, param):
    assert_error(post(gateway, "/completions", {"model": model_name, "prompt": "hi"} | fields), 400, param)


def test_missing_model_field_and_invalid_json(gateway):
    assert_error(post(gateway, "/chat/completions", {"messages": HELLO}), 400, "model")
    reply = httpx.post(f"{gateway.base_url}/chat/completions", content=b"{not json", timeout=10,
                       headers=HEADERS | {"Content-Type": "application/json"})
    assert "JSON" in assert_error(reply, 400, None)["message"]
    form = httpx.post(f"{gateway.base_url}/completions", data={"model": "x", "prompt": "hi"}, headers=HEADERS, timeout=10)
    assert "Content-Type: application/json" in assert_error(form, 400, None)["message"]


def test_triton_invalid_arg_becomes_400_with_the_openai_field(client, model_name):
    # Accepted here, refused by the engine in Triton: prompt + max_tokens exceed the 2048-token KV cache.
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model_name, messages=HELLO, **{field: 3000})
        assert caught.value.param == field and "KV cache" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:   # vLLM's min_tokens extension, checked by the engine
        client.completions.create(model=model_name, prompt="hi", max_tokens=2, extra_body={"min_tokens": 5}, stream=True)
    assert caught.value.param == "min_tokens"
    with pytest.raises(openai.BadRequestError) as caught:   # a prompt larger than the whole KV cache
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "fox " * 2500}],
                                       max_tokens=1, stream=True)
    assert caught.value.param == "messages" and caught.value.status_code == 400


def test_api_key_required_when_configured(gateway, model_name):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
        error = assert_error(post(gateway, "/chat/completions", {"model": model_name, "messages": HELLO}, headers),
                             401, None, "invalid_api_key")
        assert "OPENAI_API_KEY" in error["message"]
    assert httpx.get(f"{gateway.base_url}/models", timeout=10).status_code == 401
    assert post(gateway, "/chat/completions", {"nonsense": 1}, {}).status_code == 401, "auth before validation"
    assert httpx.get(f"{gateway.url}/health", timeout=10).status_code == 200, "probes need no key"
    with openai.OpenAI(base_url=gateway.base_url, api_key="wrong-key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model=model_name, prompt="hi", max_tokens=1)


def test_unknown_model_is_404(client, gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=1)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=1, stream=True)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert_error(httpx.get(f"{gateway.base_url}/embeddings", headers=HEADERS, timeout=10), 404, None)


@pytest.fixture(scope="module")
def gateway_without_triton(chat_model_dir):
    yield from run_gateway(f"127.0.0.1:{free_ports(1)[0]}", chat_model_dir, api_key=None)


@pytest.fixture(scope="module")
def gateway_without_model(triton, chat_model_dir):
    yield from run_gateway(triton.grpc_url, chat_model_dir, api_key=None, TRITON_MODEL="not_loaded")


@pytest.mark.parametrize("which", ["gateway_without_triton", "gateway_without_model"])
def test_model_not_ready_is_503(request, which):
    gateway = request.getfixturevalue(which)
    assert_error(httpx.get(f"{gateway.url}/health", timeout=10), 503, None, "model_not_ready")
    name = httpx.get(f"{gateway.base_url}/models", timeout=10).json()["data"][0]["id"]   # no key configured
    for stream in (False, True):
        reply = post(gateway, "/chat/completions", {"model": name, "messages": HELLO, "stream": stream}, headers={})
        error = assert_error(reply, 503, None, "model_not_ready")
        assert "Triton" in error["message"] and reply.headers["retry-after"]
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=name, prompt="hi", max_tokens=1)
    assert caught.value.status_code == 503


def test_triton_crash_mid_stream_ends_the_stream_with_an_error_event(chat_model_dir):
    """Headers (200) are out once tokens flow: the error comes as an event, then [DONE], as OpenAI does."""
    with TritonServer(chat_model_dir, {"max_tokens_in_paged_kv_cache": "2048"}, exit_timeout_s=5) as triton, \
            GatewayProcess(triton.grpc_url, chat_model_dir) as gateway:
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=HEADERS, timeout=60, json={
                "model": gateway_name(gateway), "messages": HELLO, "max_tokens": 1500, "stream": True,
                "temperature": 0, "ignore_eos": True}) as reply:
            lines = reply.iter_lines()
            assert reply.status_code == 200 and next(lines).startswith("data: ")
            os.killpg(triton.process.pid, signal.SIGKILL)
            rest = [line for line in lines if line]
        errors = [json.loads(line[6:])["error"] for line in rest if line.startswith('data: {"error"')]
        assert rest[-1] == "data: [DONE]" and len(errors) == 1 and rest[-2].startswith('data: {"error"')
        assert errors[0]["code"] == "model_not_ready" and "Triton" in errors[0]["message"]


def gateway_name(gateway) -> str:
    return httpx.get(f"{gateway.base_url}/models", headers=HEADERS, timeout=10).json()["data"][0]["id"]

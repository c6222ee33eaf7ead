"""A client that goes away cancels its Triton request (the engine frees its KV blocks at once), while
streaming, waiting for a non-streamed answer, or queued; a full Triton queue is a 429."""
import asyncio

import httpx
import openai
import pytest

from tests.openai.gateway_process import API_KEY, kv_blocks_used, triton_metric, wait_until

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
LONG = 1500   # tokens: seconds of decoding on the tiny model unless cancelled


def generated_tokens(server) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    page = httpx.get(server.metrics_url, timeout=5).text
    return sum(s.value for fam in text_string_to_metric_families(page) for s in fam.samples
               if s.name == "vllm:generation_tokens_total")


def active_requests(server) -> float:
    return triton_metric(server, "nv_trt_llm_request_metrics", request_type="active")


def pending_in_triton(server) -> float:
    return triton_metric(server, "nv_inference_pending_request_count", model="moe_llm")


def chat_body(model_name, text, max_tokens=LONG, stream=True):
    """A long request that never ends early: greedy, and vLLM's ignore_eos (no end-of-sequence stop)."""
    return {"model": model_name, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "stream": stream, "temperature": 0, "ignore_eos": True}


def assert_freed_early(server, tokens_before):
    wait_until(lambda: kv_blocks_used(server) == 0 and active_requests(server) == 0, 5, "KV blocks freed")
    assert generated_tokens(server) - tokens_before < LONG / 2, "the request kept generating after the disconnect"


def test_closed_stream_frees_kv_blocks(gateway, triton, model_name):
    tokens_before = generated_tokens(triton)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers=HEADERS, timeout=60,
                      json=chat_body(model_name, "The quick brown fox")) as reply:
        lines = reply.iter_lines()
        for _ in range(10):
            next(lines)
        wait_until(lambda: kv_blocks_used(triton) > 0, 5, "the request to hold KV blocks")
    assert_freed_early(triton, tokens_before)


def test_dropped_non_streaming_request_frees_kv_blocks(gateway, triton, model_name):
    tokens_before = generated_tokens(triton)

    async def drop_while_generating():
        async with httpx.AsyncClient(headers=HEADERS, timeout=60) as http:
            request = asyncio.create_task(http.post(f"{gateway.base_url}/chat/completions",
                                                    json=chat_body(model_name, "Mixture of experts", stream=False)))
            await asyncio.to_thread(wait_until, lambda: kv_blocks_used(triton) > 0, 10, "the request to run")
            request.cancel()   # closes the connection without an answer

    asyncio.run(drop_while_generating())
    assert_freed_early(triton, tokens_before)


def test_full_triton_queue_is_429_and_queued_clients_can_leave(small_queue_gateway, small_queue_triton, model_name):
    server, url = small_queue_triton, f"{small_queue_gateway.base_url}/chat/completions"

    async def scenario():
        async with httpx.AsyncClient(headers=HEADERS, timeout=60) as http:
            async def long_stream(text):
                async with http.stream("POST", url, json=chat_body(model_name, text, max_tokens=4000)) as reply:
                    async for _ in reply.aiter_lines():
                        pass

            def start(text, condition, what):
                task = asyncio.create_task(long_stream(text))
                return task, asyncio.to_thread(wait_until, condition, 10, what)

            fillers = []
            try:
                for text, condition, what in [
                        ("running", lambda: kv_blocks_used(server) > 0, "the first request to fill the KV cache"),
                        ("in the engine", lambda: active_requests(server) == 2, "the second to wait in the engine"),
                        ("in the queue", lambda: pending_in_triton(server) == 1, "the third in Triton's queue")]:
                    task, ready = start(text, condition, what)
                    fillers.append(task)
                    await ready
                async with openai.AsyncOpenAI(base_url=small_queue_gateway.base_url, api_key=API_KEY,
                                              max_retries=0) as client:
                    with pytest.raises(openai.RateLimitError) as caught:
                        await client.chat.completions.create(model=model_name, max_tokens=4, stream=True,
                                                             messages=[{"role": "user", "content": "one too many"}])
                assert caught.value.code == "queue_full" and caught.value.response.headers["retry-after"]
                assert all(not task.done() for task in fillers)
            finally:
                for task in fillers:
                    task.cancel()
                await asyncio.gather(*fillers, return_exceptions=True)

    asyncio.run(scenario())
    wait_until(lambda: pending_in_triton(server) == 0 and active_requests(server) == 0 and kv_blocks_used(server) == 0,
               5, "the queued and running requests to be cancelled")
    reply = httpx.post(f"{small_queue_gateway.base_url}/completions", headers=HEADERS, timeout=60,
                       json={"model": model_name, "prompt": "still serving", "max_tokens": 4, "ignore_eos": True})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4

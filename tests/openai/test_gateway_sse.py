"""The raw event stream, read the way chat UIs read it (httpx streaming, line by line): every event
is `data: <valid JSON>`, a chat stream starts with the role, ends with one finish chunk, then the usage
chunk only when asked for, then `data: [DONE]`, and nothing follows."""
import json

import httpx

from tests.openai.gateway_process import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def read_events(gateway, path: str, body: dict) -> tuple[httpx.Response, list[str]]:
    with httpx.stream("POST", f"{gateway.base_url}{path}", json=body, headers=HEADERS, timeout=60) as reply:
        lines = list(reply.iter_lines())
    return reply, lines


def parse(lines: list[str]) -> list[dict]:
    """Checks the SSE framing; returns the JSON events (without the final [DONE])."""
    assert lines[-2:] == ["data: [DONE]", ""], f"the stream must end with [DONE] and nothing after: {lines[-3:]}"
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events), events
    assert lines[1::2] == [""] * (len(lines) // 2), "each event is one data line and a blank line"
    assert events.count("data: [DONE]") == 1
    return [json.loads(line[len("data: "):]) for line in events[:-1]]


def test_chat_stream_events(gateway, model_name):
    reply, lines = read_events(gateway, "/chat/completions", {
        "model": model_name, "messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 12,
        "temperature": 0, "stream": True})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = parse(lines)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == model_name for e in events)
    assert len({e["id"] for e in events}) == 1 and len({e["created"] for e in events}) == 1
    assert all("usage" not in e for e in events), "usage is sent only when stream_options.include_usage is set"
    reasons = [e["choices"][0]["finish_reason"] for e in events]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert events[-1]["choices"][0]["delta"] == {}
    assert all(e["choices"][0]["delta"].get("content") for e in events[1:-1]), "no empty content deltas"


def test_chat_stream_usage_chunk_comes_last(gateway, model_name):
    _, lines = read_events(gateway, "/chat/completions", {
        "model": model_name, "messages": [{"role": "user", "content": "Mixture of experts"}], "max_tokens": 5,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    events = parse(lines)
    *chunks, usage = events
    assert all(e["usage"] is None for e in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 5


def test_completion_stream_events(gateway, model_name):
    reply, lines = read_events(gateway, "/completions", {
        "model": model_name, "prompt": "The lazy dog", "max_tokens": 6, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    events = parse(lines)
    *chunks, usage = events
    assert all(e["object"] == "text_completion" and "text" in e["choices"][0] for e in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


def test_non_streaming_body_is_one_json_object(gateway, model_name):
    reply = httpx.post(f"{gateway.base_url}/chat/completions", headers=HEADERS, timeout=60, json={
        "model": model_name, "messages": [{"role": "developer", "content": "Be brief."},
                                          {"role": "user", "content": [{"type": "text", "text": "blocks"}]}],
        "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 4 and body["choices"][0]["finish_reason"] == "length"

"""Greedy generation through a real tritonserver equals the offline engine: gRPC streaming, HTTP
generate_stream, non-streaming, and eight concurrent streams."""
from concurrent.futures import ThreadPoolExecutor

import requests

from backend import SamplingParams
from client.generate import stream_grpc, stream_http

PROMPTS = ["Paged attention stores keys", "Mixture of experts routes every token", "北京是中国的首都。",
           "The quick brown fox jumps over", "Ünïcödé text", "blocks", "The lazy dog.", "experts experts experts"]
MAX_TOKENS = 24


def offline(engine, prompt, max_tokens=MAX_TOKENS):
    return engine.generate(prompt, SamplingParams(max_tokens=max_tokens))[0]


def collect(responses):
    responses = list(responses)
    return ("".join(r.get("text_output", "") for r in responses), sum(r.get("num_output_tokens", 0) for r in responses),
            responses[-1].get("finish_reason"), responses)


def test_grpc_streaming_matches_offline_engine(server, offline_engine):
    for prompt in PROMPTS[:3]:
        expected = offline(offline_engine, prompt)
        text, num_tokens, reason, responses = collect(stream_grpc(
            server.grpc_url, prompt, max_tokens=MAX_TOKENS, return_num_output_tokens=True,
            return_num_input_tokens=True, timeout_s=60))
        assert (text, num_tokens, reason) == (expected.text, len(expected.token_ids), expected.finish_reason)
        assert len(responses) > 1, "tokens must stream, not arrive in one response"
        assert {r["num_input_tokens"] for r in responses} == {len(expected.prompt_token_ids)}
        assert "finish_reason" not in responses[0] or len(responses) == 1


def test_http_generate_stream_matches_offline_engine(server, offline_engine):
    for prompt in PROMPTS[:3]:
        expected = offline(offline_engine, prompt)
        text, num_tokens, reason, responses = collect(stream_http(
            server.http_url, prompt, max_tokens=MAX_TOKENS, return_num_output_tokens=True, timeout_s=60))
        assert (text, num_tokens, reason) == (expected.text, len(expected.token_ids), expected.finish_reason)
        assert len(responses) > 1


def test_non_streaming_sends_one_final_response_with_the_full_text(server, offline_engine):
    prompt = PROMPTS[3]
    expected = offline(offline_engine, prompt)
    url = f"http://{server.http_url}/v2/models/moe_llm/generate"
    echoed = requests.post(url, json={"text_input": prompt, "max_tokens": MAX_TOKENS}, timeout=60)
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["text_output"] == prompt + expected.text
    assert echoed.json()["finish_reason"] == expected.finish_reason
    excluded = requests.post(url, json={"text_input": prompt, "max_tokens": MAX_TOKENS, "stream": False,
                                        "exclude_input_in_output": True, "return_num_output_tokens": True}, timeout=60)
    assert excluded.json()["text_output"] == expected.text
    assert excluded.json()["num_output_tokens"] == len(expected.token_ids)
    # over gRPC, stream=false gives exactly one response, which is the final one
    responses = list(stream_grpc(server.grpc_url, prompt, max_tokens=MAX_TOKENS, stream=False,
                                 exclude_input_in_output=True, timeout_s=60))
    assert [r["text_output"] for r in responses] == [expected.text]


def test_eight_concurrent_streams_are_all_correct(server, offline_engine):
    expected = offline_engine.generate(PROMPTS, SamplingParams(max_tokens=48))

    def run(prompt):
        return collect(stream_grpc(server.grpc_url, prompt, max_tokens=48, return_num_output_tokens=True,
                                   timeout_s=120))[:3]

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(run, PROMPTS))
    assert results == [(e.text, len(e.token_ids), e.finish_reason) for e in expected]


def test_sampling_inputs_reach_the_engine(server, offline_engine):
    prompt = PROMPTS[0]
    sampled = dict(max_tokens=16, temperature=1.0, top_k=20, top_p=0.9, seed=1234, repetition_penalty=1.1,
                   presence_penalty=0.5, frequency_penalty=0.5, min_length=4, timeout_s=60)
    first = collect(stream_grpc(server.grpc_url, prompt, **sampled))[0]
    assert first == collect(stream_http(server.http_url, prompt, **sampled))[0], "same seed, same text"
    expected = offline_engine.generate(prompt, SamplingParams(
        max_tokens=16, temperature=1.0, top_k=20, top_p=0.9, seed=1234, repetition_penalty=1.1, presence_penalty=0.5,
        frequency_penalty=0.5, min_tokens=4))[0]
    assert first == expected.text

    greedy = offline(offline_engine, prompt)
    stop = greedy.text[len(greedy.text) // 2:][:3]
    stopped = offline_engine.generate(prompt, SamplingParams(max_tokens=MAX_TOKENS, stop=[stop]))[0]
    text, _, reason, _ = collect(stream_grpc(server.grpc_url, prompt, max_tokens=MAX_TOKENS, stop_words=[stop],
                                             timeout_s=60))
    assert (text, reason) == (stopped.text, "stop")

    logprobs = list(stream_grpc(server.grpc_url, prompt, max_tokens=8, return_log_probs=True,
                                return_num_output_tokens=True, timeout_s=60))
    assert sum(len(r["output_log_probs"]) for r in logprobs) == sum(r["num_output_tokens"] for r in logprobs) == 8
    assert all(lp <= 0 for r in logprobs for lp in r["output_log_probs"])

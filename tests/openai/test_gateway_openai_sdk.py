"""The official openai client (sync and async, streaming and not) against the real gateway and Triton:
greedy text equals the offline engine's for the same chat-templated prompt, finish_reason is the
model's, usage is the model's token counts."""
import asyncio

import openai
import pytest

from backend import SamplingParams
from tests.openai.gateway_process import API_KEY

QUESTION = [{"role": "user", "content": "Paged attention stores keys and values in blocks."}]


def offline(engine, tokenizer, messages=None, prompt=None, max_tokens=16, stop=()):
    """The engine's greedy result for the chat-templated messages (or the raw prompt)."""
    if prompt is None:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.generate(prompt, SamplingParams(max_tokens=max_tokens, stop=list(stop)))[0]


def test_chat_non_streaming_equals_offline_engine(client, model_name, offline_engine, tokenizer):
    expected = offline(offline_engine, tokenizer, QUESTION)
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=16, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == model_name
    assert reply.created > 0 and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert reply.usage.completion_tokens == len(expected.token_ids) == 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_equals_offline_engine(client, model_name, offline_engine, tokenizer):
    expected = offline(offline_engine, tokenizer, QUESTION, max_tokens=24)
    stream = client.chat.completions.create(model=model_name, messages=QUESTION, max_completion_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1, "the answer must stream in several chunks"
    assert "".join(content) == expected.text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_token_ids)


def test_completions_sync_streaming_and_not(client, model_name, offline_engine, tokenizer):
    prompt = "Mixture of experts routes every token"
    expected = offline(offline_engine, tokenizer, prompt=prompt, max_tokens=12)
    reply = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == expected.text and reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(expected.prompt_token_ids), 12)
    chunks = list(client.completions.create(model=model_name, prompt=[prompt], max_tokens=12, temperature=0,
                                            stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    echoed = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + expected.text


def test_stop_sequences_end_the_answer_before_the_stop_string(client, model_name, offline_engine, tokenizer):
    free = offline(offline_engine, tokenizer, QUESTION, max_tokens=32).text
    stop = free[6:9]   # a string the greedy answer contains; the answer must end just before it
    assert len(stop) == 3 and stop in free
    before = free[:free.index(stop)]
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=32, temperature=0,
                                           stop=stop)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (before, "stop")
    stream = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=32, temperature=0,
                                            stop=["never appears \u2603", stop], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == before
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_length_when_max_tokens_cuts_the_answer(client, model_name):
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=3, temperature=0)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_three_turn_conversation_gets_every_reply(client, model_name, offline_engine, tokenizer):
    messages = [{"role": "system", "content": "You answer briefly."}]
    replies, prompt_tokens = [], []
    for question in ["The quick brown fox", "Mixture of experts?", "Paged attention stores keys"]:
        messages.append({"role": "user", "content": question})
        expected = offline(offline_engine, tokenizer, messages, max_tokens=10)
        reply = client.chat.completions.create(model=model_name, messages=messages, max_tokens=10, temperature=0,
                                               user="conversation-test")
        answer = reply.choices[0].message.content
        assert answer == expected.text
        assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
        replies.append(answer)
        prompt_tokens.append(reply.usage.prompt_tokens)
        messages.append({"role": "assistant", "content": answer})
    assert all(replies) and len(set(replies)) == 3
    assert prompt_tokens == sorted(set(prompt_tokens)), "each turn's prompt holds the whole conversation so far"


def test_async_client_concurrent_stream_and_non_stream(gateway, model_name):
    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0) as client:
            async def streamed():
                stream = await client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=8,
                                                              stream=True, seed=1, top_p=0.9, temperature=0.8,
                                                              extra_body={"ignore_eos": True})
                return [chunk async for chunk in stream]

            non_streamed = client.completions.create(model=model_name, prompt="The lazy dog", max_tokens=8, seed=3,
                                                     presence_penalty=0.5, frequency_penalty=0.5,
                                                     extra_body={"unknown_field": 1, "top_k": 5, "ignore_eos": True})
            return await asyncio.gather(streamed(), non_streamed, *(streamed() for _ in range(2)))

    chunks, completion, *others = asyncio.run(run())
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 8 and completion.choices[0].finish_reason == "length"
    # the same seed gives the same sample, whatever else runs in the batch
    texts = ["".join(c.choices[0].delta.content or "" for c in run) for run in (chunks, *others)]
    assert texts[0] == texts[1] == texts[2]


def test_models_list(client, model_name):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]
    assert models.data[0].object == "model" and models.data[0].owned_by and models.data[0].created > 0
    assert client.models.retrieve(model_name).id == model_name


@pytest.mark.parametrize("sampling", [
    {"temperature": 0.8, "top_p": 0.9, "seed": 7},
    {"temperature": 0, "presence_penalty": 2.0},
    {"temperature": 0, "frequency_penalty": 2.0},
    {"temperature": 0, "repetition_penalty": 1.5},
    {"temperature": 1.0, "top_k": 3, "seed": 3},
])
def test_sampling_parameters_reach_the_engine(client, model_name, offline_engine, tokenizer, sampling):
    """Same result as the offline engine with the same settings, and not the plain greedy one."""
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    expected = offline_engine.generate(prompt, SamplingParams(max_tokens=16, ignore_eos=True, **sampling))[0].text
    greedy = offline_engine.generate(prompt, SamplingParams(max_tokens=16, ignore_eos=True))[0].text
    openai_fields = {k: v for k, v in sampling.items() if k not in ("repetition_penalty", "top_k")}
    extensions = {k: v for k, v in sampling.items() if k in ("repetition_penalty", "top_k")}
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=16, **openai_fields,
                                           extra_body={"ignore_eos": True, **extensions})
    assert reply.choices[0].message.content == expected != greedy

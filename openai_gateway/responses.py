"""Response objects of the OpenAI API: chat.completion(.chunk) and text_completion, and SSE framing.

Stream order (what the official SDK and chat UIs expect): for chat, a first chunk carrying the role;
content deltas; a chunk with the finish_reason the model reported ("stop" or "length"); a usage
chunk with empty choices only when stream_options.include_usage is set; then `data: [DONE]`.
"""
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from openai_gateway.errors import OpenAIError
from openai_gateway.triton_stream import TritonDelta

DONE = "data: [DONE]\n\n"


@dataclass
class Completion:
    """Identity and accumulated state of one chat or text completion."""
    kind: str                       # "chat" or "text"
    model: str
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None

    def __post_init__(self):
        self.id = self.id or ("chatcmpl-" if self.kind == "chat" else "cmpl-") + uuid.uuid4().hex

    def add(self, delta: TritonDelta) -> None:
        self.completion_tokens += delta.num_output_tokens
        if delta.num_input_tokens is not None:
            self.prompt_tokens = delta.num_input_tokens
        self.text.append(delta.text)
        self.finish_reason = delta.finish_reason or self.finish_reason

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _object(self, object_name: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}

    # -- whole responses ---------------------------------------------------------------------------
    def response(self, prefix: str = "") -> dict:
        text = prefix + "".join(self.text)
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": self.finish_reason}
            return self._object("chat.completion", [choice]) | {"usage": self.usage()}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.finish_reason}
        return self._object("text_completion", [choice]) | {"usage": self.usage()}

    # -- stream chunks -----------------------------------------------------------------------------
    def chunk(self, text: str | None = None, role: bool = False, finish_reason: str | None = None) -> dict:
        if self.kind == "chat":
            delta = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = self._object("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            chunk = self._object("text_completion", [choice])
        return chunk | ({"usage": None} if self.include_usage else {})

    def usage_chunk(self) -> dict:
        name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._object(name, []) | {"usage": self.usage()}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def event_stream(completion: Completion, first: TritonDelta, rest: AsyncIterator[TritonDelta],
                       prefix: str = "") -> AsyncIterator[str]:
    """SSE events of a stream whose first Triton response already arrived (errors before it got a status)."""
    if completion.kind == "chat":
        yield sse(completion.chunk(role=True))
    if prefix:   # completions with echo: the prompt comes first
        yield sse(completion.chunk(prefix))
    delta = first
    try:
        while True:
            completion.add(delta)
            if delta.text:
                yield sse(completion.chunk(delta.text))
            if delta.finish_reason is not None:
                break
            delta = await anext(rest)
    except OpenAIError as e:   # headers are sent: the error goes in the stream, as OpenAI does
        yield sse(e.body())
        yield DONE
        return
    yield sse(completion.chunk(finish_reason=completion.finish_reason))
    if completion.include_usage:
        yield sse(completion.usage_chunk())
    yield DONE

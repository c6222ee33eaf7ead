"""Request bodies of /v1/chat/completions and /v1/completions, validated before anything reaches Triton.

Unknown fields are ignored, as OpenAI does. Known fields this server cannot honour (n > 1, logprobs,
tools, ...) are refused with a 400 naming them, rather than silently dropped. top_k,
repetition_penalty, min_tokens and ignore_eos are accepted as vLLM's extensions are.
"""
from typing import Literal

from pydantic import BaseModel, Field

from openai_gateway.errors import bad_request, unsupported

OPENAI_DEFAULT_TEMPERATURE = 1.0   # what OpenAI samples with when a request sends no temperature


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class SamplingRequest(BaseModel):
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | dict | None = None   # OpenAI: a string; some UIs send a dict of user info. Unused.
    logit_bias: dict[str, float] | None = None
    # vLLM extensions (the engine supports them)
    top_k: int | None = Field(None, ge=-1)      # -1 or 0: off
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None                # benchmarks' way to get exactly max_tokens tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise bad_request("n", f"n: only n=1 is supported, got {self.n}; send {self.n} requests instead",
                              code="unsupported_value")
        if self.logit_bias:
            raise unsupported("logit_bias", "logit_bias")

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """(max_tokens or None, the field it came from)."""
        return self.max_tokens, "max_tokens"

    def stop_words(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stop if s]   # OpenAI ignores empty stop strings

    def triton_inputs(self, prompt: str, max_tokens: int) -> dict:
        """The moe_llm input tensors (name -> Python value), always streamed and without the prompt."""
        inputs = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "exclude_input_in_output": True,
                  "return_num_input_tokens": True, "return_num_output_tokens": True,
                  "temperature": OPENAI_DEFAULT_TEMPERATURE if self.temperature is None else self.temperature}
        optional = {"top_p": self.top_p, "seed": self.seed, "presence_penalty": self.presence_penalty,
                    "frequency_penalty": self.frequency_penalty, "repetition_penalty": self.repetition_penalty,
                    "min_tokens": self.min_tokens, "top_k": None if self.top_k is None else max(self.top_k, 0)}
        inputs |= {name: value for name, value in optional.items() if value is not None}
        if self.ignore_eos:
            inputs["end_id"] = -1   # moe_llm: -1 = never stop at end-of-sequence
        if self.stop_words():
            inputs["stop_words"] = self.stop_words()
        return inputs


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def for_template(self, index: int) -> dict:
        """A message as chat templates expect it: role and plain-text content."""
        content = self.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise bad_request(f"messages[{index}].content",
                                      f"messages[{index}].content: content parts of type {part.type!r} are not "
                                      "supported; this model reads text only")
            content = "".join(part.text for part in content)
        # `developer` is OpenAI's new name for `system`; chat templates of open models know only `system`.
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.name:
            message["name"] = self.name
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise unsupported("logprobs", "logprobs")
        if self.tools and self.tool_choice != "none":
            raise unsupported("tools", "tool calling")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise unsupported("response_format", f"response_format {self.response_format.get('type')!r}")

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:   # the newer name wins, as in OpenAI's API
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def template_messages(self) -> list[dict]:
        return [message.for_template(i) for i, message in enumerate(self.messages)]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs is not None:
            raise unsupported("logprobs", "logprobs")
        if self.best_of not in (None, 1):
            raise bad_request("best_of", f"best_of: only best_of=1 is supported, got {self.best_of}",
                              code="unsupported_value")
        if self.suffix:
            raise unsupported("suffix", "suffix (insertion)")

    def prompt_text(self) -> str:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise bad_request("prompt", f"prompt: send one prompt per request (got a list of {len(prompts)}); "
                                        "batch by sending concurrent requests", code="unsupported_value")
        if not prompts[0]:
            raise bad_request("prompt", "prompt: must not be empty")
        return prompts[0]

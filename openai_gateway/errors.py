"""OpenAI's error format, and how Triton's errors map onto it.

Over gRPC streaming Triton sends only an error *message* (ModelStreamInferResponse.error_message, no
status code), so the mapping reads the message: moe_llm's INVALID_ARG errors start with the name of
the input tensor ("max_tokens: ..."), and Triton's own rejections have fixed texts.
"""
import grpc

# Triton 2.51 core texts (seen over gRPC streaming against tritonserver 2.51.0):
QUEUE_FULL = "Exceeds maximum queue size"            # dynamic batcher, max_queue_size reached
MODEL_MISSING = "Request for unknown model"         # "...: 'm' is not found" / "... has no available versions"
MODEL_UNLOADING = "the model is being unloaded"     # moe_llm's finalize() with requests in flight

# moe_llm input tensor -> request field of the OpenAI API (text_input is `messages` or `prompt`)
PARAM_OF_TENSOR = {
    "max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty", "min_tokens": "min_tokens", "stop_words": "stop",
    "text_input": "prompt",
}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str | None, message: str, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {what} is not supported by this server; remove it from the request",
                       param=param, code="unsupported_parameter")


def model_not_ready(detail: str) -> OpenAIError:
    return OpenAIError(503, f"The model is not ready: {detail}. Retry when GET /health answers 200.",
                       type="server_error", code="model_not_ready", headers={"Retry-After": "5"})


def from_triton_message(message: str, triton_model: str, renamed: dict[str, str]) -> OpenAIError:
    """An error response from Triton -> OpenAIError. `renamed` overrides PARAM_OF_TENSOR for this request
    (text_input -> messages for chat, max_tokens -> max_completion_tokens when the client sent that)."""
    if QUEUE_FULL in message:
        return OpenAIError(429, f"The server is at capacity: Triton's request queue for {triton_model} is full "
                                f"({message}). Retry later with backoff.", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"})
    if message.startswith(MODEL_MISSING) or MODEL_UNLOADING in message:
        return model_not_ready(f"Triton answered: {message}")
    tensor, sep, detail = message.partition(": ")
    if sep and tensor in PARAM_OF_TENSOR:   # moe_llm's INVALID_ARG, "<tensor>: <what is wrong>"
        param = renamed.get(tensor, PARAM_OF_TENSOR[tensor])
        return bad_request(param, f"{param}: {detail}")
    return OpenAIError(500, f"Triton failed the request: {message}", type="server_error", code="triton_error")


def from_rpc_error(error: grpc.aio.AioRpcError, url: str) -> OpenAIError:
    """The gRPC call itself failed (no Triton answer at all)."""
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return model_not_ready(f"Triton is not reachable at {url} ({error.code().name}: {error.details()}); "
                               "start tritonserver or set TRITON_GRPC_URL")
    return OpenAIError(502, f"gRPC call to Triton at {url} failed: {error.code().name}: {error.details()}",
                       type="server_error", code="triton_unreachable")

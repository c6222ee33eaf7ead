"""The FastAPI app: OpenAI routes in front of Triton's moe_llm model.

    GET /health   GET /v1/models   GET /v1/models/{id}   POST /v1/completions   POST /v1/chat/completions

A stream's HTTP status is decided by Triton's first response (so queue full is a real 429, a bad
parameter a real 400); only then are headers sent. A client that goes away cancels its Triton call,
while queued, prefilling or decoding, streaming or not.
"""
import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from openai_gateway.errors import OpenAIError, bad_request, model_not_ready
from openai_gateway.prompts import PromptBuilder
from openai_gateway.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from openai_gateway.responses import Completion, event_stream
from openai_gateway.settings import GatewaySettings
from openai_gateway.triton_stream import TritonGeneration

log = logging.getLogger("openai_gateway")
CLIENT_CLOSED_REQUEST = 499   # nginx's status for "the client went away"; nobody receives it


class ClientDisconnected(Exception):
    pass


def create_app(settings: GatewaySettings) -> FastAPI:
    state = {}

    async def triton_model_dir() -> Path | None:
        """Triton's `model` parameter, when that folder is visible from here (same machine or volume)."""
        try:
            config = await state["triton"].get_model_config(settings.triton_model, client_timeout=5)
        except InferenceServerException as e:
            raise model_not_ready(f"cannot read {settings.triton_model}'s config from Triton at "
                                  f"{settings.triton_grpc_url}: {e.message()}") from None
        folder = config.config.parameters["model"].string_value if "model" in config.config.parameters else ""
        return Path(folder) if folder and (Path(folder) / "config.json").is_file() else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["triton"] = InferenceServerClient(settings.triton_grpc_url)   # one channel, one call per request
        state["prompts"] = PromptBuilder(settings.tokenizer_dir, triton_model_dir)
        state["started"] = int(time.time())
        if settings.tokenizer_dir is not None:
            await state["prompts"].load(required=True)   # fail at start-up, not on the first chat
        log.info("OpenAI API for Triton model %s at %s, served as %r; API key %s", settings.triton_model,
                 settings.triton_grpc_url, settings.served_model_name, "required" if settings.api_key else "off")
        yield
        state["prompts"].close()
        await state["triton"].close()

    app = FastAPI(title="triton-moe-backend OpenAI gateway", lifespan=lifespan)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, e: OpenAIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        errors = e.errors()
        if errors and errors[0]["type"] == "json_invalid":
            return await openai_error(request, bad_request(None, f"The body is not valid JSON: {errors[0]['msg']}"))
        paths = [".".join(str(p) for p in err["loc"] if p != "body") for err in errors]
        if not paths or not paths[0]:   # not an object at all, e.g. a form body from `curl -d` without a JSON header
            return await openai_error(request, bad_request(None, "The body must be a JSON object; send it with "
                                                                 "`Content-Type: application/json`"))
        message = "; ".join(f"{path}: {err['msg']}" for path, err in zip(paths, errors))
        return await openai_error(request, bad_request(paths[0].split(".")[0], message))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        kind = "not_found" if e.status_code == 404 else "invalid_request"
        return await openai_error(request, OpenAIError(e.status_code, f"{request.method} {request.url.path}: "
                                                       f"{e.detail}", code=kind))

    def check_api_key(request: Request) -> None:
        if not settings.api_key:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(401, "Missing API key: send the header `Authorization: Bearer <key>` (the key this "
                                   "gateway was started with in OPENAI_API_KEY).", code="invalid_api_key")
        if not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise OpenAIError(401, "Incorrect API key provided. Use the key this gateway was started with "
                                   "(OPENAI_API_KEY).", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": settings.served_model_name, "object": "model", "created": state["started"],
                "owned_by": "triton-moe-backend"}

    @app.get("/health")
    async def health():
        try:
            ready = await state["triton"].is_model_ready(settings.triton_model, client_timeout=5)
        except InferenceServerException as e:
            raise model_not_ready(f"Triton at {settings.triton_grpc_url} does not answer ({e.message()})") from None
        if not ready:
            raise model_not_ready(f"Triton's model {settings.triton_model} is not loaded or not ready")
        return {"status": "ok", "model": settings.served_model_name, "triton_model": settings.triton_model}

    @app.get("/v1/models", dependencies=[Depends(check_api_key)])
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(check_api_key)])
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    def check_model(model: str) -> None:
        if model not in (settings.served_model_name, settings.triton_model):
            raise OpenAIError(404, f"The model `{model}` does not exist. This server serves "
                                   f"`{settings.served_model_name}` (see GET /v1/models).", param="model",
                              code="model_not_found")

    @app.post("/v1/chat/completions", dependencies=[Depends(check_api_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        body.check_supported()
        prompt, prompt_tokens = await state["prompts"].chat_prompt(body.template_messages())
        completion = Completion("chat", body.model, body.include_usage)
        return await generate(request, body, completion, prompt, prompt_tokens, {"text_input": "messages"})

    @app.post("/v1/completions", dependencies=[Depends(check_api_key)])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        body.check_supported()
        prompt = body.prompt_text()
        prompt_tokens = await state["prompts"].count_tokens(prompt) if body.max_tokens is None else None
        completion = Completion("text", body.model, body.include_usage)
        return await generate(request, body, completion, prompt, prompt_tokens, {"text_input": "prompt"},
                              echo=prompt if body.echo else "")

    def max_tokens_of(body: SamplingRequest, prompt_tokens: int | None) -> tuple[int, str]:
        max_tokens, field = body.requested_max_tokens()
        if max_tokens is not None:
            return max_tokens, field
        context = state["prompts"].max_seq_len
        if context is None or prompt_tokens is None:
            return settings.default_max_tokens, field
        if prompt_tokens >= context:
            raise bad_request("messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                              f"the prompt has {prompt_tokens} tokens; the model's context is {context} tokens")
        return min(settings.default_max_tokens, context - prompt_tokens), field

    async def generate(request: Request, body: SamplingRequest, completion: Completion, prompt: str,
                       prompt_tokens: int | None, renamed: dict[str, str], echo: str = ""):
        max_tokens, max_tokens_field = max_tokens_of(body, prompt_tokens)
        generation = TritonGeneration(state["triton"], settings.triton_grpc_url, settings.triton_model,
                                      completion.id, body.triton_inputs(prompt, max_tokens),
                                      renamed | {"max_tokens": max_tokens_field})
        responses = generation.responses()
        try:
            if body.stream:
                first = await until_disconnected(request, anext(responses))
            else:
                await until_disconnected(request, collect(completion, responses))
        except ClientDisconnected:
            generation.cancel()
            log.info("%s: the client disconnected; its Triton request is cancelled", completion.id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if not body.stream:
            return completion.response(echo)
        # Starlette stops the stream when the client disconnects; the background task then cancels the call.
        return StreamingResponse(event_stream(completion, first, responses, echo), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(generation.cancel))

    return app


async def collect(completion: Completion, responses) -> None:
    async for delta in responses:
        completion.add(delta)


async def until_disconnected(request: Request, work):
    """Await `work`, cancelling it if the client disconnects first (ASGI http.disconnect, no polling)."""
    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()   # raises CancelledError inside the Triton response loop, which cancels the call
    if task in done:
        return task.result()
    raise ClientDisconnected

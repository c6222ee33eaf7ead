"""One generation request on its own Triton ModelStreamInfer call (tritonclient.grpc.aio).

Every OpenAI request becomes one streamed moe_llm request, so it passes through Triton's queue,
scheduler and metrics like any other client's. The request iterator stays open until the final
response (awaiting an event, not polling); cancel() cancels the gRPC call, which Triton turns into a
cancelled request, and moe_llm then aborts it in the engine and frees its KV blocks.
"""
import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from tritonclient.grpc.aio import InferenceServerClient

from client.generate import grpc_inputs
from openai_gateway.errors import OpenAIError, from_rpc_error, from_triton_message


@dataclass(frozen=True, slots=True)
class TritonDelta:
    """One streamed moe_llm response."""
    text: str
    num_output_tokens: int          # tokens in this response (moe_llm reports per-response counts)
    num_input_tokens: int | None
    finish_reason: str | None       # set on the final response only: "stop" or "length"


class TritonGeneration:
    def __init__(self, client: InferenceServerClient, url: str, model: str, request_id: str, inputs: dict,
                 renamed_params: dict[str, str]):
        self._url, self._model, self._renamed = url, model, renamed_params
        self._request_sent_all = asyncio.Event()
        self._finished = False
        request = {"model_name": model, "inputs": grpc_inputs(inputs), "request_id": request_id}
        self._call = client.stream_infer(self._requests(request))

    async def _requests(self, request: dict):
        yield request
        # Keep our half of the stream open until the final response: the call then ends normally.
        await self._request_sent_all.wait()

    async def responses(self) -> AsyncIterator[TritonDelta]:
        """Yields each response until the final one; raises OpenAIError for Triton's errors."""
        try:
            async for result, error in self._call:
                if error is not None:
                    self._finished = True   # an error response is final
                    raise from_triton_message(error.message(), self._model, self._renamed)
                delta = _decode(result)
                final = result.get_response().parameters.get("triton_final_response")
                if delta.finish_reason is not None or (final is not None and final.bool_param):
                    self._finished = True
                    self._request_sent_all.set()
                    yield delta
                    return
                yield delta
            raise OpenAIError(502, f"Triton closed the stream of {self._model} before its final response",
                              type="server_error", code="triton_error")
        except grpc.aio.AioRpcError as e:
            self._finished = True
            raise from_rpc_error(e, self._url) from None
        finally:
            self.cancel()   # no-op once finished; else (client gone, error, shutdown) Triton must stop the request

    def cancel(self) -> None:
        self._request_sent_all.set()
        if not self._finished:
            self._finished = True
            self._call.cancel()


def _decode(result) -> TritonDelta:
    outputs = {output.name for output in result.get_response().outputs}

    def scalar(name: str):
        return result.as_numpy(name).reshape(-1)[0] if name in outputs else None

    text = scalar("text_output")
    reason = scalar("finish_reason")
    num_input = scalar("num_input_tokens")
    num_output = scalar("num_output_tokens")
    return TritonDelta(text=text.decode() if text is not None else "",
                       num_output_tokens=int(num_output) if num_output is not None else 0,
                       num_input_tokens=int(num_input) if num_input is not None else None,
                       finish_reason=reason.decode() if reason is not None else None)

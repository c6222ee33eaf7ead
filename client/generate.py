"""Stream a completion from the moe_llm model on a running Triton server.

    python -m client.generate "What is the capital of France?" [--http] [--max-tokens 64] [--temperature 0.7] ...

gRPC (default): a bidirectional ModelStreamInfer stream; each response carries the new text, and the
response whose `triton_final_response` parameter is true ends the request. --http: Triton's generate
extension (POST /v2/models/<model>/generate_stream, server-sent events). Exit code 1 with the
server's message on any error.
"""
import argparse
import json
import queue
import sys
import uuid
from typing import Iterator

import numpy as np

# input name -> (numpy dtype, Triton datatype), as declared in model_repository/moe_llm/config.pbtxt
INPUT_TYPES = {
    "text_input": (np.object_, "BYTES"), "max_tokens": (np.int32, "INT32"), "stream": (np.bool_, "BOOL"),
    "exclude_input_in_output": (np.bool_, "BOOL"), "temperature": (np.float32, "FP32"), "top_k": (np.int32, "INT32"),
    "top_p": (np.float32, "FP32"), "seed": (np.uint64, "UINT64"), "repetition_penalty": (np.float32, "FP32"),
    "presence_penalty": (np.float32, "FP32"), "frequency_penalty": (np.float32, "FP32"), "end_id": (np.int32, "INT32"),
    "min_tokens": (np.int32, "INT32"), "min_length": (np.int32, "INT32"), "stop_words": (np.object_, "BYTES"),
    "return_log_probs": (np.bool_, "BOOL"), "return_num_input_tokens": (np.bool_, "BOOL"),
    "return_num_output_tokens": (np.bool_, "BOOL"),
}
DEFAULT_MODEL = "moe_llm"


class GenerateError(RuntimeError):
    """The server answered with an error (its message is the exception's text)."""


def grpc_inputs(inputs: dict):
    """Request tensors with the batch dimension Triton expects: [1, 1], or [1, N] for stop_words."""
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, value in inputs.items():
        dtype, triton_type = INPUT_TYPES[name]
        values = value if isinstance(value, (list, tuple)) else [value]
        if dtype is np.object_:
            values = [v.encode() if isinstance(v, str) else v for v in values]
        array = np.array([values], dtype=dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), triton_type)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def decode_outputs(result) -> dict:
    """Output tensors of one streamed response as Python values (text decoded, scalars unwrapped)."""
    outputs = {}
    for output in result.get_response().outputs:
        array = result.as_numpy(output.name).reshape(-1)
        values = [v.decode() if isinstance(v, bytes) else v.item() for v in array]
        outputs[output.name] = values if output.name == "output_log_probs" else values[0]
    return outputs


def stream_grpc(url: str, prompt: str, model: str = DEFAULT_MODEL, request_id: str | None = None,
                timeout_s: float | None = None, **inputs) -> Iterator[dict]:
    """Yield each response's outputs; raises GenerateError with the server's message on error."""
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    finished = False
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            client.async_stream_infer(model, grpc_inputs({"text_input": prompt, "stream": True, **inputs}),
                                      request_id=request_id or uuid.uuid4().hex, enable_empty_final_response=True)
            while True:
                result, error = responses.get(timeout=timeout_s)
                if error is not None:
                    raise GenerateError(error.message())
                final = result.get_response().parameters["triton_final_response"].bool_param
                if result.get_response().outputs:
                    yield decode_outputs(result)
                if final:
                    finished = True
                    return
        finally:
            # Cancel only a request we walk away from; after its final response, close the stream gently:
            # cancelling it then races Triton's trace release, which drops that request's trace.
            client.stop_stream(cancel_requests=not finished)


def stream_http(url: str, prompt: str, model: str = DEFAULT_MODEL, timeout_s: float | None = None,
                **inputs) -> Iterator[dict]:
    """Same over HTTP generate_stream (server-sent events)."""
    import requests

    body = {"text_input": prompt, "stream": True, **inputs}
    with requests.post(f"http://{url}/v2/models/{model}/generate_stream", json=body, stream=True,
                       timeout=timeout_s) as reply:
        if reply.status_code != 200:
            raise GenerateError(_error_text(reply.text))
        for line in reply.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if "error" in event:   # an error after the first event arrives inside a 200 stream
                raise GenerateError(event["error"])
            yield {k: v for k, v in event.items() if k not in ("model_name", "model_version", "id")}


def _error_text(text: str) -> str:
    text = text.strip()
    text = text[len("data:"):] if text.startswith("data:") else text   # generate_stream answers in SSE
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--http", action="store_true", help="use HTTP generate_stream instead of gRPC streaming")
    parser.add_argument("--url", help="server address (default localhost:8001 for gRPC, localhost:8000 for HTTP)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--presence-penalty", type=float)
    parser.add_argument("--frequency-penalty", type=float)
    parser.add_argument("--min-tokens", type=int)
    parser.add_argument("--stop", action="append", dest="stop_words", help="stop string (repeatable)")
    parser.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    args = parser.parse_args(argv)
    inputs = {name: getattr(args, name) for name in (
        "temperature", "top_k", "top_p", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty",
        "min_tokens", "stop_words") if getattr(args, name) is not None}
    inputs |= {"max_tokens": args.max_tokens, "return_num_input_tokens": True, "return_num_output_tokens": True}
    url = args.url or ("localhost:8000" if args.http else "localhost:8001")
    stream = stream_http if args.http else stream_grpc
    if args.echo:
        print(args.prompt, end="", flush=True)
    num_input = num_output = 0
    finish_reason = None
    try:
        for outputs in stream(url, args.prompt, model=args.model, **inputs):
            print(outputs.get("text_output", ""), end="", flush=True)
            num_input = outputs.get("num_input_tokens", num_input)
            num_output += outputs.get("num_output_tokens", 0)
            finish_reason = outputs.get("finish_reason", finish_reason)
    except GenerateError as e:
        print(f"\nerror from {url}: {e}", file=sys.stderr)
        return 1
    except Exception as e:   # unreachable server, refused connection, ...
        print(f"\ncannot generate from {url}: {e}", file=sys.stderr)
        return 1
    print(f"\n[{finish_reason}; {num_input} prompt tokens, {num_output} generated]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

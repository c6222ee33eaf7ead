"""Request tensors of TRT-LLM's text interface -> prompt, SamplingParams and response options.

Pure numpy (no Triton import), so it is unit-tested without a server. Every error is an InvalidRequest
naming the tensor the client sent, which model.py turns into an INVALID_ARG response.
"""
from dataclasses import dataclass

import numpy as np

from backend.errors import InvalidRequest
from backend.sampling_params import SamplingParams

# tensor name -> (numpy kind it must have, SamplingParams field)
SAMPLING_INPUTS = {
    "max_tokens": ("i", "max_tokens"),
    "temperature": ("f", "temperature"),
    "top_k": ("i", "top_k"),
    "top_p": ("f", "top_p"),
    "seed": ("iu", "seed"),
    "repetition_penalty": ("f", "repetition_penalty"),
    "presence_penalty": ("f", "presence_penalty"),
    "frequency_penalty": ("f", "frequency_penalty"),
    "end_id": ("i", "end_id"),
    "min_tokens": ("i", "min_tokens"),
    "min_length": ("i", "min_tokens"),    # genai-perf's older name for min_tokens
    "return_log_probs": ("b", "logprobs"),
}
FLAG_INPUTS = ("stream", "exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens")
TEXT_INPUTS = ("text_input", "stop_words")
KNOWN_INPUTS = set(SAMPLING_INPUTS) | set(FLAG_INPUTS) | set(TEXT_INPUTS)
# SamplingParams / engine field -> the tensor a client sets it with (for error messages)
TENSOR_OF_FIELD = {"prompt": "text_input", "stop": "stop_words", "logprobs": "return_log_probs"}


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    params: SamplingParams
    stream: bool = False
    exclude_input_in_output: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False


def parse_request(tensors: dict[str, np.ndarray], exclude_input_in_output: bool = False) -> GenerateRequest:
    """`tensors` maps input names to arrays with the batch dimension first (shape [1, ...])."""
    for name, array in tensors.items():
        if name not in KNOWN_INPUTS:
            raise InvalidRequest(name, f"unknown input; known inputs: {', '.join(sorted(KNOWN_INPUTS))}")
        if array.ndim == 0 or array.shape[0] != 1:
            raise InvalidRequest(name, f"batch size must be 1 per request, got shape {list(array.shape)}; "
                                       "send one prompt per request (Triton batches requests itself)")
    if "text_input" not in tensors:
        raise InvalidRequest("text_input", "missing; send the prompt as a BYTES tensor of shape [1, 1]")
    prompt = _text(tensors["text_input"], "text_input", single=True)[0]
    if "min_tokens" in tensors and "min_length" in tensors and \
            _scalar(tensors["min_tokens"], "min_tokens", "i") != _scalar(tensors["min_length"], "min_length", "i"):
        raise InvalidRequest("min_length", "conflicts with min_tokens; send only one of them")

    sampling = {}
    for name, (kind, field) in SAMPLING_INPUTS.items():
        if name in tensors:
            sampling[field] = _scalar(tensors[name], name, kind)
    if sampling.get("end_id", -1) < -1:
        raise InvalidRequest("end_id", f"must be a token id, or -1 to never stop at end-of-sequence; got {sampling['end_id']}")
    if "stop_words" in tensors:
        sampling["stop"] = [word for word in _text(tensors["stop_words"], "stop_words") if word]
    try:
        params = SamplingParams(**sampling)
    except InvalidRequest as e:
        sent_as_min_length = e.field == "min_tokens" and "min_tokens" not in tensors
        raise InvalidRequest("min_length" if sent_as_min_length else tensor_name(e.field), e.message) from None

    flags = {name: _scalar(tensors[name], name, "b") for name in FLAG_INPUTS if name in tensors}
    flags.setdefault("exclude_input_in_output", exclude_input_in_output)
    return GenerateRequest(prompt=prompt, params=params, **flags)


def tensor_name(field: str) -> str:
    return TENSOR_OF_FIELD.get(field, field)


def _scalar(array: np.ndarray, name: str, kinds: str):
    if array.size != 1:
        raise InvalidRequest(name, f"expected one value (shape [1, 1]), got shape {list(array.shape)}")
    if array.dtype.kind not in kinds:
        raise InvalidRequest(name, f"wrong data type {array.dtype}; see model_repository/moe_llm/config.pbtxt")
    value = array.reshape(-1)[0]
    return bool(value) if kinds == "b" else value.item()


def _text(array: np.ndarray, name: str, single: bool = False) -> list[str]:
    if single and array.size != 1:
        raise InvalidRequest(name, f"expected one string (shape [1, 1]), got shape {list(array.shape)}")
    texts = []
    for value in array.reshape(-1):
        if isinstance(value, str):
            texts.append(value)
            continue
        if not isinstance(value, bytes):
            raise InvalidRequest(name, f"wrong data type {array.dtype}; send BYTES (UTF-8 text)")
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidRequest(name, f"not valid UTF-8 (byte {value[e.start]:#04x} at offset {e.start}); "
                                       "send UTF-8 encoded text") from None
    return texts

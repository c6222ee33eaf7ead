"""Client-side timing of one streamed request: send time, every response's arrival, the text.

    from client.timed import timed_stream
    r = timed_stream("127.0.0.1:8001", "Hello", max_tokens=32)
    r.ttft, r.e2e, r.inter_token_gaps, r.text

Definitions follow genai-perf: TTFT = first response - send, e2e = last response - send. One
response carries one token's text (the engine streams every token), except for an empty delta
(half a UTF-8 character), which rides with the next one.
"""
import time
from dataclasses import dataclass, field

from client.generate import DEFAULT_MODEL, stream_grpc


@dataclass
class TimedResult:
    sent_at: float                                   # time.monotonic() before the stream opened
    arrivals: list[float] = field(default_factory=list)   # one per response with output
    text: str = ""
    finish_reason: str | None = None
    num_output_tokens: int = 0                       # from return_num_output_tokens (0 when not asked)

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent_at

    @property
    def e2e(self) -> float:
        return self.arrivals[-1] - self.sent_at

    @property
    def inter_token_gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]


def timed_stream(url: str, prompt: str, model: str = DEFAULT_MODEL, timeout_s: float | None = 600,
                 **inputs) -> TimedResult:
    """Run one streamed request to the end; raises client.generate.GenerateError on a server error."""
    result = TimedResult(sent_at=time.monotonic())
    parts = []
    for outputs in stream_grpc(url, prompt, model=model, timeout_s=timeout_s, **inputs):
        now = time.monotonic()
        if outputs.get("text_output") or "finish_reason" in outputs:
            result.arrivals.append(now)
        parts.append(outputs.get("text_output", ""))
        result.num_output_tokens += outputs.get("num_output_tokens", 0)
        result.finish_reason = outputs.get("finish_reason", result.finish_reason)
    result.text = "".join(parts)
    return result

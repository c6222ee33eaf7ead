"""What the engine hands back: per-step request outputs, finished results, engine stats."""
from dataclasses import dataclass


@dataclass(slots=True)
class RequestOutput:
    """One request's progress in one engine step (new tokens only)."""
    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None          # "stop" | "length" | "cancelled" | None while running
    num_prompt_tokens: int
    num_output_tokens: int             # total so far
    new_logprobs: list[float] | None = None
    error: str | None = None


@dataclass(slots=True)
class GenerationResult:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None


@dataclass
class EngineStats:
    active: int = 0            # requests the engine holds (running + waiting + preempted)
    scheduled: int = 0         # requests in the last step's batch
    context: int = 0           # of those, requests doing prefill (context) work
    generation: int = 0        # of those, requests decoding
    waiting: int = 0           # admitted to the engine, not yet running
    preempted: int = 0         # paused by max_utilization, waiting to resume
    max_batch_size: int = 0
    kv_blocks_max: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_blocks_reused: int = 0  # blocks served from the prefix cache so far
    tokens_per_block: int = 0
    context_tokens: int = 0    # prefill tokens in the last step
    iterations: int = 0
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache
    prefix_cache_hits: int = 0     # tokens found there

    @property
    def kv_fraction(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_max if self.kv_blocks_max else 0.0

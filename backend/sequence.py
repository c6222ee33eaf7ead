"""Per-request state: tokens, progress, block table, timing, stop bookkeeping."""
import enum
import time
from dataclasses import dataclass, field

from backend.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    max_seq_len: int
    status: SequenceStatus = SequenceStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    num_computed_tokens: int = 0          # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    num_cached_prompt_tokens: int = 0     # prompt tokens served by the prefix cache
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_reason: str | None = None
    was_preempted: bool = False
    aborted: bool = False
    generator: object = None              # torch.Generator for seeded sampling
    detokenizer: object = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    @property
    def max_total_tokens(self) -> int:
        """Most tokens this request can ever hold in the KV cache."""
        return min(self.num_prompt_tokens + self.params.max_tokens, self.max_seq_len)

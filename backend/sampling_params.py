"""Per-request sampling settings (vLLM names; TRT-LLM tensor names map onto them)."""
from dataclasses import dataclass, field

from backend.errors import require


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    end_id: int | None = None         # None = the tokenizer's eos; -1 = never stop on eos
    ignore_eos: bool = False
    logprobs: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        require(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", f"must be an integer >= 0, got {self.top_k!r}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        require(-2 <= self.presence_penalty <= 2, "presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        require(-2 <= self.frequency_penalty <= 2, "frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        require(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}")
        require(self.min_tokens <= self.max_tokens, "min_tokens", f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        require(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**64), "seed", f"must be an integer in [0, 2^64), got {self.seed!r}")
        require(all(isinstance(s, str) and s for s in self.stop), "stop", "must be a list of non-empty strings")
        require(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids", "must be a list of token ids >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

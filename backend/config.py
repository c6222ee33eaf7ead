"""EngineConfig: the one place where engine settings, their defaults and their checks live.

Names follow TRT-LLM's Triton `parameters` keys where one exists, vLLM's otherwise.
"""
import types
import typing
from dataclasses import dataclass, fields

from backend.errors import ConfigError, require

BATCH_SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
BATCHING_STRATEGIES = ("inflight_batching", "inflight_fused_batching", "V1")
DTYPES = ("float32", "bfloat16", "float16")
EXPERT_DTYPES = ("bf16", "int8", "int4", "fp32")
DENSE_DTYPES = ("auto", "fp32", "bf16")
KV_CACHE_DTYPES = ("auto", "fp32", "bf16")
ALIASES = {"kv_cache_free_gpu_mem_fraction": "kv_cache_free_mem_fraction", "gpt_model_type": "batching_strategy",
           "max_num_seqs": "max_batch_size", "max_num_batched_tokens": "max_num_tokens", "block_size": "tokens_per_block"}


@dataclass
class EngineConfig:
    model: str = ""
    max_tokens_in_paged_kv_cache: int | None = None   # None: size from kv_cache_free_mem_fraction
    kv_cache_free_mem_fraction: float = 0.1          # share of free host memory for KV when the above is unset
    tokens_per_block: int = 16
    max_batch_size: int = 64                         # max requests in one step
    max_num_tokens: int = 2048                       # max tokens (prefill + decode) in one step
    max_seq_len: int | None = None                   # None: the model's max_position_embeddings
    batch_scheduler_policy: str = "guaranteed_no_evict"
    enable_chunked_context: bool = False
    enable_kv_cache_reuse: bool = False
    batching_strategy: str = "inflight_batching"
    exclude_input_in_output: bool = False
    dtype: str = "float32"
    num_threads: int | None = None                   # CPU threads of the forward pass; None: see models/placement.place_threads
    placement: str | None = None                     # YAML placement rules (kernels/placement)
    expert_dtype: str | None = None                  # overrides the placement's expert dtype
    dense_dtype: str = "auto"                        # dense linears' weights (fp32 math); auto: bf16 for bf16 checkpoints
    kv_cache_dtype: str = "auto"                     # auto: bf16 when the dense linears hold bf16 weights, else dtype
    warmup: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def check(ok: bool, name: str, msg: str):
            require(ok, name, msg, ConfigError)

        check(self.max_tokens_in_paged_kv_cache is None or self.max_tokens_in_paged_kv_cache > 0,
              "max_tokens_in_paged_kv_cache", f"must be > 0, got {self.max_tokens_in_paged_kv_cache}")
        check(0 < self.kv_cache_free_mem_fraction <= 1, "kv_cache_free_mem_fraction",
              f"must be in (0, 1], got {self.kv_cache_free_mem_fraction}")
        check(self.tokens_per_block > 0, "tokens_per_block", f"must be > 0, got {self.tokens_per_block}")
        check(self.max_batch_size > 0, "max_batch_size", f"must be > 0, got {self.max_batch_size}")
        check(self.max_num_tokens > 0, "max_num_tokens", f"must be > 0, got {self.max_num_tokens}")
        check(self.max_seq_len is None or self.max_seq_len > 0, "max_seq_len", f"must be > 0, got {self.max_seq_len}")
        check(self.batch_scheduler_policy in BATCH_SCHEDULER_POLICIES, "batch_scheduler_policy",
              f"must be one of {BATCH_SCHEDULER_POLICIES}, got {self.batch_scheduler_policy!r}")
        check(self.batching_strategy in BATCHING_STRATEGIES, "batching_strategy",
              f"must be one of {BATCHING_STRATEGIES}, got {self.batching_strategy!r}")
        check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        check(self.expert_dtype is None or self.expert_dtype in EXPERT_DTYPES, "expert_dtype",
              f"must be one of {EXPERT_DTYPES}, got {self.expert_dtype!r}")
        check(self.dense_dtype in DENSE_DTYPES, "dense_dtype", f"must be one of {DENSE_DTYPES}, got {self.dense_dtype!r}")
        check(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
              f"must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        check(self.num_threads is None or self.num_threads > 0, "num_threads", f"must be > 0, got {self.num_threads}")

    @property
    def inflight(self) -> bool:
        return self.batching_strategy != "V1"

    @classmethod
    def from_dict(cls, values: dict, ignore: typing.Iterable[str] = ()) -> "EngineConfig":
        """Build from keyword values or Triton `parameters` strings.

        Empty strings and unfilled `${...}` templates mean unset; unknown keys are an error
        unless listed in `ignore` (keys another layer owns, e.g. the Triton adapter's).
        """
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, raw in values.items():
            name = ALIASES.get(key, key)
            if key in ignore:
                continue
            if name not in known:
                raise ConfigError(key, f"unknown setting; known settings: {', '.join(sorted(known))}")
            if isinstance(raw, str) and (raw.strip() == "" or raw.strip().startswith("${")):
                continue
            kwargs[name] = _convert(name, raw)
        return cls(**kwargs)


def _convert(name: str, raw):
    hint = typing.get_type_hints(EngineConfig)[name]
    base = [t for t in typing.get_args(hint) if t is not type(None)][0] if isinstance(hint, types.UnionType) else hint
    if raw is None or not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return base(text)
    except ValueError:
        raise ConfigError(name, f"expected {base.__name__}, got {raw!r}") from None

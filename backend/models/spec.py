"""ModelSpec: what our model code needs from a Hugging Face config, per supported family.

Adding a family = one entry in FAMILIES mapping its config onto these fields (DeepSeek-V2/V3
will add MLA attention and grouped routing as new fields/modules, not new code paths here).
"""
from dataclasses import dataclass, field

from backend.errors import ConfigError


@dataclass
class ModelSpec:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: str | None = None            # None | "head" (Qwen3: per head) | "full" (OLMoE: whole projection)
    clip_qkv: float | None = None
    intermediate_size: int = 0            # dense MLP width
    moe_layers: list[bool] = field(default_factory=list)
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False          # renormalise the top-k routing weights to sum to 1
    shared_expert_intermediate_size: int = 0   # Qwen2-MoE: a shared expert behind a sigmoid gate
    sliding_window: int | None = None

    @property
    def kv_bytes_per_token(self) -> int:
        """Per token, all layers, K and V, at 1 byte per element (multiply by the element size)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim


def _sparse_layers(cfg, n: int) -> list[bool]:
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    return [i not in dense and cfg.num_experts > 0 and (i + 1) % step == 0 for i in range(n)]


def _base(cfg, **kw) -> ModelSpec:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return ModelSpec(
        model_type=cfg.model_type, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
        rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        intermediate_size=getattr(cfg, "intermediate_size", 0) or 0, sliding_window=window or None, **kw)


def _dense(cfg, **kw) -> ModelSpec:
    return _base(cfg, moe_layers=[False] * cfg.num_hidden_layers, **kw)


FAMILIES = {
    "llama": lambda c: _dense(c, qkv_bias=bool(getattr(c, "attention_bias", False))),
    "qwen2": lambda c: _dense(c, qkv_bias=True),
    "qwen3": lambda c: _dense(c, qkv_bias=bool(getattr(c, "attention_bias", False)), qk_norm="head"),
    "mixtral": lambda c: _base(
        c, moe_layers=[True] * c.num_hidden_layers, num_experts=c.num_local_experts, top_k=c.num_experts_per_tok,
        moe_intermediate_size=c.intermediate_size, norm_topk_prob=True),
    "qwen2_moe": lambda c: _base(
        c, qkv_bias=bool(getattr(c, "qkv_bias", True)), moe_layers=_sparse_layers(c, c.num_hidden_layers),
        num_experts=c.num_experts, top_k=c.num_experts_per_tok, moe_intermediate_size=c.moe_intermediate_size,
        norm_topk_prob=bool(c.norm_topk_prob), shared_expert_intermediate_size=c.shared_expert_intermediate_size),
    "qwen3_moe": lambda c: _base(
        c, qkv_bias=bool(getattr(c, "attention_bias", False)), qk_norm="head",
        moe_layers=_sparse_layers(c, c.num_hidden_layers), num_experts=c.num_experts, top_k=c.num_experts_per_tok,
        moe_intermediate_size=c.moe_intermediate_size, norm_topk_prob=bool(c.norm_topk_prob)),
    "olmoe": lambda c: _base(
        c, qkv_bias=bool(getattr(c, "attention_bias", False)), qk_norm="full", clip_qkv=getattr(c, "clip_qkv", None),
        moe_layers=[True] * c.num_hidden_layers, num_experts=c.num_experts, top_k=c.num_experts_per_tok,
        moe_intermediate_size=c.intermediate_size, norm_topk_prob=bool(c.norm_topk_prob)),
}


def spec_from_hf_config(cfg) -> ModelSpec:
    if cfg.model_type not in FAMILIES:
        raise ConfigError("model_type", f"{cfg.model_type!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise ConfigError("hidden_act", f"{act!r} is not supported (only silu)")
    return FAMILIES[cfg.model_type](cfg)

"""The decoder-only transformer every supported family maps onto (module names follow the
Hugging Face layout so checkpoints and placement rules address the same paths)."""
import torch
from torch import nn

from backend.models.attention import Attention, AttentionMetadata
from backend.models.layers import MLP, RMSNorm, RotaryEmbedding
from backend.models.moe import SparseMoE
from backend.models.spec import ModelSpec


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = SparseMoE(spec) if spec.moe_layers[layer_idx] else MLP(spec.hidden_size, spec.intermediate_size)

    def forward(self, x, cos, sin, meta: AttentionMetadata):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, spec: ModelSpec, rotary: RotaryEmbedding):
        super().__init__()
        # The loader builds this on the meta device and then copies every weight in: no init. nn.Embedding's own
        # (normal_ on meta) would also import torch._dynamo, 0.35 s of every start-up.
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size,
                                         _weight=torch.empty(spec.vocab_size, spec.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.rotary = rotary

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)                                 # [N, H]
        cos, sin = self.rotary(positions, x.dtype)                       # [N, 1, D] each
        for layer in self.layers:
            x = layer(x, cos, sin, meta)
        return x


class CausalLM(nn.Module):
    def __init__(self, spec: ModelSpec, rotary: RotaryEmbedding):
        super().__init__()
        self.spec = spec
        self.model = DecoderModel(spec, rotary)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def forward(self, input_ids, positions, meta: AttentionMetadata, logits_rows: torch.Tensor) -> torch.Tensor:
        """Hidden states of all N tokens, logits only for `logits_rows` (each request's last token)."""
        hidden = self.model(input_ids, positions, meta)                  # [N, H]
        return self.lm_head(self.model.norm(hidden[logits_rows])).float()   # [R, V]

"""The engine's rewrites of transformers' small ops must stay bit-exact: greedy parity rests on them."""
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from backend.models.layers import RotaryEmbedding, apply_rotary, rope_inv_freq


class _Config:
    rope_theta = 10000.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_is_bit_exact_with_transformers(dtype, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    n, hq, hkv = 37, 9, 3
    positions = torch.randint(0, 4096, (n,), generator=g)
    rotary = RotaryEmbedding(*rope_inv_freq(_Config(), head_dim))
    q = torch.randn(n, hq, head_dim, generator=g).to(dtype)
    k = torch.randn(n, hkv, head_dim, generator=g).to(dtype)

    # transformers' path: the same cos/sin it would compute ([N, D], unsigned), its layout [1, heads, N, D]
    freqs = positions.float()[:, None] * rotary.inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos_ref, sin_ref = emb.cos().to(dtype), emb.sin().to(dtype)
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos_ref[None], sin_ref[None])

    cos, sin = rotary(positions, dtype)
    assert torch.equal(apply_rotary(q, cos, sin), q_ref[0].transpose(0, 1))
    assert torch.equal(apply_rotary(k, cos, sin), k_ref[0].transpose(0, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_bit_exact_with_transformers(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from backend.models.layers import RMSNorm
    g = torch.Generator().manual_seed(0)
    ref, ours = LlamaRMSNorm(576, eps=1e-5), RMSNorm(576, 1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(576, generator=g))
        ours.weight.copy_(ref.weight)
    ref, ours = ref.to(dtype), ours.to(dtype)
    for rows in (1, 16, 300):
        x = (torch.randn(rows, 576, generator=g) * 3).to(dtype)
        assert torch.equal(ours(x), ref(x))

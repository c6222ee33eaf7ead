"""CPU paged-attention decode (every extension variant this CPU runs) against the torch reference."""
import pytest
import torch

from kernels import build
from backend.models.attention import torch_rotary_write_kv
from backend.models.layers import RotaryEmbedding
from kernels.cpu_attention import paged_attention_decode, rotary_write_kv
from kernels.cpu_features import supported_variants
from kernels.paged_attention_reference import paged_attention_reference

VARIANTS = [v.name for v in supported_variants()]
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-6}   # the cache dtype only changes the stored values, math is fp32


def make_case(B, Hq, Hkv, D, S, lens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(1, max(-(-L // S) for L in lens))
    num_blocks = B * max_blocks + 3
    q = torch.randn(B, Hq, D, generator=g)
    k_cache = torch.randn(num_blocks, S, Hkv, D, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, S, Hkv, D, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[:B * max_blocks].reshape(B, max_blocks).int()   # scattered blocks
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Hq,Hkv,D,S,lens", [
    (1, 4, 4, 16, 16, [1]),                       # first decode token, no GQA
    (3, 9, 3, 64, 16, [15, 16, 17]),              # around a block boundary, G = 3
    (4, 8, 1, 32, 5, [0, 7, 40, 123]),            # empty context, MQA, block size not a power of two
    (2, 16, 4, 128, 32, [300, 1000]),             # long contexts, D = 128
])
def test_matches_reference(variant, dtype, B, Hq, Hkv, D, S, lens):
    q, kc, vc, tables, context_lens = make_case(B, Hq, Hkv, D, S, lens, dtype)
    out = paged_attention_decode(q, kc, vc, tables, context_lens, D ** -0.5, variant=variant)
    ref = paged_attention_reference(q, kc, vc, tables, context_lens, D ** -0.5)
    assert out.shape == (B, Hq, D) and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=1e-5)
    if 0 in lens:
        assert torch.all(out[lens.index(0)] == 0)


def test_a_sequence_does_not_depend_on_the_batch_or_threads():
    q, kc, vc, tables, lens = make_case(5, 8, 2, 64, 16, [3, 50, 17, 64, 99], torch.float32, seed=1)
    full = paged_attention_decode(q, kc, vc, tables, lens, 0.125)
    alone = paged_attention_decode(q[2:3], kc, vc, tables[2:3], lens[2:3], 0.125)
    assert torch.equal(full[2:3], alone)
    for n in (1, 2, 3):
        with build.num_threads(n):
            assert torch.equal(full, paged_attention_decode(q, kc, vc, tables, lens, 0.125))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("D,first,rows", [(64, 1, 40), (64, 200, 70), (24, 5, 9)])   # D = 24: the portable passes
def test_rows_of_one_prompt_attend_as_each_row_alone(variant, D, first, rows):
    """A prompt's rows (one table, lengths first, first + 1, ...) share each widened cache block in the kernel;
    each row's result is the bits it gets alone, beside decode rows of other requests, on any thread count."""
    S, Hq, Hkv = 16, 9, 3
    q, kc, vc, tables, _ = make_case(3, Hq, Hkv, D, S, [first + rows] * 3, torch.bfloat16, seed=first)
    prompt_q = q[0].expand(rows, -1, -1) + torch.arange(rows)[:, None, None] * 0.01   # distinct queries
    lens = torch.arange(first, first + rows, dtype=torch.int32)
    batch_q = torch.cat([q[1:2], prompt_q, q[2:3]])
    batch_tables = torch.cat([tables[1:2], tables[0].expand(rows, -1), tables[2:3]]).contiguous()
    batch_lens = torch.cat([torch.tensor([first + 3]), lens, torch.tensor([first + rows])]).int()
    for n in (1, 2):
        with build.num_threads(n):
            out = paged_attention_decode(batch_q, kc, vc, batch_tables, batch_lens, 0.125, variant=variant)
        for i in range(rows + 2):
            alone = paged_attention_decode(batch_q[i:i + 1], kc, vc, batch_tables[i:i + 1], batch_lens[i:i + 1], 0.125,
                                           variant=variant)
            assert torch.equal(out[i:i + 1], alone), f"row {i}"
    ref = paged_attention_reference(batch_q, kc, vc, batch_tables, batch_lens, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_bad_shapes_are_named():
    q, kc, vc, tables, lens = make_case(2, 8, 2, 64, 16, [3, 5], torch.float32)
    with pytest.raises(ValueError, match="does not fit"):
        paged_attention_decode(q[..., :32], kc, vc, tables, lens, 0.125)
    with pytest.raises(ValueError, match="int32"):
        paged_attention_decode(q, kc, vc, tables.long(), lens, 0.125)
    with pytest.raises(ValueError, match="B=2"):
        paged_attention_decode(q, kc, vc, tables, lens[:1], 0.125)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        paged_attention_decode(q, kc.half(), vc.half(), tables, lens, 0.125)


def rotary_tables(positions, D):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    return RotaryEmbedding(inv_freq, 1.0)(positions, torch.float32)          # [N, 1, D] each, as the engine's


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_write_kv_matches_the_torch_path(variant, dtype):
    g = torch.Generator().manual_seed(3)
    N, Hq, Hkv, D, slots = 7, 6, 2, 16, 50
    qkv = torch.randn(N, (Hq + 2 * Hkv) * D, generator=g) * 3          # q, k and v as strided views, as in the engine
    qkv[0, Hq * D:Hq * D + 6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, -0.0, 3.0000001])
    qkv[1, (Hq + Hkv) * D:(Hq + Hkv) * D + 3] = torch.tensor([float("nan"), 1e-40, -0.0])
    q, k, v = (t.view(N, -1, D) for t in qkv.split((Hq * D, Hkv * D, Hkv * D), dim=-1))
    cos, sin = rotary_tables(torch.tensor([0, 1, 5, 17, 300, 4095, 9]), D)
    slot_mapping = torch.randperm(slots, generator=g)[:N]
    ours = [torch.zeros(slots, Hkv, D, dtype=dtype) for _ in range(2)]
    ref = [torch.zeros(slots, Hkv, D, dtype=dtype) for _ in range(2)]
    q_out = rotary_write_kv(q, k, v, cos, sin, *ours, slot_mapping, variant=variant)
    q_ref, _ = torch_rotary_write_kv(q, k, v, cos, sin, *ref, slot_mapping)
    assert q_out.is_contiguous()
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
    for a, b in zip(ours + [q_out], ref + [q_ref]):   # bit for bit (-0.0, denormals, ties); NaN stays NaN
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.view(bits[a.dtype])[~a.isnan()], b.view(bits[b.dtype])[~b.isnan()])


def test_rotary_write_kv_refuses_bad_input():
    k = torch.randn(3, 2, 8)
    cos, sin = rotary_tables(torch.arange(3), 8)
    cache = torch.zeros(10, 2, 8)
    with pytest.raises(IndexError, match="slot_mapping\\[1\\] = 10 is outside"):
        rotary_write_kv(k, k, k, cos, sin, cache, cache.clone(), torch.tensor([0, 10, 2]))
    assert torch.equal(cache, torch.zeros(10, 2, 8))                    # nothing written
    with pytest.raises(ValueError, match="^slot_mapping must be"):
        rotary_write_kv(k, k, k, cos, sin, cache, cache.clone(), torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="^v must be"):
        rotary_write_kv(k, k, k.double(), cos, sin, cache, cache.clone(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="^sin must be"):
        rotary_write_kv(k, k, k, cos, sin[:2], cache, cache.clone(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="^v_cache must be"):
        rotary_write_kv(k, k, k, cos, sin, cache, torch.zeros(10, 2, 8, dtype=torch.bfloat16), torch.tensor([0, 1, 2]))

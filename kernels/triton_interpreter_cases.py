"""Triton kernels vs their torch references under TRITON_INTERPRET=1 (no GPU here).

Not collected by itself: kernels/test_triton_kernels.py runs this file in a fresh pytest process with
TRITON_INTERPRET=1 set before any kernel is decorated (Triton picks the interpreter at decoration time).
"""
import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "run through kernels/test_triton_kernels.py"

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from kernels.moe_reference import moe_reference  # noqa: E402
from kernels.paged_attention_reference import paged_attention_reference  # noqa: E402
from kernels.triton_fused_moe import fused_moe, fused_moe_kernel, moe_align_block_size  # noqa: E402
from kernels.triton_paged_attention import paged_attention_decode, paged_attention_decode_kernel  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}   # atol, rtol 0 (vLLM's fused MoE bf16)


def test_the_interpreter_really_runs():
    assert isinstance(fused_moe_kernel, InterpretedFunction)
    assert isinstance(paged_attention_decode_kernel, InterpretedFunction)


@pytest.mark.parametrize("E,block_m", [(4, 4), (3, 16)])
def test_moe_align_block_size(E, block_m):
    ids = torch.tensor([[0, 2], [2, -1], [2, 0], [1, 2], [-1, -1]])
    sorted_ids, expert_ids, num_post = moe_align_block_size(ids, block_m, E)
    numel = ids.numel()
    assert sorted_ids.shape == (numel + E * (block_m - 1),)
    flat = ids.flatten()
    counts = [int((flat == e).sum()) for e in range(E)]
    padded = [(c + block_m - 1) // block_m * block_m for c in counts]
    assert int(num_post) == sum(padded)
    start = 0
    for e in range(E):   # each expert's run: its slots in order, then padding; its blocks name it
        run = sorted_ids[start:start + padded[e]]
        assert run[:counts[e]].tolist() == (flat == e).nonzero().flatten().tolist()
        assert (run[counts[e]:] == numel).all()
        assert (expert_ids[start // block_m:(start + padded[e]) // block_m] == e).all()
        start += padded[e]
    assert (sorted_ids[start:] == numel).all()


MOE_CASES = {   # name: (M, E, top_k, K, I, config)
    "decode_M1": (1, 4, 2, 64, 32, None),
    "odd_sizes": (7, 5, 2, 48, 40, {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 2}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(MOE_CASES))
def test_fused_moe(case, dtype):
    M, E, top_k, K, I, config = MOE_CASES[case]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(M, K, generator=g) / 2).to(dtype)
    w1 = (torch.randn(E, 2 * I, K, generator=g) / K ** 0.5).to(dtype)
    w2 = (torch.randn(E, K, I, generator=g) / I ** 0.5).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(M)])
    weights = torch.rand(M, top_k, generator=g)
    if M > 1:
        ids[0, 1] = -1                    # a masked slot
        ids[1:, 0] = 0                    # expert 0 gets most tokens, some experts none
    out = fused_moe(x, w1, w2, weights, ids, config)
    ref = moe_reference(x.float(), w1.float(), w2.float(), ids, weights)
    assert out.dtype == dtype and out.shape == (M, K)
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=0)


def make_cache(num_blocks, S, Hkv, D, dtype, g):
    return (torch.randn(num_blocks, S, Hkv, D, generator=g).to(dtype),
            torch.randn(num_blocks, S, Hkv, D, generator=g).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Hq,Hkv,D,S", [(4, 2, 32, 16), (6, 2, 24, 8), (2, 2, 16, 32)])
def test_paged_attention_decode(Hq, Hkv, D, S, dtype):
    g = torch.Generator().manual_seed(1)
    num_blocks, B = 12, 3
    k_cache, v_cache = make_cache(num_blocks, S, Hkv, D, dtype, g)
    context_lens = torch.tensor([1, 2 * S + 5, 0], dtype=torch.int32)     # one token, several blocks, empty
    max_blocks = 4
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)        # scattered physical blocks
    block_tables = torch.full((B, max_blocks), -1, dtype=torch.int32)
    block_tables[0, 0] = perm[0]
    block_tables[1, :3] = perm[1:4]
    q = torch.randn(B, Hq, D, generator=g).to(dtype)
    scale = D ** -0.5
    out = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale, block_n=16)
    ref = paged_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)
    assert out.dtype == dtype and out.shape == (B, Hq, D)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=0)
    assert torch.equal(out[2].float(), torch.zeros(Hq, D))


def test_bad_inputs_name_the_field():
    q = torch.randn(2, 4, 16)
    k = torch.randn(4, 8, 3, 16)
    with pytest.raises(ValueError, match="Hkv dividing Hq"):
        paged_attention_decode(q, k, k, torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32), 1.0)
    k = torch.randn(4, 8, 2, 16)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        paged_attention_decode(q, k, k, torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, dtype=torch.int32), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        fused_moe(torch.randn(2, 16), torch.randn(2, 8, 16), torch.randn(2, 16, 3), torch.rand(2, 1),
                  torch.zeros(2, 1, dtype=torch.int64))


def test_dispatch_runs_the_triton_experts():
    from kernels.moe_dispatch import build_experts
    from kernels.placement import Rule
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(4, 64, 32, generator=g) / 6, torch.randn(4, 32, 32, generator=g) / 6
    x = torch.randn(3, 32, generator=g)
    ids, weights = torch.tensor([[0, 3], [3, -1], [1, 3]]), torch.rand(3, 2, generator=g)
    experts = build_experts(w1, w2, Rule("gpu-experts", "cpu", "triton", "bf16"))   # the interpreter runs on CPU tensors
    assert experts.kernel_name.startswith("triton/fused_moe bf16")
    out = experts.forward(x, ids, weights)
    ref = moe_reference(x.bfloat16().float(), w1.bfloat16().float(), w2.bfloat16().float(), ids, weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=TOL[torch.bfloat16], rtol=0)

"""Fused MoE for the GPU in OpenAI Triton: align by expert -> GEMM1 -> SiLU-and-mul -> GEMM2 x routed weight -> sum.

Legend: M tokens, K hidden (the GEMM1 reduction), N = 2I (stacked gate+up width), I intermediate,
        E experts, top_k slots per token, EM = padded slot count, BLOCK_M/N/K tile sizes.
Layouts: x [M, K]; w1 [E, N, K] (gate rows over up rows, expert-major); w2 [E, K, I];
         topk_ids [M, top_k] int (-1 = masked slot), topk_weights [M, top_k] fp32.
dtypes: fp16 / bf16 (or fp32) activations and weights, fp32 accumulation, output in x's dtype.
The reference is kernels/moe_reference.py. Without a GPU this runs under TRITON_INTERPRET=1, where a
bf16 tl.dot is wrong (triton-lang/triton #11584): operands are upcast to fp32 there.
"""
import os

import torch
import triton
import triton.language as tl

DEFAULT_CONFIG = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1}


def moe_align_block_size(topk_ids: torch.Tensor, block_m: int, num_experts: int):
    """Sort the M*top_k slots by expert and pad each expert's run to a multiple of block_m.

    Returns sorted_token_ids [M*top_k + E*(block_m-1)] (slot ids; padding = M*top_k), expert_ids
    [max blocks] (the expert of each block of block_m sorted slots; E past the end) and
    num_tokens_post_padded [1]. Masked slots (-1) are left out. Device-side ops only: no host sync.
    """
    numel = topk_ids.numel()
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)                               # [numel]
    key = torch.where(flat >= 0, flat, num_experts)                           # masked -> bucket E
    counts = torch.bincount(key, minlength=num_experts + 1)                   # [E+1]
    padded = (counts[:num_experts] + block_m - 1) // block_m * block_m        # [E]
    ends = torch.cumsum(padded, 0)                                            # [E]
    starts = ends - padded                                                    # [E]
    order = torch.argsort(key, stable=True)                                   # [numel] slots by expert
    sorted_key = key[order]                                                   # [numel]
    first = torch.cumsum(counts, 0) - counts                                  # [E+1] first sorted index
    rank = torch.arange(numel, device=dev) - first[sorted_key]                # [numel] rank within expert
    max_len = numel + num_experts * (block_m - 1)
    dump = max_len                                                            # masked slots land here
    starts = torch.cat([starts, starts.new_full((1,), dump)])                 # [E+1]
    pos = torch.where(sorted_key < num_experts, starts[sorted_key] + rank, dump)   # [numel] destination
    sorted_token_ids = torch.full((max_len + 1,), numel, dtype=torch.int64, device=dev)
    sorted_token_ids.scatter_(0, pos, order)
    block_starts = torch.arange(0, max_len, block_m, device=dev)              # [max blocks]
    expert_ids = torch.searchsorted(ends, block_starts, right=True)           # [max blocks] in [0, E]
    return sorted_token_ids[:max_len], expert_ids, ends[-1:].clone()


@triton.jit
def fused_moe_kernel(
    a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    N, K, EM, num_valid_tokens,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
    MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr, UPCAST_FP32: tl.constexpr,
):
    """C[slot, :] = A[slot // top_k, :] @ B[expert].T (x routed weight): one [BLOCK_M, BLOCK_N] tile per program."""
    # Grouped order of the tiles: GROUP_SIZE_M row tiles share each column tile of B while it is in L2.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    if pid_m * BLOCK_SIZE_M >= tl.load(num_tokens_post_padded_ptr):
        return

    offs_token_id = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_token = tl.load(sorted_token_ids_ptr + offs_token_id)               # [BM] slot ids (padding = numel)
    token_mask = offs_token < num_valid_tokens
    off_expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)                 # every row of the tile: one expert
    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (offs_token[:, None] // top_k * stride_am + offs_k[None, :] * stride_ak)   # [BM, BK]
    b_ptrs = b_ptr + off_expert * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)  # [BK, BN]

    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=token_mask[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if UPCAST_FP32:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32))
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    if MUL_ROUTED_WEIGHT:
        w = tl.load(topk_weights_ptr + offs_token, mask=token_mask, other=0.0)   # [BM] fp32
        acc = acc * w[:, None]
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_token[:, None] + stride_cn * offs_cn[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=token_mask[:, None] & (offs_cn[None, :] < N))


@triton.jit
def silu_and_mul_kernel(x_ptr, out_ptr, I, stride_x, stride_out, BLOCK: tl.constexpr):
    """out[row, :] = silu(x[row, :I]) * x[row, I:2I], in fp32."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def invoke_fused_moe_kernel(a, b, c, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
                            mul_routed_weight: bool, top_k: int, config: dict) -> None:
    EM = sorted_token_ids.shape[0]
    if topk_weights.numel() < config["BLOCK_SIZE_M"]:   # few slots: at most one non-empty tile per slot
        EM = min(EM, topk_weights.numel() * config["BLOCK_SIZE_M"])
    N, K = b.shape[1], b.shape[2]
    grid = (triton.cdiv(EM, config["BLOCK_SIZE_M"]) * triton.cdiv(N, config["BLOCK_SIZE_N"]),)
    fused_moe_kernel[grid](
        a, b, c, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
        N, K, EM, topk_weights.numel(),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
        MUL_ROUTED_WEIGHT=mul_routed_weight, top_k=top_k, UPCAST_FP32=_upcast(a.dtype), **config)


def _upcast(dtype: torch.dtype) -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" and dtype == torch.bfloat16


def fused_moe(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """x [M, K], w1 [E, 2I, K], w2 [E, K, I], topk_weights/ids [M, top_k] -> [M, K] in x's dtype."""
    check_fused_moe_inputs(x, w1, w2, topk_weights, topk_ids)
    config = config or DEFAULT_CONFIG
    M, top_k = topk_ids.shape
    E, N, K = w1.shape
    I = N // 2
    sorted_token_ids, expert_ids, num_tokens_post_padded = moe_align_block_size(topk_ids, config["BLOCK_SIZE_M"], E)
    weights = topk_weights.float().contiguous()                               # [M, top_k]
    cache1 = torch.zeros(M * top_k, N, dtype=x.dtype, device=x.device)        # [M*top_k, 2I]; masked slots stay 0
    invoke_fused_moe_kernel(x, w1, cache1, weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
                            False, top_k, config)
    cache2 = torch.empty(M * top_k, I, dtype=x.dtype, device=x.device)        # [M*top_k, I]
    silu_block = min(1024, triton.next_power_of_2(I))
    silu_and_mul_kernel[(M * top_k, triton.cdiv(I, silu_block))](cache1, cache2, I, cache1.stride(0),
                                                                  cache2.stride(0), BLOCK=silu_block)
    cache3 = torch.zeros(M * top_k, K, dtype=torch.float32, device=x.device)  # [M*top_k, K]; masked slots stay 0
    invoke_fused_moe_kernel(cache2, w2, cache3, weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
                            True, 1, config)
    return cache3.view(M, top_k, K).sum(1).to(x.dtype)                        # [M, K]


def check_fused_moe_inputs(x, w1, w2, topk_weights, topk_ids) -> None:
    if x.dim() != 2 or w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"x must be [M, K], w1 [E, 2I, K], w2 [E, K, I]; got {tuple(x.shape)}, "
                         f"{tuple(w1.shape)}, {tuple(w2.shape)}")
    E, N, K = w1.shape
    if N % 2 or x.shape[1] != K or tuple(w2.shape) != (E, K, N // 2):
        raise ValueError(f"w1 [E, 2I, K] = {tuple(w1.shape)} and w2 [E, K, I] = {tuple(w2.shape)} do not match "
                         f"x [M, K] = {tuple(x.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids and topk_weights must both be [M={x.shape[0]}, top_k]; got "
                         f"{tuple(topk_ids.shape)}, {tuple(topk_weights.shape)}")
    if not (x.is_contiguous() and w1.is_contiguous() and w2.is_contiguous()):
        raise ValueError("x, w1 and w2 must be contiguous")
    if x.dtype != w1.dtype or w1.dtype != w2.dtype:
        raise ValueError(f"x, w1 and w2 must share a dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")

"""Fused CPU MoE (every variant this CPU runs, and the torch fallback) against the torch references."""
import pytest
import torch
import torch.nn.functional as F

from kernels import build, cpu_moe
from kernels.cpu_features import supported_variants
from kernels.cpu_moe import CpuExperts
from kernels.moe_reference import moe_reference
from kernels.quantize import EXPERT_DTYPES, dequantize_matrix, fake_quantize_activation

KERNELS = [v.name for v in supported_variants()] + ["torch"]
# Against kernels/moe_reference.py with dequantized weights and fp32 activations: (max error / max |ref|, norm ratio).
# They include the activation rounding: bf16, 16-bit integers for int8 weights, 8-bit integers for int4 weights.
SPEC_TOL = {"fp32": (1e-5, 1e-6), "bf16": (1e-2, 5e-3), "int8": (5e-4, 2e-4), "int4": (6e-2, 2.5e-2)}
TORCH_TOL = {"int8": (3e-2, 1.5e-2)}   # torch's int8 op: bf16 activations, bf16 scales and bf16 outputs


def make_weights(E, H, I, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, 2 * I, H, generator=g) / H ** 0.5, torch.randn(E, H, I, generator=g) / I ** 0.5


def make_routing(T, E, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    return ids, torch.rand(T, K, generator=g)


def semantics_reference(x, w13, w2, ids, weights, expert_dtype, G):
    """The kernel's exact semantics: dequantized weights, and activations rounded as the kernel rounds them."""
    w13d, w2d = dequantize_matrix(w13, expert_dtype, G), dequantize_matrix(w2, expert_dtype, G)
    I = w2.shape[2]
    xq = fake_quantize_activation(x, expert_dtype, G)                        # [T, H]
    out = torch.zeros(x.shape[0], w2.shape[1])
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if e < 0:
                continue
            h = xq[t] @ w13d[e].t()                                          # [2I]
            a = fake_quantize_activation((F.silu(h[:I]) * h[I:])[None], expert_dtype, G)[0]
            out[t] += weights[t, k] * (a @ w2d[e].t())
    return out


def check(y, x, w13, w2, ids, weights, expert_dtype, G, kernel):
    ref = moe_reference(x.float(), dequantize_matrix(w13, expert_dtype, G), dequantize_matrix(w2, expert_dtype, G),
                        ids, weights)
    scale = ref.abs().max().clamp_min(1e-6)
    max_tol, norm_tol = (TORCH_TOL if kernel == "torch" else SPEC_TOL).get(expert_dtype, SPEC_TOL[expert_dtype])
    err = (y.float() - ref).abs().max() / scale
    assert err <= max_tol, f"{kernel} {expert_dtype}: max error {err:.3g} of max |ref| > {max_tol}"
    assert (y.float() - ref).norm() <= norm_tol * ref.norm() + 1e-6
    if kernel != "torch":   # the fused kernel rounds activations exactly like fake_quantize_activation
        sem = semantics_reference(x.float(), w13, w2, ids, weights, expert_dtype, G)
        torch.testing.assert_close(y.float(), sem, atol=2e-3 * float(scale), rtol=0)


CASES = {   # name: (T, E, K, H, I, G)
    "decode_T1": (1, 8, 2, 64, 32, 32),
    "odd_sizes": (5, 6, 2, 72, 40, 32),            # H, I not multiples of 16 / 32 / the group
    "prefill_33": (33, 8, 3, 96, 48, 64),           # tiles of 8, 4, 2, 1 tokens
    "group_128": (9, 4, 2, 160, 136, 128),          # int4 pads K up to whole groups
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("expert_dtype", EXPERT_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(kernel, expert_dtype, case):
    T, E, K, H, I, G = CASES[case]
    w13, w2 = make_weights(E, H, I)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(1))
    ids, weights = make_routing(T, E, K)
    experts = CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel=kernel)
    y = experts.forward(x, ids, weights)
    assert y.shape == (T, H) and y.dtype == x.dtype
    check(y, x, w13, w2, ids, weights, expert_dtype, G, kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("expert_dtype", ["bf16", "int8", "int4"])
def test_routing_edge_cases(kernel, expert_dtype):
    """All tokens on one expert, idle experts, masked slots (-1), a fully masked token, bf16 input."""
    T, E, K, H, I, G = 19, 8, 3, 64, 48, 32
    w13, w2 = make_weights(E, H, I, seed=2)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(3))
    experts = CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel=kernel)
    ids = torch.full((T, K), 5)
    ids[:, 1] = -1                                  # masked slot on every token
    ids[:, 2] = torch.arange(T) % 2                 # experts 2, 3, 4, 6, 7 get nothing
    ids[4] = -1                                     # a token with every slot masked -> zeros
    weights = torch.rand(T, K, generator=torch.Generator().manual_seed(4))
    y = experts.forward(x, ids, weights)
    assert torch.equal(y[4], torch.zeros(H))
    check(y, x, w13, w2, ids, weights, expert_dtype, G, kernel)
    yb = experts.forward(x.bfloat16(), ids.to(torch.int32), weights)
    assert yb.dtype == torch.bfloat16
    all_masked = experts.forward(x, torch.full((T, K), -1), weights)
    assert torch.equal(all_masked, torch.zeros(T, H))
    assert experts.forward(x[:0], ids[:0], weights[:0]).shape == (0, H)


@pytest.mark.parametrize("expert_dtype", EXPERT_DTYPES)
def test_independent_of_thread_count(expert_dtype):
    T, E, K, H, I, G = 24, 8, 2, 128, 96, 32
    w13, w2 = make_weights(E, H, I, seed=5)
    x = torch.randn(T, H)
    ids, weights = make_routing(T, E, K, seed=6)
    experts = CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel=KERNELS[0])
    results = []
    for n in (1, 2, 3):
        with build.num_threads(n):
            results.append(experts.forward(x, ids, weights))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "torch"])
@pytest.mark.parametrize("expert_dtype", EXPERT_DTYPES)
def test_next_block_prefetch_changes_no_bit(kernel, expert_dtype):
    """The benchmark's in-run baseline switches the prefetch off: the same results, only the speed may differ."""
    T, E, K, H, I, G = 21, 4, 2, 160, 200, 32
    w13, w2 = make_weights(E, H, I, seed=13)
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(14))
    ids, weights = make_routing(T, E, K, seed=15)
    experts = CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel=kernel)
    on = experts.forward(x, ids, weights)
    experts._ext.set_next_block_prefetch(False)
    try:
        off = experts.forward(x, ids, weights)
    finally:
        experts._ext.set_next_block_prefetch(True)
    assert torch.equal(on, off)


AMX = "amx" in KERNELS


@pytest.mark.skipif(not AMX, reason="this CPU has no AMX-INT8: the AMX tiles cannot run here")
@pytest.mark.parametrize("expert_dtype", ["int8", "int4"])
@pytest.mark.parametrize("T, E, K, H, I, G", [
    (40, 2, 1, 100, 72, 32),     # 20 tokens per expert: one AMX tile + VNNI remainder; K not a multiple of 64
    (37, 3, 2, 520, 136, 8),     # int4 groups of 8 (one line per tile step)
    (50, 2, 2, 300, 200, 128),   # int4 groups spanning two tile steps
    (48, 1, 1, 4096, 32, 64),    # rows of 4 KB multiples (the L1-set case the odd row stride avoids)
])
def test_amx_tiles_match_the_vnni_tiles_bit_for_bit(expert_dtype, T, E, K, H, I, G):
    """Integer sums are exact, so AMX and VNNI must agree exactly; a token alone must match the batch too."""
    module = build.load_variant("amx")
    w13, w2 = make_weights(E, H, I, seed=7)
    x = 3 * torch.randn(T, H, generator=torch.Generator().manual_seed(8))
    ids, weights = make_routing(T, E, K, seed=9)
    experts = CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel="amx")
    before = module.amx_tile_calls()
    with_amx = experts.forward(x, ids, weights)
    assert module.amx_tile_calls() > before, "the AMX tiles did not run"
    module.set_amx(False)
    try:
        vnni = experts.forward(x, ids, weights)
    finally:
        module.set_amx(True)
    assert torch.equal(with_amx, vnni), f"max difference {(with_amx - vnni).abs().max():.3g}"
    alone = torch.cat([experts.forward(x[t:t + 1], ids[t:t + 1], weights[t:t + 1]) for t in range(T)])
    assert torch.equal(with_amx, alone)
    check(with_amx, x, w13, w2, ids, weights, expert_dtype, G, "amx")


@pytest.mark.skipif(not {"avx2", "avx512_vnni"} <= set(KERNELS), reason="needs a CPU that runs both AVX2 and AVX-512 VNNI")
@pytest.mark.parametrize("expert_dtype", EXPERT_DTYPES)
@pytest.mark.parametrize("T, E, K, H, I, G", [
    (1, 4, 2, 64, 96, 32),        # decode: one token
    (37, 8, 2, 200, 136, 8),      # int4 groups of 8; tiles of 8, 4, 2 and 1 token
    (19, 3, 3, 96, 80, 40),       # int4 groups of 40: the s16 sums widen after 32 k and at the group's end
    (9, 2, 1, 1100, 48, 128),     # int8 flushes every 256 k and a partial last one; int4 groups of 128
])
def test_avx2_tiles_match_the_avx512_tiles_bit_for_bit(expert_dtype, T, E, K, H, I, G):
    """The AVX2 tiles repeat the AVX-512 (non-BF16) tiles' arithmetic on 8-lane halves: same bits, every dtype."""
    w13, w2 = make_weights(E, H, I, seed=10)
    x = 3 * torch.randn(T, H, generator=torch.Generator().manual_seed(11))
    ids, weights = make_routing(T, E, K, seed=12)
    avx2, avx512 = (CpuExperts.from_weights(w13, w2, expert_dtype, group_size=G, kernel=k).forward(x, ids, weights)
                    for k in ("avx2", "avx512_vnni"))
    assert torch.equal(avx2, avx512), f"max difference {(avx2 - avx512).abs().max():.3g}"


def test_amx_cannot_be_switched_on_without_it():
    module = build.load_variant("generic")
    assert not module.amx_enabled() and module.amx_tile_calls() == 0
    with pytest.raises(ValueError, match="AMX tiles are not available"):
        module.set_amx(True)


def test_token_chunks_give_the_same_result(monkeypatch):
    w13, w2 = make_weights(4, 64, 32)
    x = torch.randn(11, 64)
    ids, weights = make_routing(11, 4, 2)
    experts = CpuExperts.from_weights(w13, w2, "int8", kernel=KERNELS[0])
    whole = experts.forward(x, ids, weights)
    monkeypatch.setattr(cpu_moe, "MAX_TOKENS_PER_CALL", 4)
    assert torch.equal(experts.forward(x, ids, weights), whole)


def test_reports_what_runs():
    w13, w2 = make_weights(4, 64, 32)
    experts = CpuExperts.from_weights(w13, w2, "int4", group_size=32)
    assert experts.expert_dtype == "int4" and experts.kernel_name.startswith("fused_cpu/" + KERNELS[0])
    # int4: 0.5 byte per weight (rows and K padded) + a bf16 scale and a bf16 min per group of 32
    assert experts.nbytes == 4 * (64 * 64 + 64 * 32) // 2 + 4 * (64 * 64 + 64 * 32) // 32 * 4
    assert "avx" in cpu_moe.describe_cpu() or "generic" in cpu_moe.describe_cpu()


@pytest.mark.parametrize("kernel", [KERNELS[0], "torch"])
def test_bad_input_names_the_field(kernel):
    w13, w2 = make_weights(4, 64, 32)
    experts = CpuExperts.from_weights(w13, w2, "int8", kernel=kernel)
    x = torch.randn(2, 64)
    ids, weights = make_routing(2, 4, 2)
    with pytest.raises(ValueError, match=r"topk_ids\[1, 0\] = 4"):
        experts.forward(x, torch.tensor([[0, 1], [4, 2]]), weights)
    with pytest.raises(ValueError, match="topk_ids"):
        experts.forward(x, torch.tensor([[0, -2], [1, 2]]), weights)
    with pytest.raises(ValueError, match="x must be"):
        experts.forward(torch.randn(2, 63), ids, weights)
    with pytest.raises(ValueError, match="topk_weights"):
        experts.forward(x, ids, weights[:, :1])


def test_bad_weights_name_the_field():
    w13, w2 = make_weights(4, 64, 32)
    with pytest.raises(ValueError, match="w2 must be"):
        CpuExperts.from_weights(w13, w2[:, :, :16], "int8")
    with pytest.raises(ValueError, match="w13 must be"):
        CpuExperts.from_weights(w13[0], w2, "int8")
    with pytest.raises(ValueError, match="expert_dtype"):
        CpuExperts.from_weights(w13, w2, "int3")
    with pytest.raises(ValueError, match="group_size"):
        CpuExperts.from_weights(w13, w2, "int4", group_size=20)
    with pytest.raises(ValueError, match="kernel variant 'avx9000' unknown"):
        CpuExperts.from_weights(w13, w2, "int8", kernel="avx9000")
    with pytest.raises(ValueError, match="group_size must be one of"):
        CpuExperts.from_weights(w13, w2, "int4", group_size=16, kernel="torch")


def test_cached_build_loads_without_the_compiler(monkeypatch):
    def no_compiler(**kwargs):
        raise AssertionError("a cached build must not run the compiler")
    monkeypatch.setattr(build.cpp_extension, "load", no_compiler)
    module = build._load(KERNELS[0], build=True)   # bypass the in-process cache
    assert module.tiles in ("avx512", "avx2", "portable")


def test_falls_back_to_torch_when_nothing_builds(monkeypatch, caplog):
    from kernels import build

    def no_build(name, *args):
        raise build.BuildError(f"CPU MoE kernel {name} is not built")
    monkeypatch.setattr(build, "load_variant", no_build)
    cpu_moe.best_variant.cache_clear()
    try:
        w13, w2 = make_weights(4, 64, 32)
        experts = CpuExperts.from_weights(w13, w2, "int8")
        assert experts.kernel_name.startswith("torch/") and "no fused CPU MoE kernel" in caplog.text
        assert "torch (no extension)" in cpu_moe.describe_cpu()
    finally:
        cpu_moe.best_variant.cache_clear()

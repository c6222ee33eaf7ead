"""CpuLinear (the CPU extension's dense linear) against x @ dequantized(W).T + b, every variant this CPU runs."""
import pytest
import torch
from torch import nn

from kernels import build
from kernels.cpu_features import supported_variants
from kernels.cpu_linear import CpuLinear
from kernels.quantize import dequantize_matrix, fake_quantize_activation

VARIANTS = [v.name for v in supported_variants()]
TOL = {"fp32": 1e-5, "bf16": 1e-5, "int8": 1e-5}   # relative to max |ref|: the semantics are exact up to fp32 sums


def reference(x, w, b, dtype):
    act = fake_quantize_activation(x, dtype, 32) if dtype == "int8" else x   # bf16 weights take fp32 inputs
    return act @ dequantize_matrix(w, dtype, 32).T + (0 if b is None else b)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("T,N,K,bias", [(1, 32, 16, False), (3, 100, 70, True), (17, 576, 576, False), (9, 4, 33, True)])
def test_matches_reference(variant, dtype, T, N, K, bias):
    g = torch.Generator().manual_seed(T * N + K)
    w, x = torch.randn(N, K, generator=g) / K ** 0.5, torch.randn(T, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    out = CpuLinear(w, b, dtype, variant)(x)
    ref = reference(x, w, b, dtype)
    assert out.shape == (T, N)
    assert (out - ref).abs().max() <= TOL[dtype] * ref.abs().max()


def test_rows_do_not_depend_on_the_batch_or_threads():
    g = torch.Generator().manual_seed(0)
    lin = CpuLinear(torch.randn(300, 200, generator=g), None, "bf16")
    x = torch.randn(23, 200, generator=g)
    full = lin(x)
    assert all(torch.equal(full[i:i + 1], lin(x[i:i + 1])) for i in range(23))
    for n in (1, 2, 3):
        with build.num_threads(n):
            assert torch.equal(full, lin(x))


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_rows_do_not_depend_on_the_batch_or_threads_with_the_best_variant(dtype):
    g = torch.Generator().manual_seed(1)
    lin = CpuLinear(torch.randn(96, 4096, generator=g), None, dtype, VARIANTS[0])   # int8 on AMX: 16-token tiles
    x = torch.randn(37, 4096, generator=g)
    full = lin(x)
    assert all(torch.equal(full[i:i + 1], lin(x[i:i + 1])) for i in range(37))
    with build.num_threads(1):
        assert torch.equal(full, lin(x))


@pytest.mark.skipif(not {"avx2", "avx512_vnni"} <= set(VARIANTS), reason="needs a CPU that runs both AVX2 and AVX-512")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_avx2_tiles_give_the_avx512_bits(dtype):
    """bf16 dense linears keep fp32 activations, so even the BF16 variant's results match the AVX2 tiles."""
    g = torch.Generator().manual_seed(2)
    weight, x = torch.randn(300, 200, generator=g), torch.randn(13, 200, generator=g)
    avx2 = CpuLinear(weight, None, dtype, "avx2")(x)
    assert all(torch.equal(avx2, CpuLinear(weight, None, dtype, v)(x)) for v in VARIANTS if v.startswith(("avx512", "amx")))


def test_from_linear_keeps_shape_and_bias_and_checks_input():
    linear = nn.Linear(40, 24)
    lin = CpuLinear.from_linear(linear, "fp32")
    x = torch.randn(2, 3, 40)
    torch.testing.assert_close(lin(x), linear(x), atol=1e-5, rtol=1e-5)
    assert lin(torch.empty(0, 40)).shape == (0, 24)
    with pytest.raises(ValueError, match="40 features"):
        lin(torch.randn(2, 39))
    with pytest.raises(ValueError, match="dtype must be one of"):
        CpuLinear(linear.weight, None, "int4")

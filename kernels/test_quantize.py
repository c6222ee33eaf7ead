"""Quantize / dequantize round trips and the packed tile layouts (kernels/quantize.py)."""
import pytest
import torch

from kernels import quantize


def weights(N=48, K=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g)   # rows of different ranges
    w[3] = 0                                                               # an all-zero row
    w[5] += 2.0                                                            # an offset row (asymmetric)
    return w


def test_int8_round_trip():
    w = weights()
    q, scale = quantize.quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (w.shape[0],)
    assert q.abs().max() <= 127 and (q[3] == 0).all()
    err = (quantize.dequantize_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()                      # at most half a step
    assert torch.equal(q.abs().amax(1)[scale > 0][[0, 1, 2, 4]], torch.full((4,), 127, dtype=torch.int8))


@pytest.mark.parametrize("G", [32, 64])
def test_int4_round_trip(G):
    w = weights(K=100)                                                     # K not a multiple of G
    q, scale, wmin = quantize.quantize_int4(w, G)
    Kp = (100 + G - 1) // G * G
    assert q.shape == (48, Kp) and scale.shape == wmin.shape == (48, Kp // G) and q.max() <= 15
    deq = quantize.dequantize_int4(q, scale, wmin, k=100)
    assert deq.shape == w.shape
    groups = torch.nn.functional.pad(w, (0, Kp - 100)).unflatten(-1, (Kp // G, G))
    span = (groups.amax(-1) - groups.amin(-1))                           # [N, Kp/G]
    step = span / 15
    err = (torch.nn.functional.pad(deq - w, (0, Kp - 100)).unflatten(-1, (Kp // G, G))).abs().amax(-1)
    assert (err <= step / 2 + span * 1e-2 + 1e-6).all()                  # half a step, plus bf16 rounding of scale/min
    assert (deq[3] == 0).all()


def test_int4_uses_16_levels_on_an_offset_range():
    w = 2.0 + torch.rand(4, 64, generator=torch.Generator().manual_seed(1))   # all in [2, 3]: symmetric would waste half
    err = (quantize.dequantize_matrix(w, "int4", 32) - w).abs().max()
    assert err <= 0.5 / 15 * 1.05 + 2 * 2.0 / 256                           # half a step of range/15, + bf16 of min


def test_bad_group_size():
    for bad in (0, 12, 33, -8, 32.0):
        with pytest.raises(ValueError, match="group_size must be a positive multiple of 8"):
            quantize.quantize_int4(weights(), bad)


def unpack(packed: dict, dtype: str, rows: int, kp: int, G: int) -> torch.Tensor:
    """Inverse of quantize.pack_matrix's reordering: the [rows, kp] values the tiles see."""
    q = packed["q"]
    if dtype == "fp32":
        return q.permute(0, 2, 1).reshape(rows, kp)
    if dtype in ("bf16", "int8"):
        return q.permute(0, 2, 1, 3).reshape(rows, kp)
    lo, hi = q & 15, q >> 4                                                # [NB, Kp/8, 16, 4]
    u = torch.stack([lo, hi], 2)                                           # [NB, Kp/8, 2, 16, 4]
    return u.permute(0, 3, 1, 2, 4).reshape(rows, kp)


@pytest.mark.parametrize("dtype", quantize.EXPERT_DTYPES)
def test_packing_layout(dtype):
    G = 32
    w = weights(N=40, K=70)
    rows, kp = 48, quantize.round_up(70, quantize.k_multiple(dtype, G))
    packed = quantize.pack_matrix(w, dtype, rows, kp, G)
    values = unpack(packed, dtype, rows, kp, G)
    assert (values[40:] == 0).all()                                       # padded rows
    if dtype == "int4":
        q, scale, wmin = quantize.quantize_int4(w, G)
        assert torch.equal(values[:40], q)
        sm = packed["scale"]                                              # [NB, Kp/G, 2, 16]
        assert torch.equal(sm[:, :, 0].permute(0, 2, 1).reshape(rows, -1)[:40], scale)
        assert torch.equal(sm[:, :, 1].permute(0, 2, 1).reshape(rows, -1)[:40], wmin)
    elif dtype == "int8":
        q, scale = quantize.quantize_int8(w)
        assert torch.equal(values[:40, :70], q) and (values[:, 70:] == 0).all()
        assert torch.equal(packed["scale"][:40], scale) and (packed["scale"][40:] == 0).all()
    else:
        assert torch.equal(values[:40, :70].float(), w.to(values.dtype).float())


@pytest.mark.parametrize("dtype,G,bits", [("int8", 0, 16), ("int4", 32, 8)])
def test_activation_rounding(dtype, G, bits):
    a = weights(N=6, K=96)
    fq = quantize.fake_quantize_activation(a, dtype, G)
    qmax = 2 ** (bits - 1) - 1
    span = a.abs().amax(-1, keepdim=True) if dtype == "int8" else a.unflatten(-1, (3, 32)).abs().amax(-1).repeat_interleave(32, -1)
    assert ((fq - a).abs() <= span / qmax / 2 + 1e-7).all()
    assert torch.equal(quantize.fake_quantize_activation(a, "bf16", G), a.bfloat16().float())

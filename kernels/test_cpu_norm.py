"""CPU RMSNorm (every extension variant this CPU runs) against the torch reference."""
import pytest
import torch

from kernels.cpu_features import supported_variants
from kernels.cpu_norm import rms_norm, rms_norm_reference

VARIANTS = [v.name for v in supported_variants()]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T,H", [(1, 576), (16, 576), (7, 2048), (3, 5), (300, 129)])   # H below / not a multiple of 16
def test_matches_reference(variant, T, H):
    g = torch.Generator().manual_seed(T * H)
    x = torch.randn(T, H, generator=g) * 4
    x[0, :3] = torch.tensor([60.0, -45.0, 0.0])[:min(3, H)]      # an outlier channel, as LLM hidden states have
    w = torch.randn(H, generator=g)
    out = rms_norm(x, w, 1e-5, variant=variant)
    torch.testing.assert_close(out, rms_norm_reference(x, w, 1e-5), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_do_not_depend_on_the_batch(variant):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(16, 576, generator=g), torch.randn(576, generator=g)
    batch = rms_norm(x, w, 1e-6, variant=variant)
    for t in (0, 7, 15):
        assert torch.equal(rms_norm(x[t:t + 1].contiguous(), w, 1e-6, variant=variant), batch[t:t + 1])


def test_zero_row_gives_zeros_not_nan():
    out = rms_norm(torch.zeros(2, 64), torch.ones(64), 1e-6)
    assert torch.equal(out, torch.zeros(2, 64))


@pytest.mark.parametrize("x,w,field", [
    (torch.randn(4, 8, dtype=torch.float64), torch.randn(8), "x"),
    (torch.randn(2, 4, 8), torch.randn(8), "x"),
    (torch.randn(8, 4).t(), torch.randn(8), "x"),
    (torch.randn(4, 8), torch.randn(7), "weight"),
    (torch.randn(4, 8), torch.randn(8, dtype=torch.bfloat16), "weight"),
])
def test_bad_input_names_the_field(x, w, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        rms_norm(x, w, 1e-6)

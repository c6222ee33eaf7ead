"""CPU argmax (every extension variant this CPU runs) against torch.argmax."""
import pytest
import torch

from kernels.cpu_argmax import argmax_rows
from kernels.cpu_features import supported_variants

VARIANTS = [v.name for v in supported_variants()]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("R,V", [(1, 49152), (16, 49152), (5, 151936), (3, 17), (2, 5), (4, 1)])   # V below / not a multiple of 16
def test_matches_torch(variant, R, V):
    x = torch.randn(R, V, generator=torch.Generator().manual_seed(R * V))
    assert torch.equal(argmax_rows(x, variant=variant), x.argmax(-1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_ties_nans_and_infinities_as_torch(variant):
    V = 100
    rows = torch.full((8, V), -1.0)
    rows[0, [40, 7, 93]] = 5.0                      # ties in different lanes: the first index
    rows[1, [3, 19, 35]] = 5.0                      # ties in the same lane
    rows[2, [10, 98]] = 5.0                         # a tie between a lane and the tail
    rows[3, 97] = 6.0                               # the maximum in the tail
    rows[4, [20, 60]] = float("nan")                # NaN counts as the maximum, the first one wins
    rows[4, 5] = float("inf")
    rows[5] = float("-inf")                         # all -inf: index 0
    rows[6, 30] = float("inf")
    rows[6, 96] = float("nan")                      # a NaN in the tail only
    rows[7] = float("-inf")
    rows[7, 99] = -3.0                              # everything banned but the last token
    assert torch.equal(argmax_rows(rows, variant=variant), rows.argmax(-1))


@pytest.mark.parametrize("logits", [torch.randn(4, 8, dtype=torch.float64), torch.randn(8), torch.randn(8, 4).t(),
                                    torch.randn(3, 0)])
def test_bad_input_names_logits(logits):
    with pytest.raises(ValueError, match="logits"):
        argmax_rows(logits)

"""build_experts picks the operator a placement rule asks for; the quality tool on a tiny Mixtral."""
import json

import pytest
import torch

from kernels import quality
from kernels.cpu_moe import CpuExperts
from kernels.moe_dispatch import DeviceExperts, build_experts
from kernels.moe_reference import moe_reference
from kernels.moe_torch import TorchExperts
from kernels.placement import Placement, PlacementError, Rule
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator().manual_seed(0)
    E, H, I, T, K = 4, 64, 32, 6, 2
    w13, w2 = torch.randn(E, 2 * I, H, generator=g) / 8, torch.randn(E, H, I, generator=g) / 6
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    return w13, w2, x, ids, torch.rand(T, K, generator=g)


def test_rules_choose_the_operator(weights):
    w13, w2, x, ids, topk_w = weights
    ref = moe_reference(x, w13, w2, ids, topk_w)
    experts = build_experts(w13, w2, Placement.load(None).resolve("model.layers.0.mlp.experts"))
    assert isinstance(experts, CpuExperts) and experts.expert_dtype == "int8"
    torch.testing.assert_close(experts.forward(x, ids, topk_w), ref, atol=2e-2, rtol=0)
    override = build_experts(w13, w2, Rule("r", "cpu", "fused_cpu", "int8"), expert_dtype="bf16")
    assert override.expert_dtype == "bf16"
    torch_experts = build_experts(w13, w2, Rule("r", "cpu", "torch"))
    assert isinstance(torch_experts, TorchExperts) and torch_experts.expert_dtype == "fp32"
    torch.testing.assert_close(torch_experts.forward(x, ids, topk_w), ref)
    device = build_experts(w13, w2, Rule("r", "cpu", "torch"), expert_dtype="bf16")
    assert isinstance(device, TorchExperts) and "bf16" in device.kernel_name
    on_device = DeviceExperts(w13, w2, "cpu", "fp32", "torch")   # what op torch on a GPU runs
    torch.testing.assert_close(on_device.forward(x, ids, topk_w), ref)
    for experts in (experts, torch_experts, on_device):
        assert experts.nbytes > 0 and experts.kernel_name


def test_quantized_experts_on_a_gpu_rule_are_refused(weights):
    w13, w2, *_ = weights
    with pytest.raises(PlacementError, match="rule 'attn-gpu': expert_dtype 'int4' is not available for op triton"):
        build_experts(w13, w2, Rule("attn-gpu", "cuda:0", "triton", "int4"))


def test_quality_tool_on_a_tiny_mixtral(tmp_path, capsys):
    model = build_tiny_model("mixtral", str(tmp_path / "mixtral"))
    out = tmp_path / "q.json"
    assert quality.main(["--model", model, "--dtypes", "fp32,int8,int4", "--group-size", "32", "--tokens", "48",
                         "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "top-1 agree" in table and "int4(g32)" in table
    result = json.loads(out.read_text())
    assert result["expert_layers"] == 2 and result["tokens"] == 48
    fp32, int8, int4 = (result["dtypes"][d] for d in ("fp32", "int8", "int4"))
    # fp32 experts in the extension vs the torch reference: the same sums in another order (logits within ~1e-6)
    assert fp32["top1_agreement"] == 1.0 and 0 <= fp32["mean_kl"] < 1e-10
    assert int8["mean_kl"] < int4["mean_kl"] and int8["top1_agreement"] >= 0.95
    assert quality.main(["--model", str(tmp_path / "nothing")]) == 2

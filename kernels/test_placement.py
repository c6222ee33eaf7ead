"""Placement rules: first match wins, device fallback, and errors that name the rule and the key."""
import textwrap

import pytest

from kernels.placement import PLACEMENTS, Placement, PlacementError

ENGINE_MODULES = ["model.embed_tokens", "model.layers.0.self_attn", "model.layers.0.mlp.gate",
                  "model.layers.0.mlp.experts", "model.layers.0.mlp.shared_expert", "model.layers.17.mlp.experts",
                  "model.norm", "lm_head"]
GPU_HOST = {"cpu", "cuda", "cuda:0"}


def write(tmp_path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_cpu_default():
    p = Placement.load(None)
    experts = p.resolve("model.layers.3.mlp.experts")
    assert (experts.name, experts.device, experts.op, experts.expert_dtype) == ("routed-experts", "cpu", "fused_cpu", "int8")
    attn = p.resolve("model.layers.3.self_attn")
    assert (attn.device, attn.op, attn.expert_dtype) == ("cpu", "torch", None)
    assert p.resolve("model.layers.3.mlp.experts.gate_up_proj").op == "torch"   # the regex is anchored


@pytest.mark.parametrize("profile", sorted(PLACEMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_resolve_every_engine_module(profile):
    for devices in ({"cpu"}, GPU_HOST):
        p = Placement.load(profile, devices=devices)
        for name in ENGINE_MODULES:
            rule = p.resolve(name)
            assert rule.device in devices, (profile.name, name, rule)


def test_hybrid_profile_on_gpu_and_cpu_hosts():
    profile = PLACEMENTS / "gpu_attn_cpu_experts.yaml"
    gpu = Placement.load(profile, devices=GPU_HOST)
    assert (gpu.resolve("model.layers.2.self_attn").device, gpu.resolve("model.layers.2.self_attn").op) == ("cuda:0", "triton")
    assert gpu.resolve("model.layers.2.mlp.shared_expert").device == "cuda:0"
    experts = gpu.resolve("model.layers.2.mlp.experts")
    assert (experts.device, experts.op, experts.expert_dtype) == ("cpu", "fused_cpu", "int4")
    cpu = Placement.load(profile, devices={"cpu"})
    attn = cpu.resolve("model.layers.2.self_attn")
    assert (attn.device, attn.op, attn.fallback_from) == ("cpu", "torch", "cuda:0")
    assert "fallback: cuda:0 missing" in attn.describe()


def test_first_match_wins(tmp_path):
    p = Placement.load(write(tmp_path, r"""
        rules:
          - {name: hot, match: '^model\.layers\.[0-3]\.mlp\.experts$', device: cpu, op: fused_cpu, expert_dtype: bf16}
          - {name: cold, match: '\.mlp\.experts$', device: cpu, op: fused_cpu, expert_dtype: int4, group_size: 32}
          - {match: '.*', device: cpu}
        """))
    assert p.resolve("model.layers.2.mlp.experts").expert_dtype == "bf16"
    cold = p.resolve("model.layers.12.mlp.experts")
    assert (cold.name, cold.expert_dtype, cold.group_size) == ("cold", "int4", 32)
    other = p.resolve("lm_head")
    assert (other.name, other.op) == ("rule 2", "torch")


def test_missing_device_without_fallback_names_the_rule(tmp_path):
    p = Placement.load(write(tmp_path, """
        rules:
          - {name: attention, match: 'self_attn', device: 'cuda:1', op: triton}
          - {match: '.*', device: cpu}
        """), devices=GPU_HOST)
    with pytest.raises(PlacementError, match=r"rule 'attention' puts model.layers.0.self_attn on cuda:1, which this "
                                             r"host does not have.*fallback"):
        p.resolve("model.layers.0.self_attn")
    with pytest.raises(PlacementError, match="no rule matches module 'x'"):
        Placement([{"match": "^y$", "device": "cpu"}]).resolve("x")


BAD_RULES = {   # rule text -> expected message
    "{name: r, match: 'a', device: cpu, devcie: cpu}": r"rule 0 \('r'\): unknown key 'devcie'",
    "{match: 'a(', device: cpu}": r"rule 0: key 'match': bad regex",
    "{device: cpu}": r"rule 0: key 'match' .* is required",
    "{match: a}": r"rule 0: key 'device' is required",
    "{match: a, device: gpu}": r"key 'device': must be cpu, cuda or cuda:N, got 'gpu'",
    "{match: a, device: cpu, op: magic}": r"key 'op': must be one of",
    "{match: a, device: 'cuda:0', op: fused_cpu}": r"fused_cpu runs on the cpu",
    "{match: a, device: cpu, op: triton}": r"triton kernels need a cuda device",
    "{match: a, device: cpu, expert_dtype: int3}": r"key 'expert_dtype': must be one of",
    "{match: a, device: cpu, group_size: 12}": r"key 'group_size'.*multiple of 8",
    "{match: a, device: 'cuda:0', fallback: {device: cpu, speed: 2}}": r"key 'fallback'",
    "{match: a, device: 'cuda:0', op: torch, fallback: tpu}": r"key 'fallback.device'",
    "{match: a, device: cpu, name: 3}": r"key 'name': must be a string",
    "just-a-string": r"rule 0: must be a mapping",
}


@pytest.mark.parametrize("text", list(BAD_RULES))
def test_bad_rules_are_named(tmp_path, text):
    with pytest.raises(PlacementError, match=BAD_RULES[text]) as info:
        Placement.load(write(tmp_path, f"rules:\n  - {text}\n"))
    assert "rules.yaml" in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(PlacementError, match="cannot read it.*cpu.yaml"):
        Placement.load(tmp_path / "missing.yaml")
    with pytest.raises(PlacementError, match="not valid YAML"):
        Placement.load(write(tmp_path, "rules: [\n"))
    with pytest.raises(PlacementError, match="non-empty list under 'rules'"):
        Placement.load(write(tmp_path, "rules: []\n"))
    with pytest.raises(PlacementError, match=r"unknown top-level key\(s\) \['rule'\]"):
        Placement.load(write(tmp_path, "rules: [{match: a, device: cpu}]\nrule: 1\n"))

"""The embedded default model (backend/default_model.py): a real upcycled MoE that still answers."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend import default_model
from backend.default_model import NUM_EXPERTS, TOP_K, default_model_dir, ensure_default_model

REPO_ROOT = Path(__file__).resolve().parent.parent
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_dir():
    return ensure_default_model()  # built by scripts/setup.sh; builds here (~1 min) only if missing


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    # fp32 like the engine's default; the checkpoint itself is bf16.
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_default_dir_is_in_the_repo_cache_whatever_the_cwd(model_dir):
    assert model_dir == REPO_ROOT / ".cache" / "models" / "smollm2-moe"
    assert default_model_dir() == model_dir


def test_cli_prints_the_path_and_is_quick_when_cached(model_dir):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "backend.default_model"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == str(model_dir)
    assert "cached" in result.stderr
    assert time.monotonic() - start < 10, "a cached default model must not be rebuilt or load torch"


def test_config_is_a_four_expert_top2_mixtral(model_dir, model):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "mixtral"
    assert config["num_local_experts"] == NUM_EXPERTS == 4
    assert config["num_experts_per_tok"] == TOP_K == 2
    assert model.config.tie_word_embeddings
    marker = json.loads((model_dir / default_model.MARKER_FILE).read_text())
    assert marker["recipe"] == default_model.RECIPE


def test_experts_differ_by_a_small_perturbation(model):
    for layer in (model.model.layers[0], model.model.layers[-1]):
        gate_up = layer.mlp.experts.gate_up_proj  # [E, 2 * intermediate, hidden]
        for i in range(NUM_EXPERTS):
            for j in range(i + 1, NUM_EXPERTS):
                relative = (gate_up[i] - gate_up[j]).norm() / gate_up[i].norm()
                # Distinct experts, yet each one close to the dense MLP it was copied from.
                assert 0.01 < relative < 0.2, (i, j, relative.item())


def test_routing_uses_several_expert_pairs(model, tokenizer):
    pairs_per_layer = [set() for _ in model.model.layers]

    def record(layer_idx):
        def hook(_module, _inputs, outputs):
            _logits, _weights, top_k_index = outputs  # top_k_index: [num_tokens, top_k]
            pairs_per_layer[layer_idx].update(map(tuple, top_k_index.sort(dim=-1).values.tolist()))
        return hook

    hooks = [layer.mlp.gate.register_forward_hook(record(i)) for i, layer in enumerate(model.model.layers)]
    try:
        inputs = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    distinct = [len(pairs) for pairs in pairs_per_layer]
    assert all(n >= 1 for n in distinct)
    # Routing must really vary across tokens, not send every token to the same two experts.
    assert sum(n > 1 for n in distinct) >= len(distinct) * 3 // 4, distinct
    assert len(set().union(*pairs_per_layer)) == NUM_EXPERTS * (NUM_EXPERTS - 1) // 2


def test_greedy_chat_answers_paris(model, tokenizer):
    inputs = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_failed_build_leaves_no_model_and_no_temp_folder(tmp_path, monkeypatch):
    def interrupted_build(tmp):
        (tmp / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(default_model, "_build", interrupted_build)
    out = tmp_path / "models" / "m"
    with pytest.raises(KeyboardInterrupt):
        ensure_default_model(out)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [".m.lock"]


def test_extension_settings_are_batch_invariant(model_dir):
    """With every layer on the CPU extension (bf16 dense linears and KV, int8 experts: the serving defaults
    where the extension has AVX-512 or AVX2 tiles), a request's greedy tokens do not depend on what else is in
    its batch: every kernel sums in a fixed order. With only the portable tiles, 'auto' keeps the dense linears
    on torch's fp32 (faster there), which gives no such guarantee, so dense_dtype=bf16 is asked for there."""
    from backend import LLMEngine, SamplingParams
    from kernels.cpu_moe import simd_tiles

    engine = LLMEngine.from_pretrained(model_dir, max_tokens_in_paged_kv_cache=8192, warmup=False,
                                       **({} if simd_tiles() else {"dense_dtype": "bf16"}))
    assert any("dense linears and RMSNorms: bf16" in note for note in engine.placement_notes), engine.placement_notes
    assert engine.kv_dtype == torch.bfloat16 and engine.runner.use_paged_kernel
    prompts = ["The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,"] + [
        f"Tell me about the number {i}." for i in range(9)]
    greedy = SamplingParams(max_tokens=40, ignore_eos=True)
    together = [r.token_ids for r in engine.generate(prompts, greedy)]
    alone = [engine.generate(p, greedy)[0].token_ids for p in prompts]
    assert together == alone
    assert engine.stats().kv_blocks_used == 0

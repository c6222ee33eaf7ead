"""Build a model from a Hugging Face checkpoint folder: config.json + safetensors (single file or
sharded index). Never pickle, never remote code. Checkpoint names map onto ours here; per-expert
tensors are stacked into [E, 2I, H] / [E, H, I]."""
import json
import logging
import os
import re

import torch
from safetensors import safe_open

from backend.errors import ConfigError
from backend.models.decoder import CausalLM
from backend.models.layers import RotaryEmbedding, rope_inv_freq
from backend.models.spec import ModelSpec, spec_from_hf_config

log = logging.getLogger(__name__)

# checkpoint name -> (our parameter, expert index group or None, which half of w13)
_EXPERT = re.compile(r"^(model\.layers\.\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(w1|w3|w2|gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def load_hf_config(model_dir: str):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise ConfigError("model", f"model folder {model_dir!r} does not exist")
    if not os.path.isfile(path):
        raise ConfigError("model", f"{path} is missing: a Hugging Face checkpoint folder needs config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError("model", f"{path} is not valid JSON ({e})") from None
    from transformers import AutoConfig, CONFIG_MAPPING
    if raw.get("model_type") not in CONFIG_MAPPING:
        raise ConfigError("model_type", f"{raw.get('model_type')!r} in {path} is not a known model type")
    return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)


def checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        names = ["model.safetensors"]
    else:
        names = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not names:
        pickles = [n for n in os.listdir(model_dir) if n.endswith((".bin", ".pt", ".pth"))]
        hint = " (pickle checkpoints are never loaded: convert them to safetensors)" if pickles else ""
        raise ConfigError("model", f"no .safetensors files in {model_dir}{hint}")
    paths = [os.path.join(model_dir, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError("model", f"checkpoint shard {p} listed in the index is missing")
    return paths


def build_model(model_dir: str, dtype: torch.dtype) -> tuple[CausalLM, ModelSpec, object]:
    hf_config = load_hf_config(model_dir)
    spec = spec_from_hf_config(hf_config)
    inv_freq, scaling = rope_inv_freq(hf_config, spec.head_dim)
    with torch.device("meta"):
        model = CausalLM(spec, RotaryEmbedding(inv_freq, scaling))
    materialize(model, dtype)
    model.model.rotary.inv_freq = inv_freq                      # buffers were on meta: restore
    load_weights(model, spec, checkpoint_files(model_dir))
    return model.eval(), spec, hf_config


def materialize(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Meta tensors -> uninitialized CPU ones, floating point in `dtype`, without gradients; the loader fills them.
    Module.to_empty would do it through empty_like on meta tensors, torch's reference implementation, which
    imports sympy: 0.2 s of every start-up."""
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                new = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype)
                table[name] = torch.nn.Parameter(new, requires_grad=False) if table is module._parameters else new


def load_weights(model: CausalLM, spec: ModelSpec, files: list[str]) -> None:
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    expert_parts: dict[str, set] = {}
    for path in files:
        try:
            handle = safe_open(path, framework="pt")
        except Exception as e:
            raise ConfigError("model", f"cannot read checkpoint file {path}: {e}") from None
        with handle as f:
            for key in f.keys():
                try:
                    tensor = f.get_tensor(key)
                except Exception as e:
                    raise ConfigError("model", f"tensor {key!r} in {path} is unreadable: {e}") from None
                _load_one(key, tensor, params, loaded, expert_parts, spec, path)
    if spec.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    for name, parts in expert_parts.items():
        if len(parts) != spec.num_experts * (2 if name.endswith("w13") else 1):
            raise ConfigError("model", f"checkpoint has {len(parts)} expert tensors for {name}, expected one per expert")
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ConfigError("model", f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:5]}")


def _copy(dst: torch.Tensor, src: torch.Tensor, key: str, path: str) -> None:
    if dst.shape != src.shape:
        raise ConfigError("model", f"tensor {key!r} in {path} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src)


def _load_one(key, tensor, params, loaded, expert_parts, spec: ModelSpec, path) -> None:
    if m := _EXPERT.match(key):
        layer, e, part = m.group(1), int(m.group(2)), m.group(3)
        inter = spec.moe_intermediate_size
        if part in ("w2", "down_proj"):
            name, dst = f"{layer}.mlp.experts.w2", lambda p: p[e]
        else:
            half = 0 if part in ("w1", "gate_proj") else 1
            name, dst = f"{layer}.mlp.experts.w13", lambda p: p[e, half * inter:(half + 1) * inter]
        if name not in params or e >= spec.num_experts:
            raise ConfigError("model", f"unexpected expert tensor {key!r} in {path}")
        _copy(dst(params[name].data), tensor, key, path)
        expert_parts.setdefault(name, set()).add((e, part))
        return
    if m := _FUSED.match(key):
        name = f"{m.group(1)}.mlp.experts." + ("w13" if m.group(2) == "gate_up_proj" else "w2")
        _copy(params[name].data, tensor, key, path)
        loaded.add(name)
        return
    name = key.replace(".block_sparse_moe.", ".mlp.")
    if name in params:
        _copy(params[name].data, tensor, key, path)
        loaded.add(name)
    elif not _IGNORED.search(key) and not (key == "lm_head.weight" and spec.tie_word_embeddings):
        log.warning("ignoring checkpoint tensor %s (no matching parameter)", key)

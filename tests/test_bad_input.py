"""Bad requests and settings get an error naming the field or file; the engine keeps serving
and leaks no KV blocks."""
import json
import os
import shutil

import pytest

from backend import ConfigError, InvalidRequest, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_model):
    return LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=256, max_seq_len=200,
                                     warmup=False)


@pytest.mark.parametrize("kwargs,field", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(presence_penalty=3), "presence_penalty"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens"),
    (dict(seed=-1), "seed"),
    (dict(stop=[""]), "stop"),
])
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequest) as e:
        SamplingParams(**kwargs)
    assert e.value.field == field and field in str(e.value)


@pytest.mark.parametrize("prompt,params,field", [
    ("", SamplingParams(), "prompt"),
    ([], SamplingParams(), "prompt"),
    ([5] * 200, SamplingParams(), "prompt"),                        # >= max_seq_len
    ([10**6], SamplingParams(), "prompt"),                           # token id out of vocabulary
])
def test_bad_requests_are_rejected_and_the_engine_goes_on(engine, prompt, params, field):
    engine.add_request("good", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
    with pytest.raises(InvalidRequest) as e:
        engine.add_request("bad", prompt, params)
    assert e.value.field == field
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.finish_reason for o in outs if o.finished] == ["length"]
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize("policy,prompt_len,max_tokens,field", [
    ("guaranteed_no_evict", 40, 40, "max_tokens"),    # prompt + max_tokens cannot be reserved
    ("max_utilization", 70, 4, "prompt"),             # the prompt alone exceeds the whole cache
])
def test_requests_larger_than_the_kv_cache(tiny_model, policy, prompt_len, max_tokens, field):
    small = LLMEngine.from_pretrained(tiny_model("mixtral"), max_tokens_in_paged_kv_cache=64,
                                      batch_scheduler_policy=policy, warmup=False)
    with pytest.raises(InvalidRequest, match="KV cache") as e:
        small.add_request("bad", [5] * prompt_len, SamplingParams(max_tokens=max_tokens))
    assert e.value.field == field


def test_duplicate_request_id(engine):
    engine.add_request("dup", [5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequest) as e:
        engine.add_request("dup", [5, 6], SamplingParams(max_tokens=2))
    assert e.value.field == "request_id"
    while engine.has_unfinished_requests():
        engine.step()


def test_long_prompt_without_chunking_is_rejected(tiny_model):
    e = LLMEngine.from_pretrained(tiny_model("mixtral"), max_num_tokens=32, warmup=False, max_batch_size=2)
    with pytest.raises(InvalidRequest, match="enable_chunked_context") as err:
        e.add_request("x", [5] * 40, SamplingParams())
    assert err.value.field == "prompt"


@pytest.mark.parametrize("key,value", [("no_such_key", 1), ("batch_scheduler_policy", "fastest"),
                                       ("max_tokens_in_paged_kv_cache", "lots"), ("tokens_per_block", 0),
                                       ("kv_cache_free_mem_fraction", 1.5), ("dense_dtype", "int3"),
                                       ("kv_cache_dtype", "fp8")])
def test_bad_config_names_the_key(tiny_model, key, value):
    with pytest.raises(ConfigError) as e:
        LLMEngine.from_pretrained(tiny_model("mixtral"), **{key: value})
    assert e.value.field == key


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoints_name_the_file(tiny_model, tmp_path):
    src = tiny_model("mixtral")
    with pytest.raises(ConfigError, match="does not exist"):
        LLMEngine.from_pretrained(str(tmp_path / "nope"))

    no_cfg = _copy(src, tmp_path / "no_cfg")
    os.remove(no_cfg / "config.json")
    with pytest.raises(ConfigError, match="config.json"):
        LLMEngine.from_pretrained(str(no_cfg))

    corrupt = _copy(src, tmp_path / "corrupt")
    with open(corrupt / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 64)
    with pytest.raises(ConfigError, match="model.safetensors"):
        LLMEngine.from_pretrained(str(corrupt))

    no_weights = _copy(src, tmp_path / "no_weights")
    os.remove(no_weights / "model.safetensors")
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="pickle"):
        LLMEngine.from_pretrained(str(no_weights))

    unsupported = _copy(src, tmp_path / "unsupported")
    cfg = json.loads((unsupported / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (unsupported / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        LLMEngine.from_pretrained(str(unsupported))
    assert e.value.field == "model_type" and "gpt2" in str(e.value)

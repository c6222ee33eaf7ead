"""Session-scoped tritonservers for the serving-under-load tests, on free 127.0.0.1 ports.

One tiny random Mixtral (4096 positions) whose greedy output is printable text, behind three
configurations that share a 4096-token KV cache (256 blocks of 16):
  - no_evict_server: inflight batching, guaranteed_no_evict, no prefix cache (the reference);
  - max_util_server: inflight batching, max_utilization, prefix cache on;
  - static_server:   V1 (static) batching via TRT-LLM's gpt_model_type key.
Pollers run every 50 ms so /metrics follows the load closely.
"""
import os
import shutil

import pytest

from tests.e2e.conftest import running_server

LOAD_MODEL = dict(model_type="mixtral", max_position_embeddings=4096)
KV_TOKENS = 4096
BLOCK = 16
COMMON = {"max_tokens_in_paged_kv_cache": str(KV_TOKENS), "tokens_per_block": str(BLOCK),
          "cancellation_check_period_ms": "50", "stats_check_period_ms": "50"}
NO_EVICT = {**COMMON, "batch_scheduler_policy": "guaranteed_no_evict"}
MAX_UTIL = {**COMMON, "batch_scheduler_policy": "max_utilization", "enable_kv_cache_reuse": "true"}
STATIC = {**COMMON, "gpt_model_type": "V1"}


def printable_copy(src: str) -> str:
    """src with the lm_head rows of every token that is not printable text alone (byte pieces of a
    multi-byte character, control characters, end-of-text) set to 0. Their logit is then exactly 0,
    below the largest of ~200 random ones, so greedy decoding never picks them: no text is held back
    for an incomplete character, every token streams as its own response, and arrival times count
    engine steps. Built once next to src."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    dst = src.rstrip("/") + "-printable"
    if os.path.isfile(os.path.join(dst, "config.json")):
        return dst
    tokenizer = AutoTokenizer.from_pretrained(src)
    weights = load_file(os.path.join(src, "model.safetensors"))
    head = weights["lm_head.weight"]
    for token_id in range(head.shape[0]):
        text = tokenizer.decode([token_id])
        if token_id in tokenizer.all_special_ids or not text or not text.isprintable() or "\ufffd" in text:
            head[token_id] = 0
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    os.replace(tmp, dst)
    return dst


@pytest.fixture(scope="session")
def load_model_dir(tiny_model):
    return printable_copy(tiny_model(**LOAD_MODEL))


@pytest.fixture(scope="session")
def tokenizer(load_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(load_model_dir)


@pytest.fixture(scope="session")
def no_evict_server(load_model_dir):
    yield from running_server(load_model_dir, NO_EVICT)


@pytest.fixture(scope="session")
def max_util_server(load_model_dir):
    yield from running_server(load_model_dir, MAX_UTIL)


@pytest.fixture(scope="session")
def static_server(load_model_dir):
    yield from running_server(load_model_dir, STATIC)

"""Session-scoped real servers for the gateway tests: a tritonserver with a tiny random Mixtral (given a
chat template), `python -m openai_gateway` in front of it, and a second pair whose Triton queue holds
one request (for 429). Everything binds 127.0.0.1 on free ports and is stopped at the end."""
import shutil

import openai
import pytest

from backend.serve import TritonServer
from tests.openai.gateway_process import API_KEY, run_gateway

# The tiny model's byte-level BPE tokenizer has no chat template; this one marks roles with plain text.
CHAT_TEMPLATE = ("{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
TINY_MODEL = dict(model_type="mixtral", max_position_embeddings=4096)   # the e2e tests' model: built once
# 128 KV blocks of 16 tokens; fast cancellation checks so freed blocks show at once on /metrics.
TRITON_PARAMS = {"max_tokens_in_paged_kv_cache": "2048", "cancellation_check_period_ms": "50",
                 "stats_check_period_ms": "50"}
# One execute() at a time, a Triton queue of one, and a KV cache that one long request fills.
SMALL_QUEUE_PARAMS = {"max_tokens_in_paged_kv_cache": "4096", "batch_scheduler_policy": "guaranteed_no_evict",
                      "triton_max_batch_size": "1", "max_queue_size": "1", "max_queue_delay_microseconds": "0",
                      "cancellation_check_period_ms": "50", "stats_check_period_ms": "50"}


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-chat-mixtral"
    shutil.copytree(tiny_model(**TINY_MODEL), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(chat_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(chat_model_dir)


def _serve(model_dir, params):
    server = TritonServer(model_dir, params, exit_timeout_s=10).start()
    yield server
    tail = server.log_tail(30)
    server.stop()
    print(f"\n--- tritonserver log tail ({params}) ---\n{tail}")


@pytest.fixture(scope="session")
def triton(chat_model_dir):
    yield from _serve(chat_model_dir, TRITON_PARAMS)


@pytest.fixture(scope="session")
def gateway(triton, chat_model_dir):
    yield from run_gateway(triton.grpc_url, chat_model_dir)


@pytest.fixture(scope="session")
def small_queue_triton(chat_model_dir):
    yield from _serve(chat_model_dir, SMALL_QUEUE_PARAMS)


@pytest.fixture(scope="session")
def small_queue_gateway(small_queue_triton, chat_model_dir):
    yield from run_gateway(small_queue_triton.grpc_url, chat_model_dir)


@pytest.fixture(scope="session")
def model_name(chat_model_dir):
    return chat_model_dir.name   # SERVED_MODEL_NAME defaults to TOKENIZER_DIR's folder name


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def offline_engine(chat_model_dir):
    from backend import LLMEngine
    return LLMEngine.from_pretrained(chat_model_dir, max_tokens_in_paged_kv_cache=2048, warmup=False)

"""Gateway settings from the environment: defaults, docker-compose's empty strings, errors naming the variable,
and a gateway started with neither TOKENIZER_DIR nor a key."""
import httpx
import pytest

from openai_gateway.settings import GatewaySettings, SettingsError
from tests.openai.gateway_process import GatewayProcess


def test_defaults():
    settings = GatewaySettings.from_env({})
    assert (settings.host, settings.port, settings.triton_grpc_url, settings.triton_model) == \
        ("0.0.0.0", 9000, "localhost:8001", "moe_llm")
    assert settings.served_model_name == "moe_llm" and settings.api_key is None and settings.tokenizer_dir is None


def test_compose_style_values(tmp_path):
    model = tmp_path / "smollm2-moe"
    model.mkdir()
    settings = GatewaySettings.from_env({"GATEWAY_PORT": "9100", "TRITON_GRPC_URL": "tritonserver:8001",
                                         "OPENAI_API_KEY": "", "TOKENIZER_DIR": str(model), "TRITON_MODEL": "m"})
    assert settings.port == 9100 and settings.api_key is None, "an empty key (compose's default) means no auth"
    assert settings.served_model_name == "smollm2-moe", "the model folder's name by default"
    assert GatewaySettings.from_env({"SERVED_MODEL_NAME": "my-moe"}).served_model_name == "my-moe"


@pytest.mark.parametrize("env, name", [({"GATEWAY_PORT": "http"}, "GATEWAY_PORT"), ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
                                       ({"TOKENIZER_DIR": "/no/such/folder"}, "TOKENIZER_DIR"),
                                       ({"GATEWAY_DEFAULT_MAX_TOKENS": "0"}, "GATEWAY_DEFAULT_MAX_TOKENS")])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        GatewaySettings.from_env(env)


def test_without_tokenizer_dir_or_key(triton, offline_engine, tokenizer):
    """No TOKENIZER_DIR: the chat template comes from Triton's `model` folder and the model id is TRITON_MODEL;
    no OPENAI_API_KEY: requests need no Authorization header."""
    messages = [{"role": "user", "content": "The quick brown fox"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = offline_engine.generate(prompt)[0]   # greedy, 16 tokens
    with GatewayProcess(triton.grpc_url, tokenizer_dir=None, api_key=None) as gateway:
        assert httpx.get(f"{gateway.base_url}/models", timeout=10).json()["data"][0]["id"] == "moe_llm"
        reply = httpx.post(f"{gateway.base_url}/chat/completions", timeout=60, json={
            "model": "moe_llm", "messages": messages, "max_tokens": 16, "temperature": 0}).json()
    assert reply["choices"][0]["message"]["content"] == expected.text
    assert reply["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)

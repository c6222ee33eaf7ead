"""Gateway settings from the environment: defaults, docker-compose's empty strings, errors naming the variable."""
import pytest

from openai_gateway.settings import GatewaySettings, SettingsError


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

"""Gateway settings, read from the environment (the names docker-compose and Helm already set)."""
import os
from dataclasses import dataclass
from pathlib import Path

ENV_HELP = {
    "GATEWAY_HOST": "address to bind (default 0.0.0.0)",
    "GATEWAY_PORT": "port of the OpenAI API (default 9000)",
    "TRITON_GRPC_URL": "Triton's gRPC endpoint, host:port (default localhost:8001)",
    "TRITON_MODEL": "Triton model to call (default moe_llm)",
    "SERVED_MODEL_NAME": "model id clients send and /v1/models lists (default: TOKENIZER_DIR's folder name, "
                         "else TRITON_MODEL)",
    "TOKENIZER_DIR": "model folder whose tokenizer and chat template render chat messages (default: the "
                     "folder in Triton's `model` parameter, when it exists on this machine)",
    "OPENAI_API_KEY": "if set and non-empty, every /v1 request needs `Authorization: Bearer <key>`",
    "GATEWAY_DEFAULT_MAX_TOKENS": "max_tokens when a request sends none (default 512; capped by the context left)",
}


class SettingsError(ValueError):
    """A bad environment variable; the message names it."""


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "0.0.0.0"
    port: int = 9000
    triton_grpc_url: str = "localhost:8001"
    triton_model: str = "moe_llm"
    served_model_name: str = "moe_llm"
    tokenizer_dir: Path | None = None
    api_key: str | None = None
    default_max_tokens: int = 512

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "GatewaySettings":
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default   # docker-compose passes unset variables as empty strings

        tokenizer_dir = Path(get("TOKENIZER_DIR")).expanduser() if get("TOKENIZER_DIR") else None
        if tokenizer_dir is not None and not tokenizer_dir.is_dir():
            raise SettingsError(f"TOKENIZER_DIR={tokenizer_dir} is not a folder; point it at the model folder "
                                "(the one with tokenizer.json and the chat template)")
        triton_model = get("TRITON_MODEL", "moe_llm")
        return cls(
            host=get("GATEWAY_HOST", "0.0.0.0"),
            port=_int(get("GATEWAY_PORT", "9000"), "GATEWAY_PORT", 1, 65535),
            triton_grpc_url=get("TRITON_GRPC_URL", "localhost:8001"),
            triton_model=triton_model,
            served_model_name=get("SERVED_MODEL_NAME", tokenizer_dir.resolve().name if tokenizer_dir else triton_model),
            tokenizer_dir=tokenizer_dir,
            api_key=get("OPENAI_API_KEY"),
            default_max_tokens=_int(get("GATEWAY_DEFAULT_MAX_TOKENS", "512"), "GATEWAY_DEFAULT_MAX_TOKENS", 1, None),
        )


def _int(value: str, name: str, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        raise SettingsError(f"{name}={number} must be in [{low}, {high if high is not None else 'inf'}]")
    return number

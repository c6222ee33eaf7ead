"""OpenAI-compatible API (chat, completions, models) in front of Triton's moe_llm model.

    python -m openai_gateway          # env: GATEWAY_HOST, GATEWAY_PORT, TRITON_GRPC_URL, TRITON_MODEL, ...
"""
from openai_gateway.app import create_app
from openai_gateway.settings import GatewaySettings

__all__ = ["create_app", "GatewaySettings"]

"""triton-moe-backend engine: inflight batching over a paged KV cache for MoE LLMs."""
from backend.config import EngineConfig
from backend.errors import ConfigError, InvalidRequest
from backend.outputs import EngineStats, GenerationResult, RequestOutput
from backend.sampling_params import SamplingParams


def __getattr__(name):
    # LLMEngine pulls in torch and transformers: import it lazily so light users stay light.
    if name == "LLMEngine":
        from backend.llm_engine import LLMEngine
        return LLMEngine
    if name == "EngineThread":
        from backend.engine_thread import EngineThread
        return EngineThread
    raise AttributeError(name)


__all__ = ["LLMEngine", "EngineThread", "SamplingParams", "EngineConfig", "EngineStats", "RequestOutput",
           "GenerationResult", "InvalidRequest", "ConfigError"]

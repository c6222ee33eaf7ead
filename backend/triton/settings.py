"""Model-config `parameters` -> EngineConfig (the engine's settings) + AdapterSettings (the pollers').

Values follow TRT-LLM's conventions: an empty string or an unfilled `${...}` template means unset.
"""
from dataclasses import dataclass, fields

from backend.config import EngineConfig
from backend.errors import ConfigError


@dataclass(frozen=True)
class AdapterSettings:
    cancellation_check_period_ms: int = 100   # cancel poller for requests that are not streaming tokens yet
    stats_check_period_ms: int = 100          # metrics gauges refresh while the engine is busy
    stats_log_period_s: float = 5.0           # one-line stats log, like vLLM's

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigError(f.name, f"must be > 0, got {getattr(self, f.name)}")


def is_unset(value: str) -> bool:
    text = value.strip()
    return text == "" or text.startswith("${")


def parameters_of(model_config: dict) -> dict[str, str]:
    """The `parameters` map of a parsed model config, as key -> string value."""
    return {key: entry["string_value"] for key, entry in model_config.get("parameters", {}).items()}


def load_settings(parameters: dict[str, str]) -> tuple[EngineConfig, AdapterSettings]:
    adapter_keys = {f.name: f.type for f in fields(AdapterSettings)}
    adapter = {}
    for key in adapter_keys.keys() & parameters.keys():
        if is_unset(parameters[key]):
            continue
        try:
            adapter[key] = adapter_keys[key](parameters[key].strip())
        except ValueError:
            raise ConfigError(key, f"expected a number, got {parameters[key]!r}") from None
    return EngineConfig.from_dict(parameters, ignore=adapter_keys), AdapterSettings(**adapter)


def queue_policy_warning(model_config: dict) -> str | None:
    """Why Triton may hold a request 500 ms, when the queue settings make it so; None when they do not.

    tritonserver 2.51's dynamic batcher prefetches the next payload while execute() runs only if the queue
    has no max_queue_size, no timeouts and one priority level. Otherwise it wakes for a request that arrives
    mid-execute() only at its 500 ms idle tick: one request of a burst then starts 500 ms late (traced:
    QUEUE_START to COMPUTE_START 500.6 ms; tests/load/test_fairness_server.py)."""
    batching = model_config.get("dynamic_batching") or {}
    policy = batching.get("default_queue_policy") or {}
    limits = {"max_queue_size": int(policy.get("max_queue_size", 0) or 0),
              "default_timeout_microseconds": int(policy.get("default_timeout_microseconds", 0) or 0),
              "allow_timeout_override": bool(policy.get("allow_timeout_override", False)),
              "priority_levels": int(batching.get("priority_levels", 0) or 0)}
    set_limits = {key: value for key, value in limits.items() if value}
    if not set_limits:
        return None
    named = ", ".join(f"{key} {value}" for key, value in set_limits.items())
    return (f"dynamic_batching sets {named}: Triton then cannot prefetch while execute() runs, so a request "
            "arriving meanwhile can wait up to 500 ms in its queue; drop these fields for the lowest latency, "
            "keep them to bound or time out the queue")

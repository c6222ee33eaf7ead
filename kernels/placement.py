"""Placement rules: which device and operator run each module, read from YAML (ktransformers' idea, simplified).

A file holds an ordered list of rules; each rule's `match` regex is searched in the module's dotted name
(model.layers.3.mlp.experts, model.layers.3.self_attn, lm_head, ...) and the first matching rule wins:

    rules:
      - name: routed-experts                       # optional, shown in errors and logs
        match: '\\.mlp\\.experts$'
        device: cpu                                # cpu | cuda | cuda:N
        op: fused_cpu                              # fused_cpu (cpu) | triton (cuda) | torch
        expert_dtype: int4                         # experts only: fp32 | bf16 | int8 | int4
        group_size: 32                             # int4 only (default 32)
        fallback: cpu                              # optional: device (or {device, op}) when `device` is missing

Placement.load(None) gives the CPU-only default (kernels/placements/cpu.yaml).
"""
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from kernels.quantize import EXPERT_DTYPES, check_group_size

PLACEMENTS = Path(__file__).parent / "placements"
DEFAULT_PLACEMENT = PLACEMENTS / "cpu.yaml"
OPS = ("fused_cpu", "triton", "torch")
KEYS = ("name", "match", "device", "op", "expert_dtype", "group_size", "fallback")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class PlacementError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    name: str
    device: str
    op: str
    expert_dtype: str | None = None
    group_size: int = 32
    pattern: str = ".*"
    fallback_from: str | None = None   # the device the rule asked for, when the fallback was used

    def describe(self) -> str:
        moved = f" (fallback: {self.fallback_from} missing)" if self.fallback_from else ""
        dtype = f" {self.expert_dtype}" if self.expert_dtype else ""
        return f"{self.name}: {self.op}{dtype} on {self.device}{moved}"


def available_devices() -> set[str]:
    devices = {"cpu"}
    if torch.cuda.is_available():
        devices |= {"cuda"} | {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    return devices


class Placement:
    def __init__(self, rules: list[dict], source: str = "<rules>", devices: set[str] | None = None):
        self.source = source
        self.devices = available_devices() if devices is None else set(devices)
        self.rules = [self._parse(i, r) for i, r in enumerate(rules)]

    @classmethod
    def load(cls, path: str | Path | None = None, devices: set[str] | None = None) -> "Placement":
        """Rules from a YAML file; None = the CPU-only default."""
        path = Path(path) if path is not None else DEFAULT_PLACEMENT
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as e:
            raise PlacementError(f"placement file {path}: cannot read it ({e.strerror}); "
                                 f"shipped profiles: {sorted(p.name for p in PLACEMENTS.glob('*.yaml'))}") from e
        except yaml.YAMLError as e:
            raise PlacementError(f"placement file {path}: not valid YAML: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
            raise PlacementError(f"placement file {path}: expected a mapping with a non-empty list under 'rules'")
        extra = set(doc) - {"rules"}
        if extra:
            raise PlacementError(f"placement file {path}: unknown top-level key(s) {sorted(extra)}; only 'rules'")
        return cls(doc["rules"], str(path), devices)

    def _error(self, index: int, name: str | None, msg: str) -> PlacementError:
        label = f"rule {index}" + (f" ({name!r})" if name else "")
        return PlacementError(f"placement {self.source}: {label}: {msg}")

    def _parse(self, index: int, raw) -> dict:
        if not isinstance(raw, dict):
            raise self._error(index, None, f"must be a mapping with keys {KEYS}, got {raw!r}")
        name = raw.get("name")
        err = lambda msg: self._error(index, name, msg)   # noqa: E731
        if name is not None and not isinstance(name, str):
            raise err(f"key 'name': must be a string, got {name!r}")
        for key in raw:
            if key not in KEYS:
                raise err(f"unknown key {key!r} (allowed: {', '.join(KEYS)})")
        if "match" not in raw or not isinstance(raw["match"], str):
            raise err("key 'match' (a regex searched in the module name) is required")
        try:
            pattern = re.compile(raw["match"])
        except re.error as e:
            raise err(f"key 'match': bad regex {raw['match']!r}: {e}") from e
        if "device" not in raw:
            raise err("key 'device' is required (cpu, cuda or cuda:N)")
        device = self._check_device(raw["device"], err, "device")
        op = raw.get("op", "torch")
        self._check_op(op, device, err, "op")
        expert_dtype = raw.get("expert_dtype")
        if expert_dtype is not None and expert_dtype not in EXPERT_DTYPES:
            raise err(f"key 'expert_dtype': must be one of {EXPERT_DTYPES}, got {expert_dtype!r}")
        group_size = raw.get("group_size", 32)
        try:
            check_group_size(group_size)
        except ValueError as e:
            raise err(f"key 'group_size': {e}") from e
        fallback = raw.get("fallback")
        if fallback is not None:
            if isinstance(fallback, str):
                fallback = {"device": fallback}
            if not isinstance(fallback, dict) or set(fallback) - {"device", "op"} or "device" not in fallback:
                raise err(f"key 'fallback': a device or a mapping {{device, op}}, got {raw['fallback']!r}")
            fb_device = self._check_device(fallback["device"], err, "fallback.device")
            fb_op = fallback.get("op", "torch" if op == "triton" and fb_device == "cpu" else op)
            self._check_op(fb_op, fb_device, err, "fallback.op")
            fallback = {"device": fb_device, "op": fb_op}
        return {"name": name or f"rule {index}", "pattern": pattern, "device": device, "op": op,
                "expert_dtype": expert_dtype, "group_size": group_size, "fallback": fallback}

    @staticmethod
    def _check_device(device, err, key: str) -> str:
        if not isinstance(device, str) or not DEVICE_RE.match(device):
            raise err(f"key {key!r}: must be cpu, cuda or cuda:N, got {device!r}")
        return device

    @staticmethod
    def _check_op(op, device: str, err, key: str) -> None:
        if op not in OPS:
            raise err(f"key {key!r}: must be one of {OPS}, got {op!r}")
        if op == "fused_cpu" and device != "cpu":
            raise err(f"key {key!r}: fused_cpu runs on the cpu, not {device}")
        if op == "triton" and device == "cpu":
            raise err(f"key {key!r}: triton kernels need a cuda device; use fused_cpu or torch on the cpu")

    def resolve(self, module_name: str) -> Rule:
        """The first rule whose regex is found in module_name, on a device this host has."""
        for r in self.rules:
            if not r["pattern"].search(module_name):
                continue
            rule = Rule(r["name"], r["device"], r["op"], r["expert_dtype"], r["group_size"], r["pattern"].pattern)
            if rule.device in self.devices:
                return rule
            if r["fallback"] and r["fallback"]["device"] in self.devices:
                return dataclasses.replace(rule, device=r["fallback"]["device"], op=r["fallback"]["op"],
                                           fallback_from=rule.device)
            have = ", ".join(sorted(self.devices))
            raise PlacementError(f"placement {self.source}: rule {r['name']!r} puts {module_name} on {rule.device}, "
                                 f"which this host does not have (it has: {have}); add `fallback: cpu` to the rule "
                                 f"or use a CPU profile such as {DEFAULT_PLACEMENT}")
        raise PlacementError(f"placement {self.source}: no rule matches module {module_name!r}; "
                             "end the file with a catch-all rule (match: '.*')")

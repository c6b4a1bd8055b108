"""Run configuration: a dataclass, loadable from YAML, validated before any work starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..methods import BASELINE, Setting, build_setting
from ..tasks import SYNTHETIC_SUITE, TASKS

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TIMING_MODES = ("batch", "request")


@dataclass
class RunConfig:
    """One sweep: every model × setting × task is a cell."""

    model: str | list[str] = "embedded"  # local folder, hub id, or "embedded"; a list sweeps models
    tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_SUITE))
    settings: list[Any] = field(default_factory=lambda: [BASELINE])  # spec strings or YAML lists; the baseline is always added
    limit: int | None = 100  # samples per task (None: the task's full size)
    batch_size: int = 16
    seed: int = 1234  # draws the held-out samples; another seed gives fresh scenes
    output: str = "runs/default"
    device: str = "auto"  # auto = cuda when available, else cpu
    # auto: on a GPU the checkpoint's own dtype, on a CPU float32; weight and KV bytes are
    # reported at the checkpoint's 16-bit dtype either way (float16 for a float32 checkpoint)
    dtype: str = "auto"
    device_map: str | None = None  # auto: accelerate spreads the model over every visible GPU
    attn_implementation: str = "sdpa"  # sdpa, eager, or flash_attention_2 (needs flash-attn, a GPU, 16 bits)
    timing: str = "batch"  # batch: time the batches; request: also each sample alone (TTFT, TPOT)
    max_new_tokens: int | None = None  # None: each task's own limit
    trust_remote_code: bool = False
    calibration_task: str | None = None  # task whose samples calibrate weight methods (default: the first task)
    calibration_samples: int = 32
    calibration_seed: int = 0  # differs from `seed`, so calibration never sees evaluated samples
    data_dir: str | None = None  # local dataset copies, DATA_DIR/<dataset id>/ as the hub repo (None: the hub and HF_HOME cache)
    toxicity_model: str | None = None  # local folder of an HF text classifier scoring toxicity (social_counterfactuals)

    @property
    def models(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def validate(self) -> list[Setting]:
        """Check every field; return the built settings (baseline first)."""
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError(f"model must be a non-empty string or list of strings, got {self.model!r}")
        if not self.tasks:
            raise ConfigError("tasks: at least one task is needed; known: " + ", ".join(TASKS.names()))
        for t in self.tasks:
            TASKS.get(t)
        if self.calibration_task is not None:
            TASKS.get(self.calibration_task)
        _positive("batch_size", self.batch_size)
        _positive("calibration_samples", self.calibration_samples)
        if self.limit is not None:
            _positive("limit", self.limit)
        if self.max_new_tokens is not None:
            _positive("max_new_tokens", self.max_new_tokens)
        for name in ("seed", "calibration_seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device={self.device!r} is not allowed; allowed: {', '.join(DEVICES)} or cuda:N")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        if self.device_map is not None:
            if self.device_map not in DEVICE_MAPS:
                raise ConfigError(f"device_map={self.device_map!r} is not allowed; allowed: {', '.join(DEVICE_MAPS)} (or none)")
            if str(self.device).startswith("cuda:"):
                raise ConfigError(f"device_map={self.device_map!r} spreads the model over every visible GPU; device={self.device!r} picks one (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"attn_implementation={self.attn_implementation!r} is not allowed; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.attn_implementation == "flash_attention_2":
            from ..models.loading import flash_attention_available

            if not flash_attention_available():
                raise ConfigError(
                    "attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed "
                    "(pip install flash-attn --no-build-isolation); use sdpa or eager"
                )
            if self.device == "cpu":
                raise ConfigError("attn_implementation=flash_attention_2 runs on CUDA GPUs only; device='cpu'")
        if self.timing not in TIMING_MODES:
            raise ConfigError(f"timing={self.timing!r} is not allowed; allowed: {', '.join(TIMING_MODES)}")
        for key in ("data_dir", "toxicity_model"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not Path(value).expanduser().is_dir()):
                raise ConfigError(f"{key}={value!r} is not a folder")
        settings = [build_setting(BASELINE)]
        seen = {BASELINE}
        for spec in self.settings:
            s = build_setting(spec)
            if s.normalized not in seen:
                seen.add(s.normalized)
                settings.append(s)
        return settings

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "RunConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        if "compress" in data:  # the CLI's name for settings
            data["settings"] = list(data.pop("compress") or []) + list(data.get("settings", []) or [])
        if "models" in data:
            data["model"] = data.pop("models")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown config key {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed + ['compress', 'models'])}")
        if isinstance(data.get("tasks"), str):
            data["tasks"] = [t.strip() for t in data["tasks"].split(",") if t.strip()]
        if isinstance(data.get("settings"), str):
            data["settings"] = [data["settings"]]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")

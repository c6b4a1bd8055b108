"""Run configuration: a dataclass, loadable from YAML, validated before any work starts."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..methods import BASELINE, Setting, build_setting
from ..methods.spec import short
from ..tasks import SYNTHETIC_SUITE, TASKS

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TIMING_MODES = ("batch", "request")
EXECUTORS = ("local", "ray")

# Size and depth limits of a config: a file larger than MAX_CONFIG_BYTES, a document that
# expands (anchors and aliases included) to more than MAX_YAML_NODES values or nests deeper
# than MAX_YAML_DEPTH is refused with one line before anything is built from it, so a
# 400-byte alias bomb never expands into gigabytes.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 32
MAX_MODELS = 100
MAX_SETTINGS = 1000
# Upper bounds of the integer fields (far above any real run; a typo of a few digits is caught).
_INT_LIMITS = {
    "limit": 10_000_000,
    "batch_size": 100_000,
    "max_new_tokens": 1_000_000,
    "calibration_samples": 1_000_000,
}
SEED_MAX = 2**32 - 1  # numpy's generators take seeds in [0, 2**32)
_CUDA_INDEX = re.compile(r"cuda:\d{1,4}")


@dataclass
class RunConfig:
    """One sweep: every model × setting × task is a cell."""

    model: str | list[str] = "embedded"  # local folder, hub id, or "embedded"; a list sweeps models
    tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_SUITE))
    # spec strings or YAML lists; the baseline is always added.  The default shows every
    # family on the embedded model (configs/default.yaml mirrors it): weight quantization,
    # pruning, KV-cache quantization, KV eviction, visual-token pruning, and one stack.
    settings: list[Any] = field(default_factory=lambda: [
        BASELINE,
        "rtn(bits=4,group_size=64)",
        "awq(bits=4,group_size=64)",
        "wanda(sparsity=0.5)",
        "kivi(bits=2,group=32,residual=32)",
        "kv_uniform(bits=2)",
        "snapkv(ratio=0.4)",
        "visionzip(ratio=0.4)",
        "fastv(ratio=0.4,query=all)",
        "awq(bits=4,group_size=64)+visionzip(ratio=0.4)+kivi(bits=2,group=32,residual=32)",
    ])
    limit: int | None = 16  # samples per task (None: the task's full size); 16 keeps the default run of every family within minutes on 2 CPU cores
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
    # Where cells run (none of this enters a cell's key: the same cell computes the same
    # predictions wherever it runs).  local: one after another in this process; ray: on a
    # Ray cluster (pip install 'vlmcompress[ray]'), one worker per model copy, the driver
    # alone writing the store (runner/ray_executor.py).
    executor: str = "local"
    ray_address: str | None = None  # ray.init(address=...): "auto", "ray://host:10001"; None starts a local cluster
    ray_workers: int | None = None  # workers (each holds one model); None: as many as the cluster's CPUs/GPUs allow
    cpus_per_cell: float = 1.0  # the CPUs each worker asks Ray for (its torch threads)
    gpus_per_cell: float | None = None  # the GPUs each worker asks Ray for; None: 1 when the cluster has GPUs and device is not cpu, else 0

    @property
    def models(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def validate(self) -> list[Setting]:
        """Check every field; return the built settings (baseline first).  Duplicate models,
        tasks and settings are dropped (each is computed once)."""
        models = [self.model] if isinstance(self.model, str) else self.model
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m.strip() for m in models):
            raise ConfigError(f"model must be a non-empty string or a list of them, got {short(self.model)}")
        if len(models) > MAX_MODELS:
            raise ConfigError(f"model: {len(models)} models given; at most {MAX_MODELS}")
        if isinstance(self.model, list):
            self.model = list(dict.fromkeys(self.model))
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not isinstance(self.tasks, list):
            raise ConfigError(f"tasks must be a list of task names or a comma-separated string, got {short(self.tasks)}")
        if not self.tasks:
            raise ConfigError("tasks: at least one task is needed; known: " + ", ".join(TASKS.names()))
        for t in self.tasks:
            _known_task("tasks", t)
        self.tasks = list(dict.fromkeys(self.tasks))  # a task named twice is computed once
        if self.calibration_task is not None:
            _known_task("calibration_task", self.calibration_task)
        _positive("batch_size", self.batch_size)
        _positive("calibration_samples", self.calibration_samples)
        if self.limit is not None:
            _positive("limit", self.limit)
        if self.max_new_tokens is not None:
            _positive("max_new_tokens", self.max_new_tokens)
        for name in ("seed", "calibration_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
                raise ConfigError(f"{name} must be an integer from 0 to {SEED_MAX}, got {short(value)}")
        if isinstance(self.output, os.PathLike):
            self.output = os.fspath(self.output)
        if not isinstance(self.output, str) or not self.output.strip() or "\x00" in self.output:
            raise ConfigError(f"output must be a folder path, got {short(self.output)}")
        if not isinstance(self.trust_remote_code, bool):
            raise ConfigError(f"trust_remote_code must be true or false, got {short(self.trust_remote_code)}")
        if not isinstance(self.device, str) or (self.device not in DEVICES and not _CUDA_INDEX.fullmatch(self.device)):
            raise ConfigError(f"device={short(self.device)} is not allowed; allowed: {', '.join(DEVICES)} or cuda:N")
        for name, allowed in (("dtype", DTYPES), ("attn_implementation", ATTN_IMPLEMENTATIONS), ("timing", TIMING_MODES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ConfigError(f"{name}={short(value)} is not allowed; allowed: {', '.join(allowed)}")
        if self.device_map is not None:
            if not isinstance(self.device_map, str) or self.device_map not in DEVICE_MAPS:
                raise ConfigError(f"device_map={short(self.device_map)} is not allowed; allowed: {', '.join(DEVICE_MAPS)} (or none)")
            if str(self.device).startswith("cuda:"):
                raise ConfigError(f"device_map={self.device_map!r} spreads the model over every visible GPU; device={self.device!r} picks one (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if self.attn_implementation == "flash_attention_2":
            from ..models.loading import flash_attention_available

            if not flash_attention_available():
                raise ConfigError(
                    "attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed "
                    "(pip install flash-attn --no-build-isolation); use sdpa or eager"
                )
            if self.device == "cpu":
                raise ConfigError("attn_implementation=flash_attention_2 runs on CUDA GPUs only; device='cpu'")
        if not isinstance(self.executor, str) or self.executor not in EXECUTORS:
            raise ConfigError(f"executor={short(self.executor)} is not allowed; allowed: {', '.join(EXECUTORS)}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError(f"ray_address must be an address string (e.g. auto or ray://host:10001), got {short(self.ray_address)}")
        if self.ray_workers is not None:
            _positive("ray_workers", self.ray_workers)
        for name, lowest in (("cpus_per_cell", "above 0"), ("gpus_per_cell", "from 0")):
            value = getattr(self, name)
            if value is None and name == "gpus_per_cell":
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (0 < value if name == "cpus_per_cell" else 0 <= value) or value > 1024:
                raise ConfigError(f"{name} must be a number {lowest} (at most 1024), got {short(value)}")
        if self.executor != "ray" and (self.ray_address is not None or self.ray_workers is not None):
            raise ConfigError("ray_address and ray_workers need executor=ray")
        for key in ("data_dir", "toxicity_model"):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if value is not None and (not isinstance(value, str) or not _is_dir(value)):
                raise ConfigError(f"{key}={short(value)} is not a folder")
        if not isinstance(self.settings, list):
            raise ConfigError(f"compress must be a setting (a spec string) or a list of settings, got {short(self.settings)}")
        if len(self.settings) > MAX_SETTINGS:
            raise ConfigError(f"compress: {len(self.settings)} settings given; at most {MAX_SETTINGS} in one run")
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
        data = load_yaml_config(path)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "model" in overrides:  # --model replaces the file's model or models
            data.pop("models", None)
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of keys, got {short(data)}")
        data = dict(data)
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in allowed and k not in ("compress", "models")]
        if unknown:
            shown = ", ".join(short(k, 40) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ConfigError(f"unknown config key {shown}; allowed: {', '.join(allowed + ['compress', 'models'])}")
        if "compress" in data or "settings" in data:  # compress: the CLI's name for settings
            data["settings"] = _as_settings("compress", data.pop("compress", None)) + _as_settings("settings", data.get("settings"))
        if "models" in data:
            if "model" in data:
                raise ConfigError("give model or models, not both")
            data["model"] = data.pop("models")
        if isinstance(data.get("tasks"), str):
            data["tasks"] = [t.strip() for t in data["tasks"].split(",") if t.strip()]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {short(value)}")
    if name in _INT_LIMITS and value > _INT_LIMITS[name]:
        raise ConfigError(f"{name}={value} is above the limit of {_INT_LIMITS[name]}")


def _known_task(key: str, name: Any) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"{key}: a task name must be a string, got {short(name)}")
    if name not in TASKS:
        raise ConfigError(f"unknown task {short(name)}; known: {', '.join(TASKS.names())}")


def _is_dir(value: str) -> bool:
    try:
        return Path(value).expanduser().is_dir()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, an unknown ~user
        return False


def _as_settings(key: str, value: Any) -> list[Any]:
    """``compress``/``settings`` as a list of settings: one spec string or one mapping is one
    setting (a bare string was read character by character)."""
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, list):
        return list(value)
    raise ConfigError(f"{key} must be a setting (a spec string) or a list of settings, got {short(value)}")


# ----------------------------------------------------------------------------- YAML
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _check_yaml_shape(text: str, where: str) -> None:
    """Walk the YAML events (nothing is built) and refuse a document that nests deeper than
    MAX_YAML_DEPTH or expands, with anchors and aliases, to more than MAX_YAML_NODES values,
    quoting the line where the limit is crossed."""
    lines = text.splitlines()

    def refuse(mark, what: str) -> None:
        line = lines[mark.line].strip() if mark is not None and mark.line < len(lines) else ""
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {where}{at} ({short(line, 60)}): {what}")

    stack: list[list[Any]] = []  # open collections: [expanded size, height below, anchor, mark]
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded size, height)

    def add(size: int, height: int, mark) -> None:
        if not stack:
            return
        top = stack[-1]
        top[0] += size
        top[1] = max(top[1], height + 1)
        if top[0] > MAX_YAML_NODES:
            refuse(mark, f"expands to more than {MAX_YAML_NODES} values (anchors and aliases repeat what they name); write the values out")
        if len(stack) + height > MAX_YAML_DEPTH:
            refuse(mark, f"nests deeper than {MAX_YAML_DEPTH} levels once aliases are expanded")

    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, yaml.AliasEvent):
            if ev.anchor in anchors:
                add(*anchors[ev.anchor], ev.start_mark)
            elif any(frame[2] == ev.anchor for frame in stack):
                refuse(ev.start_mark, f"the alias *{ev.anchor} refers to the collection that contains it")
            # an undefined alias: the loader below says so
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor:
                anchors[ev.anchor] = (1, 0)
            add(1, 0, ev.start_mark)
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                refuse(ev.start_mark, f"nests deeper than {MAX_YAML_DEPTH} levels")
            stack.append([1, 0, ev.anchor, ev.start_mark])
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            size, height, anchor, mark = stack.pop()
            if anchor:
                anchors[anchor] = (size, height)
            add(size, height, mark)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file, within the size and depth limits (module doc);
    every problem is one :class:`ConfigError` line."""
    try:
        path = Path(path)
        where = short(str(path), 100)
        if not path.exists():
            raise ConfigError(f"config file {where} does not exist")
        if not path.is_file():
            raise ConfigError(f"config file {where} is not a file")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {where} is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
        raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read config file {short(str(path), 100)}: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:  # a NUL byte in the name
        raise ConfigError(f"config file {short(str(path), 100)}: {exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {where} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {where} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    try:
        _check_yaml_shape(text, where)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {where} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"config file {where} nests too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {where} must hold a mapping of keys, not a {type(data).__name__}")
    return data

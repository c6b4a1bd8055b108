from pathlib import Path

import pytest

from vlmcompress.runner import RunConfig

ROOT = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(ROOT.rglob("*.yaml"))  # configs/ and configs/gpu/


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "lvlm_compress_bench.yaml", "effivlm_bench.yaml"}
    gpu = {p.name for p in CONFIGS if p.parent.name == "gpu"}
    assert {n for n in gpu if n.startswith("lvlm_compress_bench_")} and {n for n in gpu if n.startswith("effivlm_bench_")}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_validates(path):
    cfg = RunConfig.from_yaml(path)
    settings = cfg.validate()
    assert settings[0].is_baseline
    assert len(settings) == 1 + len(set(s.normalized for s in settings[1:]))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "gpu"], ids=lambda p: p.name)
def test_gpu_configs_use_real_models_tasks_and_knobs(path):
    """The GPU grids run hub models on real benchmarks, in the checkpoint's dtype, with the
    papers' full-scale KV knobs (groups of 128, a 128-token residual)."""
    from vlmcompress.tasks import TASKS

    cfg = RunConfig.from_yaml(path)
    settings = cfg.validate()
    assert all("/" in m for m in cfg.models) and cfg.dtype == "auto" and cfg.device == "cuda"
    assert all(TASKS.get(t).category == "real benchmark" for t in cfg.tasks)
    assert cfg.calibration_task not in cfg.tasks  # calibration never sees an evaluated row
    for s in settings:
        for m in s.methods:
            for knob in ("group", "k_group", "v_group", "residual"):
                if hasattr(m, knob) and m.hook == "kv_cache":
                    assert getattr(m, knob) == 128, (s.spec, knob)

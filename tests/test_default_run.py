"""`vlmcompress run` with no arguments shows the point of the tool: the baseline and settings
of every method family on the embedded model, and one stack; configs/default.yaml says the
same.  (Its run time is measured by hand, never asserted here.)"""

from pathlib import Path

from vlmcompress.runner import RunConfig
from vlmcompress.tasks import SYNTHETIC_SUITE

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def test_the_defaults_build_and_cover_every_hook_family():
    cfg = RunConfig()
    settings = cfg.validate()
    assert cfg.models == ["embedded"] and list(cfg.tasks) == list(SYNTHETIC_SUITE)
    assert settings[0].is_baseline
    singles = [s for s in settings if len(s.methods) == 1]
    hooks = {s.methods[0].hook for s in singles}
    assert hooks == {"weights", "kv_cache", "attention", "vision"}
    fams = {(s.methods[0].hook, s.methods[0].family) for s in singles}
    assert ("weights", "weight_quantization") in fams and ("weights", "weight_pruning") in fams
    assert ("kv_cache", "kv_cache") in fams
    assert ("attention", "kv_eviction") in fams  # an eviction method, not only FastV
    assert ("vision", "vision_tokens") in fams
    assert any(s.methods[0].name == "fastv" for s in singles)  # visual tokens pruned inside the LLM too
    stacks = [s for s in settings if len(s.methods) > 1]
    assert len(stacks) == 1
    assert {m.hook for m in stacks[0].methods} == {"weights", "vision", "kv_cache"}


def test_default_yaml_mirrors_the_defaults():
    defaults, shipped = RunConfig(), RunConfig.from_yaml(DEFAULT_YAML)
    assert [s.normalized for s in shipped.validate()] == [s.normalized for s in defaults.validate()]
    for key in ("model", "tasks", "batch_size", "seed", "output", "limit"):
        assert getattr(shipped, key) == getattr(defaults, key), f"configs/default.yaml {key}={getattr(shipped, key)!r}, RunConfig default {getattr(defaults, key)!r}"


def test_the_report_groups_the_defaults_into_every_family():
    from vlmcompress.report.summary import FAMILY_LABELS, STACK, setting_family

    fams = {setting_family(s) for s in RunConfig().settings}
    assert fams == {"baseline", STACK, *FAMILY_LABELS.values()}

"""Fuzzing the three ways a user describes a run: the compression-spec parser
(``build_setting``), the YAML config loader (``RunConfig.from_yaml`` + ``validate``) and
the ``run`` command's options (no model is ever loaded: ``run`` is replaced by a stub that
only validates).  Whatever the input, never a traceback: success, or one
:class:`~vlmcompress.errors.VlmCompressError` / exit status 2 with exactly one line naming
the bad part.

CI-sized: ``FUZZ_EXAMPLES`` examples per target (default 200; hypothesis's database is off
so every run is the seeded, derandomised same)."""

import atexit
import dataclasses
import os
import re
import shutil
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmcompress.cli import cli
from vlmcompress.errors import ConfigError, VlmCompressError
from vlmcompress.methods import METHODS, Setting, build_setting
from vlmcompress.runner import RunConfig
from vlmcompress.tasks import TASKS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") is None, database=None, suppress_health_check=list(HealthCheck))
TRIED: dict[str, int] = {}

METHOD_NAMES = [n for n in METHODS.names() if not n.startswith(("test_", "fault_"))]
KNOBS = sorted({f.name for n in METHOD_NAMES for f in dataclasses.fields(METHODS.get(n))})
CONFIG_KEYS = [f.name for f in dataclasses.fields(RunConfig)] + ["compress", "models"]


def _one_line(msg: str) -> str:
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg[:300])
    assert len(msg) < 1200, msg[:300]
    return msg


# ----------------------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["4", "0.5", "2:4", "decoder", "all", "sum", "none", "nan", "inf", "-1", "1e309", "", " ", "'", '"']),
)


def _knob_value():
    return st.one_of(
        st.integers(min_value=-5, max_value=300).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["true", "false", "none", "null", "'x'", '"decoder"', "2:4", "all", "avg", "sum", "channel", "tensor", "(", ")", "=", ",", "+", "''"]),
        st.text(alphabet=string.ascii_letters + string.digits + "_.:-'\"()=,+ ", max_size=12),
    )


@st.composite
def structured_specs(draw):
    methods = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.one_of(st.sampled_from(METHOD_NAMES), st.sampled_from(["none", "nosuch", "rtn_", "_x", "9a", ""])))
        knobs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(KNOBS), st.text(alphabet=string.ascii_lowercase + "_", max_size=8)), _knob_value()), max_size=4))
        if knobs or draw(st.booleans()):
            methods.append(f"{name}(" + ",".join(f"{k}={v}" for k, v in knobs) + ")")
        else:
            methods.append(name)
    return draw(st.sampled_from(["+", " + ", "+ "])).join(methods)


raw_specs = st.text(alphabet=string.ascii_lowercase[:12] + "rtnkiv_0123456789()=,+.'\" -\n\t", max_size=80)

yaml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(KNOBS)), inner, max_size=4)), max_leaves=12)


@st.composite
def list_form_specs(draw):
    items = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            items.append(draw(structured_specs()))
        elif kind == 1:
            items.append({draw(st.sampled_from(METHOD_NAMES)): draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(KNOBS), scalars, max_size=3)))})
        else:
            items.append(draw(yaml_values))
    return items if draw(st.booleans()) else (items[0] if items else {})


# ----------------------------------------------------------------------------- 1. the spec parser
def _check_spec(spec) -> None:
    try:
        setting = build_setting(spec)
    except ConfigError as exc:
        _one_line(str(exc))
        return
    assert isinstance(setting, Setting)
    assert build_setting(setting.normalized).normalized == setting.normalized  # what is stored reads back


@FUZZ
@given(spec=st.one_of(structured_specs(), raw_specs, list_form_specs()))
def test_fuzz_the_spec_parser(spec):
    TRIED["spec parser"] = TRIED.get("spec parser", 0) + 1
    _check_spec(spec)


# ----------------------------------------------------------------------------- 2. the YAML loader
@st.composite
def config_mappings(draw):
    data = {}
    for key in draw(st.lists(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)), max_size=6, unique=True)):
        if key == "tasks":
            value = draw(st.one_of(st.lists(st.sampled_from(TASKS.names() + ["nosuch"]), max_size=3), st.sampled_from(["synth_count", "synth_count, synth_ocr"]), yaml_values))
        elif key == "compress":
            value = draw(st.one_of(st.lists(st.one_of(structured_specs(), list_form_specs()), max_size=3), structured_specs(), yaml_values))
        elif key in ("limit", "batch_size", "seed", "max_new_tokens", "calibration_samples", "calibration_seed"):
            value = draw(st.one_of(st.integers(min_value=-3, max_value=2**40), yaml_values))
        elif key in ("device", "dtype", "device_map", "attn_implementation", "timing"):
            value = draw(st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:x", "float16", "bfloat16", "sdpa", "eager", "flash_attention_2", "batch", "request", "balanced"]), yaml_values))
        else:
            value = draw(yaml_values)
        data[key] = value
    return data


_YAML_TOKENS = ["model: ", "tasks: ", "compress:\n  - ", "limit: ", "&a ", "*a", "[", "]", "{", "}", ": ", "- ", "\n", "  ", "'", '"', "!!python/object:os.system ", "!!binary ", "<<: *a\n", "---\n", "...\n", "%YAML 1.1\n", "? ", "|\n  ", ">\n  ", "#", "\t", "synth_count", "rtn(bits=4)", "\ufeff", "\x00"]


@st.composite
def yaml_texts(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return yaml.safe_dump(draw(config_mappings()), allow_unicode=draw(st.booleans())).encode()
    if kind == 1:
        text = "".join(draw(st.lists(st.sampled_from(_YAML_TOKENS), max_size=25)))
        return text.encode("utf-8", errors="surrogatepass") if draw(st.booleans()) else text.encode("utf-8", "replace")
    if kind == 2:
        return draw(st.binary(max_size=60))
    base = yaml.safe_dump(draw(config_mappings())).encode()
    cut = draw(st.integers(0, len(base)))
    return base[:cut] + draw(st.binary(max_size=8)) + base[cut:]


_TMP = tempfile.mkdtemp(prefix="vlmc-fuzz-")
atexit.register(shutil.rmtree, _TMP, True)


@FUZZ
@given(text=yaml_texts())
def test_fuzz_the_yaml_loader(text):
    TRIED["yaml loader"] = TRIED.get("yaml loader", 0) + 1
    path = Path(_TMP) / "c.yaml"
    path.write_bytes(text)
    try:
        cfg = RunConfig.from_yaml(path)
        cfg.validate()
        cfg.to_dict()
    except ConfigError as exc:
        _one_line(str(exc))


# ----------------------------------------------------------------------------- 3. the CLI options
OPTIONS = {
    "--model": st.one_of(st.sampled_from(["embedded", "org/name", "/no/such", ""]), st.text(max_size=20)),
    "--tasks": st.one_of(st.lists(st.sampled_from(TASKS.names()[:8] + ["nosuch", ""]), max_size=3).map(",".join), st.text(max_size=20)),
    "--compress": st.one_of(structured_specs(), raw_specs),
    "--limit": st.one_of(st.integers(-5, 2**40).map(str), st.text(max_size=6)),
    "--batch-size": st.one_of(st.integers(-5, 2**20).map(str), st.text(max_size=6)),
    "--seed": st.one_of(st.integers(-(2**40), 2**40).map(str), st.text(max_size=6)),
    "--output": st.one_of(st.sampled_from(["o", "o/p", "", " "]), st.text(max_size=20)),
    "--device": st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:9", "cuda:-1", "cuda:x", "tpu", "mps", ""]), st.text(max_size=8)),
    "--dtype": st.one_of(st.sampled_from(["auto", "float32", "float16", "bfloat16", "float8", ""]), st.text(max_size=8)),
    "--device-map": st.one_of(st.sampled_from(["auto", "balanced", "sequential", "everywhere", ""]), st.text(max_size=8)),
    "--attn-implementation": st.one_of(st.sampled_from(["sdpa", "eager", "flash_attention_2", "flex", ""]), st.text(max_size=8)),
    "--timing": st.one_of(st.sampled_from(["batch", "request", "wall", ""]), st.text(max_size=8)),
    "--max-new-tokens": st.one_of(st.integers(-5, 2**40).map(str), st.text(max_size=6)),
    "--data-dir": st.one_of(st.sampled_from([".", "/no/such", ""]), st.text(max_size=10)),
    "--toxicity-model": st.one_of(st.sampled_from([".", "/no/such"]), st.text(max_size=10)),
    "--executor": st.one_of(st.sampled_from(["local", "ray", "spark", ""]), st.text(max_size=8)),
    "--ray-address": st.one_of(st.sampled_from(["auto", "ray://h:10001", ""]), st.text(max_size=8)),
    "--ray-workers": st.one_of(st.integers(-2, 2**20).map(str), st.text(max_size=6)),
    "--cpus-per-cell": st.one_of(st.sampled_from(["1", "0", "-1", "nan", "inf", "0.5", "1e9"]), st.text(max_size=6)),
    "--gpus-per-cell": st.one_of(st.sampled_from(["1", "0", "-1", "nan", "inf", "0.5"]), st.text(max_size=6)),
}
FLAGS = ["--trust-remote-code", "--wait", "--retry-failed", "--quiet", "--nosuch-flag"]


@st.composite
def cli_args(draw):
    args, given = [], []
    for opt in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=6)):
        value = draw(OPTIONS[opt]).replace("\x00", "")
        args += [opt, value]
        given.append((opt, value))
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True)):
        args.append(flag)
        given.append((flag, ""))
    if draw(st.integers(0, 9)) == 0:
        args.insert(0, draw(st.sampled_from(["/no/such.yaml", "-", "--"])))
        given.append(("config", args[0]))
    return args, given


def _fake_run(config, *, echo=None, wait=False, retry_failed=False, progress=None):
    """Everything ``run`` checks before any work, and nothing else."""
    from vlmcompress.runner.runner import resolve_device

    config.validate()
    resolve_device(config.device)
    return {"cells": [], "failed_cells": []}


def _names_the_bad_part(line: str, given) -> bool:
    words = {"config", "compression", "setting", "method", "knob", "task", "option", "argument"}
    for opt, value in given:
        bare = opt.lstrip("-")
        words |= {opt, bare, bare.replace("-", "_")}
        if value:
            words |= {value[:15], repr(value)[1:15]} | set(re.findall(r"[A-Za-z_][A-Za-z0-9_]+", value))
    return any(w and w in line for w in words)


@pytest.fixture(scope="module")
def stubbed_run():
    import vlmcompress.runner as runner_pkg

    real = runner_pkg.run
    runner_pkg.run = _fake_run
    yield
    runner_pkg.run = real


@FUZZ
@given(case=cli_args())
def test_fuzz_the_run_options(stubbed_run, case):
    TRIED["run options"] = TRIED.get("run options", 0) + 1
    args, given = case
    with tempfile.TemporaryDirectory() as cwd:
        old = os.getcwd()
        os.chdir(cwd)
        try:
            res = CliRunner().invoke(cli, ["run", *args])
        finally:
            os.chdir(old)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert res.exit_code in (0, 2), (args, res.exit_code, res.output)
    if res.exit_code == 2:
        lines = res.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
        _one_line(lines[0])
        assert _names_the_bad_part(lines[0], given), (args, lines[0])


def test_fuzz_counts():
    """Runs last in this file: how many inputs each target tried."""
    if len(TRIED) < 3:
        pytest.skip("counts only after the three fuzz targets ran")
    print("\nfuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in TRIED.items()))
    assert all(v >= min(EXAMPLES, 100) for v in TRIED.values()) and len(TRIED) == 3


def test_vlmcompress_error_is_the_base_of_config_error():
    assert issubclass(ConfigError, VlmCompressError)

from dataclasses import dataclass
from typing import Literal

import pytest

from vlmcompress.errors import ConfigError
from vlmcompress.methods import METHODS, CompressionMethod, build_setting, parse_spec


@METHODS.register
@dataclass
class _SpecProbe(CompressionMethod):
    """Test-only method with one knob of each type."""

    name = "spec_probe"
    hook = "weights"
    bits: int = 4
    frac: float = 0.5
    axis: Literal["channel", "token"] = "channel"
    flag: bool = False

    def validate(self):
        self.check_choice("bits", (2, 4, 8))
        self.check_range("frac", 0.0, 1.0)


def test_parse_spec_reads_names_knobs_and_types():
    assert parse_spec("none") == []
    assert parse_spec("a(x=1, y=0.5)+b+c(z=true,w=channel,q='x+y')") == [
        ("a", {"x": 1, "y": 0.5}),
        ("b", {}),
        ("c", {"z": True, "w": "channel", "q": "x+y"}),
    ]


@pytest.mark.parametrize("bad", ["rtn(bits=4", "rtn)bits=4(", "rtn(bits)", "", "a(x=1,x=2)", "3rtn"])
def test_malformed_specs_are_refused(bad):
    with pytest.raises(ConfigError, match="malformed"):
        parse_spec(bad)


def test_build_setting_coerces_and_validates_knobs():
    s = build_setting("spec_probe(bits=8,frac=1,axis=token,flag=true)")
    (m,) = s.methods
    assert (m.bits, m.frac, m.axis, m.flag) == (8, 1.0, "token", True)
    assert isinstance(m.frac, float)
    assert s.spec == "spec_probe(bits=8,frac=1,axis=token,flag=true)"
    assert s.normalized == "spec_probe(bits=8,frac=1.0,axis=token,flag=true)"
    assert build_setting("none").is_baseline


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("spec_probe(bits=5)", "bits=5 is not allowed; allowed: 2, 4, 8"),
        ("spec_probe(frac=1.2)", "frac=1.2 is out of range"),
        ("spec_probe(axis=diagonal)", "axis='diagonal' is not allowed; allowed: channel, token"),
        ("spec_probe(bits=2.5)", "bits=2.5 must be an integer"),
        ("spec_probe(flag=3)", "flag=3 must be true or false"),
        ("spec_probe(colour=1)", "unknown knob 'colour'; known: bits, frac, axis, flag"),
        ("nosuch(bits=4)", "unknown method 'nosuch'"),
    ],
)
def test_bad_knobs_and_names_name_the_problem(spec, fragment):
    with pytest.raises(ConfigError) as err:
        build_setting(spec)
    assert fragment in str(err.value)


def test_yaml_form_equals_string_form():
    a = build_setting([{"spec_probe": {"bits": 2}}])
    b = build_setting("spec_probe(bits=2)")
    assert a.normalized == b.normalized


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        build_setting("nosuch")
    assert "spec_probe" in str(err.value)
    assert "spec_probe" in METHODS.names()

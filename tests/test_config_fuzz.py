"""Random (mostly invalid) configurations raise one clear ConfigError naming the key.

Hypothesis builds configuration tables from real section/parameter names, near-miss
names and hostile values (NaN, inf, negative bits, wrong types, unknown noise-model
classes, ``module:Class`` paths that do not import) and checks that loading either
succeeds with a valid configuration or raises :class:`anasim.ConfigError` whose message
names the offending key — never another exception.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anasim
from anasim.config import describe_parameters, dumps_toml, load_config
from anasim.errors import ConfigError

RECORDS = describe_parameters()
SECTIONS = sorted({r.section for r in RECORDS} - {"data"})
NAMES = {s: sorted({r.name for r in RECORDS if r.section == s}) for s in SECTIONS}

hostile = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(-1), st.just(-7.5), st.just(0), st.just(1e308),
    st.just("abs_max"), st.just("no-such-choice"), st.just(True), st.just([1, "a"]), st.just({"x": 1}),
    st.just("os:system"), st.just("not_a_module_xyz:Thing"), st.just("anasim.errors:AnasimError"),
    st.integers(-10, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=6),
)


@st.composite
def tables(draw):
    cfg = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS + ["forwrd", "noise"]), max_size=3, unique=True)):
        names = NAMES.get(section, ["out_noise"])
        keys = draw(st.lists(st.sampled_from(names + ["type", "out_nois", "typ"]), max_size=4, unique=True))
        cfg[section] = {k: draw(hostile) for k in keys}
    if draw(st.booleans()):
        cfg["layers"] = [{"match": draw(st.sampled_from(["*", "conv*", ""])),
                          draw(st.sampled_from(["digital", "forward", "bogus"])): draw(hostile)}]
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(tables())
def test_random_configs_fail_cleanly(cfg):
    try:
        loaded = load_config(cfg)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.strip().split("\n")[0]
        # the message names one of the keys or sections that were given
        given = {k for sec in cfg.values() if isinstance(sec, dict) for k in sec} | set(cfg)
        given |= {k for lo in cfg.get("layers", []) for k in lo}
        assert any(str(k) in msg for k in given if k) or "layers" in msg, msg
        return
    # accepted: it must be a valid configuration that round-trips exactly
    assert load_config(loaded.to_dict()) == loaded
    for section in ("forward", "mapping"):
        for value in getattr(loaded, section).to_dict().values():
            assert not (isinstance(value, float) and math.isnan(value))


def test_random_toml_text_fails_cleanly():
    """Syntax errors in a TOML file are ConfigErrors naming the file."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "bad.toml"
        p.write_text("[forward]\nout_noise = = 0.1\n")
        try:
            anasim.load_config(p)
        except ConfigError as exc:
            assert "bad.toml" in str(exc)
        else:
            raise AssertionError("a broken TOML file was accepted")
        p.write_text(dumps_toml({"forward": {"out_noise": 0.04}}))
        assert anasim.load_config(p).forward.out_noise == 0.04

"""Tests of anasim.config: meta-tests of every field, round trips, presets, overrides."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import operator
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from anasim.config import (
    AIHWKIT_FORWARD,
    AnalogConfig,
    ForwardParameters,
    Interval,
    LayerOverride,
    MappingParameters,
    Section,
    TypedFactory,
    apply_overrides,
    check_patterns,
    describe_parameters,
    dump_config,
    format_parameters,
    list_presets,
    load_config,
    param,
    preset,
    register_section,
    split_sizes,
    unmatched_patterns,
    unregister_section,
)
from anasim.config import AIHWKIT_MAPPING as AIHWKIT_MAPPING_DATA
from anasim.config.describe import section_classes
from anasim.config.io import dumps_toml, loads_toml
from anasim.config.schema import ANASIM_ONLY_FORWARD
from anasim.errors import ConfigError



def _note_value(text: str):
    """The value of an ``aihwkit`` note's right-hand side: a number, a boolean, an
    arithmetic expression of numbers (``1/(2**7 - 2)``) or an aihwkit enum name."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
            return node.value
        if isinstance(node, ast.Name):  # enum member, e.g. ABS_MAX
            return node.id
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot read aihwkit note value {text!r}")

    return ev(ast.parse(text.strip(), mode="eval").body)


def documented_aihwkit(cls, owner: str) -> tuple[dict, set]:
    """aihwkit's defaults as the fields' ``aihwkit`` notes (what ``anasim params`` prints)
    state them, e.g. ``IOParameters.out_noise = 0.06``: an account of aihwkit's defaults
    written independently of the presets' data, which the tests compare it with."""
    out = {}
    for f in dataclasses.fields(cls):
        note = f.metadata.get("aihwkit", "")
        if note.startswith(f"{owner}.{f.name} = "):
            out[f.name] = _note_value(note.partition(" = ")[2])
    # through the section's own validation: enum spellings ("ABS_MAX") become the choices
    return cls(**out).to_dict(), set(out)


AIHWKIT_IO, _IO_NOTED = documented_aihwkit(ForwardParameters, "IOParameters")
AIHWKIT_MAPPING, _MAPPING_NOTED = documented_aihwkit(MappingParameters, "MappingParameter")


# ---------------------------------------------------------------------------------------
# meta-tests: every field documented and validated (sklearn's check_param_validation)
# ---------------------------------------------------------------------------------------
def all_fields():
    for section, variant, cls in section_classes():
        for f in dataclasses.fields(cls):
            yield pytest.param(cls, f, id=f"{section}{':' + variant if variant else ''}.{f.name}")


def invalid_values(f: dataclasses.Field) -> list:
    valid = f.metadata["valid"]
    if isinstance(valid, Interval):
        bad = ["0.5", True, None, [1]]
        if valid.kind == "int":
            bad.append(1.5)
        else:
            bad += [math.nan, math.inf, -math.inf]
        if valid.low is not None:
            bad.append(valid.low if valid.closed in ("right", "neither") else valid.low - 1)
        if valid.high is not None:
            bad.append(valid.high if valid.closed in ("left", "neither") else valid.high + 1)
        return bad
    if isinstance(valid, tuple):
        return ["definitely_not_a_choice", 3, None]
    if valid is bool:
        return ["yes", 1, None]
    if valid is str:
        return [5, None]
    # a callable 'valid': its own examples, else values no validator should accept
    return list(f.metadata.get("invalid", ("<not a valid value>", object())))


@pytest.mark.parametrize("cls,f", list(all_fields()))
def test_every_field_documented(cls, f):
    md = f.metadata
    assert isinstance(md.get("doc"), str) and len(md["doc"].split()) >= 4, "needs a meaning"
    assert isinstance(md.get("unit"), str), "needs a unit key ('' or '1' if dimensionless)"
    if cls in (ForwardParameters, MappingParameters, LayerOverride):
        assert md["unit"], "built-in sections spell their unit out ('1' if dimensionless)"
    assert md.get("valid") is not None, "needs a 'valid' specification"
    assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


@pytest.mark.parametrize("cls,f", list(all_fields()))
def test_every_field_validated(cls, f):
    base = {"match": "*"} if cls is LayerOverride else {}
    for bad in invalid_values(f):
        with pytest.raises(ConfigError) as info:
            cls(**{**base, f.name: bad})
        assert re.search(rf"\b{f.name}\b", str(info.value)), str(info.value)


def test_defaults_are_valid_and_ideal():
    for _, _, cls in section_classes():
        cls()  # every default passes its own validation
    assert AnalogConfig() == preset("ideal") == load_config(None) == load_config({})
    assert AnalogConfig().forward.is_ideal


def test_describe_parameters():
    records = describe_parameters()
    names = {(r.section, r.name) for r in records}
    for cls in (ForwardParameters, MappingParameters, LayerOverride):
        for f in dataclasses.fields(cls):
            assert (cls.section, f.name) in names
    fwd = describe_parameters("forward")
    assert [r.name for r in fwd] == ForwardParameters.field_names()
    r = next(r for r in fwd if r.name == "out_noise")
    assert (r.type, r.default, r.unit) == ("float", 0.0, "normalized output")
    assert r.valid == "a float in the range [0.0, inf)" and "0.06" in r.aihwkit
    assert "noise" in r.meaning
    text = format_parameters(records)
    assert "[forward]" in text and "ir_drop_g_ratio" in text and "[layers]" in text
    with pytest.raises(ConfigError, match="Did you mean 'forward'"):
        describe_parameters("forwad")
    assert "Parameters" in ForwardParameters.__doc__ and "out_noise : float" in ForwardParameters.__doc__


# ---------------------------------------------------------------------------------------
# validation messages
# ---------------------------------------------------------------------------------------
def test_message_format_and_closest_match():
    with pytest.raises(ConfigError) as e:
        ForwardParameters(out_noise=-0.1)
    assert str(e.value) == ("The 'out_noise' parameter of [forward] must be a float in the "
                            "range [0.0, inf). Got -0.1 instead.")
    with pytest.raises(ConfigError, match=r"Unknown parameter 'out_nosie' in \[forward\]\. Did you mean 'out_noise'\?"):
        load_config({"forward": {"out_nosie": 0.1}})
    with pytest.raises(ConfigError, match="Did you mean 'mapping'.*Valid sections: forward, mapping, layers"):
        load_config({"maping": {}})
    with pytest.raises(ConfigError, match="Did you mean 'abs_max'"):
        ForwardParameters(noise_management="absmx")
    with pytest.raises(ConfigError, match="'max_input_size'.*an int in the range"):
        MappingParameters(max_input_size=-1)
    with pytest.raises(ConfigError, match="'inp_res'.*finite"):
        ForwardParameters(inp_res=math.nan)
    with pytest.raises(ConfigError, match="'out_bound'"):
        ForwardParameters(out_bound="10")
    with pytest.raises(ConfigError):
        ForwardParameters().replace(out_noize=1.0)
    assert isinstance(ConfigError("x"), ValueError) and isinstance(ConfigError("x"), TypeError)


def test_coercion_and_aihwkit_enum_spellings():
    f = ForwardParameters(inp_res=np.int64(254), out_noise=np.float32(0.5), inp_sto_round=np.bool_(True),
                          noise_management="AbsMax", w_noise_type="PCMRead", w_noise=1,
                          bound_management="ITERATIVE")
    assert f.inp_res == 254.0 and type(f.inp_res) is float and type(f.out_noise) is float
    assert f.inp_sto_round is True
    assert (f.noise_management, f.w_noise_type, f.bound_management) == ("abs_max", "pcm_read", "iterative")
    m = MappingParameters(max_input_size=256.0)
    assert m.max_input_size == 256 and type(m.max_input_size) is int


@pytest.mark.parametrize("kwargs,msg", [
    (dict(noise_management="constant"), "nm_thres > 0"),
    (dict(noise_management="abs_max", inp_bound=0.5), "inp_bound = 1.0"),
    (dict(noise_management="none", inp_bound=0.0, inp_res=254), "inp_bound > 0"),
    (dict(out_res=254), "out_bound > 0"),
    (dict(w_noise=0.02), "w_noise_type"),
    (dict(out_nonlinearity=0.1), "out_bound > 0"),
])
def test_cross_field_rules(kwargs, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        ForwardParameters(**kwargs)


def test_resolution_semantics():
    f = ForwardParameters(inp_res=254, out_res=254, out_bound=10.0)
    assert f.input_step == pytest.approx(2 / 254) and f.output_step == pytest.approx(20 / 254)
    assert ForwardParameters(inp_res=0.003937).input_step == pytest.approx(0.007874)
    assert ForwardParameters(inp_res=1.0).input_step == 2.0  # exactly 1 is a resolution (aihwkit)
    assert ForwardParameters(inp_res=-1).input_step is None and ForwardParameters().output_step is None
    assert ForwardParameters(inp_res=254, is_perfect=True).input_step is None
    assert ForwardParameters().output_limit == math.inf and f.output_limit == 10.0
    assert not ForwardParameters(out_noise=0.01).is_ideal
    assert not ForwardParameters(noise_management="none").is_ideal  # inputs clip at ±1
    assert ForwardParameters(noise_management="none", inp_bound=0.0).is_ideal
    assert split_sizes(1152, 512) == [384, 384, 384] and split_sizes(1000, 0) == [1000]
    assert split_sizes(513, 512) == [257, 256] and split_sizes(512, 512) == [512]
    assert MappingParameters().input_chunks(1152) == [384] * 3


# ---------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------
def test_presets_listed_and_unknown():
    assert set(list_presets()) == {"ideal", "aihwkit", "hwa-standard"}
    assert all(len(d) > 40 for d in list_presets().values())
    with pytest.raises(ConfigError, match="Did you mean 'aihwkit'.*ideal, aihwkit, hwa-standard"):
        preset("aihwkt")
    assert preset("HWA_standard") == preset("hwa-standard") == load_config("hwa-standard")


def test_preset_aihwkit_values():
    cfg = preset("aihwkit")
    # every [forward] field and every aihwkit [mapping] field carries its aihwkit default
    # (the anasim-only fields, e.g. the circuit IR-drop model's, say they have none)
    assert _IO_NOTED == set(ForwardParameters.field_names()) - set(ANASIM_ONLY_FORWARD)
    assert all(f.metadata["aihwkit"].startswith("(none") for f in dataclasses.fields(ForwardParameters)
               if f.name in ANASIM_ONLY_FORWARD)
    assert _MAPPING_NOTED == set(MappingParameters.field_names()) - {"fold_batchnorm"}
    assert cfg.forward.to_dict() == AIHWKIT_IO
    assert cfg.mapping == MappingParameters(**{k: AIHWKIT_MAPPING[k] for k in _MAPPING_NOTED},
                                            fold_batchnorm=False)
    assert cfg.forward.input_step == pytest.approx(2 / 126)
    assert cfg.forward.output_step == pytest.approx(24 / 510)
    # the one written copy: the preset is made of it, and the tile model falls back on it
    assert dict(AIHWKIT_FORWARD) == AIHWKIT_IO
    assert {k: AIHWKIT_MAPPING_DATA[k] for k in _MAPPING_NOTED} == \
        {k: AIHWKIT_MAPPING[k] for k in _MAPPING_NOTED}
    from anasim.analog.tile import Periphery

    assert Periphery.from_params(object()) == Periphery.from_params(cfg.forward)


def test_preset_hwa_standard_values():
    f = preset("hwa-standard").forward
    expect = dict(AIHWKIT_IO, inp_res=254.0, out_res=254.0, bound_management="none",
                  noise_management="constant", nm_thres=1.0, w_noise=0.0175, w_noise_type="pcm_read",
                  ir_drop=1.0, out_noise=0.04, out_bound=10.0)
    assert f.to_dict() == expect
    m = preset("hwa-standard").mapping
    assert (m.max_input_size, m.max_output_size, m.weight_scaling_omega, m.weight_scaling_columnwise,
            m.digital_bias) == (512, 0, 1.0, True, True)


def test_preset_key_in_file_then_changes():
    cfg = load_config({"preset": "aihwkit", "forward": {"out_noise": 0.02}})
    assert cfg.forward == preset("aihwkit").forward.replace(out_noise=0.02)
    assert cfg.mapping == preset("aihwkit").mapping


# ---------------------------------------------------------------------------------------
# files, the issue's example, round trips
# ---------------------------------------------------------------------------------------
ISSUE_TOML = """
[forward]
inp_res = 254        # or 0.003937
out_res = 254
out_bound = 10.0
out_noise = 0.04
w_noise = 0.02
w_noise_type = "additive_constant"
noise_management = "abs_max"
bound_management = "iterative"
[mapping]
max_input_size = 512
weight_scaling_omega = 1.0
[[layers]]
match = "/conv1/*"
digital = true
"""


def test_issue_example(tmp_path):
    p = tmp_path / "hw.toml"
    p.write_text(ISSUE_TOML)
    cfg = load_config(p)
    assert cfg.forward.inp_res == 254.0 and cfg.forward.w_noise_type == "additive_constant"
    assert cfg.mapping.weight_scaling_omega == 1.0
    assert cfg.for_layer("/conv1/Conv").digital and not cfg.for_layer("/fc/Gemm").digital
    assert load_config(str(p)) == cfg
    q = dump_config(cfg, tmp_path / "hw.json")
    assert load_config(q) == cfg and json.loads(q.read_text())["layers"][0]["digital"] is True


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[forward]\nout_noise = = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    bad.write_text("[forward]\nout_noise = -1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: The 'out_noise' parameter"):
        load_config(bad)
    (tmp_path / "x.yaml").write_text("")
    with pytest.raises(ConfigError, match="use .toml or .json"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="No configuration file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="Did you mean 'ideal'"):
        load_config("idael")


def test_dump_refuses_overwrite(tmp_path):
    p = dump_config(preset("aihwkit"), tmp_path / "a.toml")
    before = p.read_text()
    with pytest.raises(ConfigError, match="exists; refusing to overwrite"):
        dump_config(AnalogConfig(), p)
    assert p.read_text() == before
    dump_config(AnalogConfig(), p, overwrite=True)
    assert load_config(p) == AnalogConfig()
    dump_config(preset("hwa-standard"), tmp_path / "c.toml", comments=True, only_changed=True)
    assert load_config(tmp_path / "c.toml") == preset("hwa-standard")


def _valid_values(valid, draw):
    if isinstance(valid, Interval):
        if valid.kind == "int":
            lo = valid.low if valid.low is not None else -10**6
            return draw(st.integers(int(lo), int(min(valid.high or 10**6, 10**6))))
        return draw(st.floats(valid.low, valid.high, allow_nan=False, allow_infinity=False,
                              exclude_min=valid.closed in ("right", "neither") and valid.low is not None,
                              exclude_max=valid.closed in ("left", "neither") and valid.high is not None))
    if isinstance(valid, tuple):
        return draw(st.sampled_from(valid))
    if valid is bool:
        return draw(st.booleans())
    raise AssertionError(valid)


@st.composite
def sections(draw, cls):
    out = {}
    for f in dataclasses.fields(cls):
        if draw(st.integers(0, 3)) == 0:  # often keep the default: valid combinations
            continue
        if f.name == "adc_inl":  # a table (callable validator): the default or a valid curve
            out[f.name] = draw(st.sampled_from([[], [[-1.0, -1.0], [0.0, 0.02], [1.0, 1.0]]]))
            continue
        out[f.name] = _valid_values(f.metadata["valid"], draw)
    if cls is ForwardParameters:  # repair the cross-field rules rather than reject
        nm = out.get("noise_management", "abs_max")
        if nm != "none":
            out["inp_bound"] = 1.0
        if nm == "constant" and out.get("nm_thres", 0.0) == 0:
            out["nm_thres"] = 0.5
        if out.get("inp_bound", 1.0) == 0 or out.get("out_bound", 0.0) == 0:
            out.pop("inp_res", None), out.pop("out_res", None), out.pop("out_nonlinearity", None)
        if out.get("out_bound", 0.0) == 0:
            out.pop("adc_inl", None)
        if out.get("w_noise_type", "none") == "none":
            out.pop("w_noise", None)
        if out.get("ir_drop_model", "simple") == "circuit":
            out.pop("ir_drop", None)
        else:
            out.pop("wire_resistance", None)
    return cls(**out)


names = st.text(min_size=1, max_size=12)


@st.composite
def configs(draw):
    fwd, mp = draw(sections(ForwardParameters)), draw(sections(MappingParameters))
    layers = []
    for _ in range(draw(st.integers(0, 3))):
        match = draw(st.one_of(names, st.lists(names, min_size=1, max_size=3)))
        over = draw(sections(ForwardParameters)).to_dict()
        over["adc_inl"] = [list(p) for p in over["adc_inl"]]  # as a file gives it (a list)
        keys = draw(st.lists(st.sampled_from(sorted(over)), max_size=3, unique=True))
        mkeys = draw(st.lists(st.sampled_from(MappingParameters.field_names()), max_size=2, unique=True))
        mover = draw(sections(MappingParameters)).to_dict()
        layers.append(LayerOverride(match=match, digital=draw(st.sampled_from([None, True, False])),
                                    forward={k: over[k] for k in keys}, mapping={k: mover[k] for k in mkeys}))
    try:
        return AnalogConfig(fwd, mp, tuple(layers))
    except ConfigError:
        assume(False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_round_trip_toml_json(cfg):
    assert AnalogConfig.from_dict(loads_toml(cfg.to_toml())) == cfg
    assert AnalogConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert AnalogConfig.from_dict(loads_toml(cfg.to_toml(only_changed=True, comments=True))) == cfg
    assert load_config(cfg.to_dict()) == cfg
    with tempfile.TemporaryDirectory() as d:
        for ext in (".toml", ".json"):
            assert load_config(dump_config(cfg, Path(d) / f"c{ext}")) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(cfg) == hash(pickle.loads(pickle.dumps(cfg)))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(), max_size=2)), max_size=5))
def test_toml_writer_generic(d):
    assert loads_toml(dumps_toml({"t": d, "aot": [d, {"x": 1}]})) == {"t": d, "aot": [d, {"x": 1}]}


# ---------------------------------------------------------------------------------------
# per-layer overrides
# ---------------------------------------------------------------------------------------
def test_layer_overrides_by_glob():
    cfg = load_config({
        "forward": {"out_noise": 0.04, "inp_res": 254},
        "layers": [
            {"match": "/layer1/*", "forward": {"out_noise": 0.1, "inp_res": 126}},
            {"match": ["/layer1/conv2/Conv", "/fc/*"], "forward": {"out_noise": 0.2},
             "mapping": {"max_input_size": 256}},
            {"match": "/conv1/*", "digital": True},
            {"match": "/conv1/Conv", "digital": False},
            {"match": "/weird[0]/Conv", "digital": True},
        ]})
    a = cfg.for_layer("/layer1/conv1/Conv")
    assert (a.forward.out_noise, a.forward.inp_res, a.mapping.max_input_size) == (0.1, 126.0, 512)
    b = cfg.for_layer("/layer1/conv2/Conv")  # later entry wins per field
    assert (b.forward.out_noise, b.forward.inp_res, b.mapping.max_input_size) == (0.2, 126.0, 256)
    assert b.matched == ("/layer1/*", "/layer1/conv2/Conv", "/fc/*")
    assert not cfg.for_layer("/conv1/Conv").digital and cfg.for_layer("/conv1/Relu").digital
    assert cfg.for_layer("/weird[0]/Conv").digital  # exact name with glob characters
    c = cfg.for_layer("/other/Gemm")
    assert c.forward is cfg.forward and not c.digital and c.matched == ()
    nodes = ["/conv1/Conv", "/layer1/conv1/Conv", "/layer1/conv2/Conv", "/weird[0]/Conv"]
    assert unmatched_patterns(cfg, nodes) == ["/fc/*"]
    with pytest.raises(ConfigError, match="'/fc/\\*'"):
        check_patterns(cfg, nodes)
    check_patterns(cfg, nodes + ["/fc/Gemm"])


def test_layer_override_errors():
    with pytest.raises(ConfigError, match=r"\[\[layers\]\] entry 0.*Did you mean 'out_noise'"):
        load_config({"layers": [{"match": "*", "forward": {"out_nois": 1.0}}]})
    with pytest.raises(ConfigError, match=r"\[\[layers\]\] entry 1.*w_noise_type"):
        load_config({"layers": [{"match": "a"}, {"match": "*", "forward": {"w_noise": 0.1}}]})
    with pytest.raises(ConfigError, match="needs a 'match'"):
        load_config({"layers": [{"digital": True}]})
    with pytest.raises(ConfigError, match="Did you mean 'digital'"):
        load_config({"layers": [{"match": "*", "digitl": True}]})
    with pytest.raises(ConfigError, match="array of tables"):
        load_config({"layers": {"match": "*"}})
    # combination of two valid entries that is invalid for one layer: reported for that layer
    cfg = load_config({"forward": {"w_noise_type": "pcm_read"}, "layers": [
        {"match": "a*", "forward": {"w_noise": 0.1}}, {"match": "ab", "forward": {"w_noise_type": "none"}}]})
    with pytest.raises(ConfigError, match="For layer 'ab'"):
        cfg.for_layer("ab")


# ---------------------------------------------------------------------------------------
# --set overrides
# ---------------------------------------------------------------------------------------
def test_apply_overrides():
    cfg = apply_overrides(preset("aihwkit"), ["forward.out_noise=0.02", "mapping.max_input_size=256",
                                              "forward.noise_management=max", 'forward.w_noise_type="pcm_read"',
                                              "forward.w_noise = 1e-2", "forward.is_perfect=true"])
    f = cfg.forward
    assert (f.out_noise, f.noise_management, f.w_noise_type, f.w_noise, f.is_perfect) == (
        0.02, "max", "pcm_read", 0.01, True)
    assert cfg.mapping.max_input_size == 256 and cfg.mapping == preset("aihwkit").mapping.replace(max_input_size=256)
    assert AnalogConfig().with_overrides(["forward.out_noise=0.5"]).forward.out_noise == 0.5
    assert apply_overrides("ideal", []) == AnalogConfig()
    with pytest.raises(ConfigError, match="Did you mean 'out_noise'"):
        apply_overrides(AnalogConfig(), ["forward.out_nois=0.1"])
    with pytest.raises(ConfigError, match="Did you mean 'forward'"):
        apply_overrides(AnalogConfig(), ["froward.out_noise=0.1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(AnalogConfig(), ["forward.out_noise"])
    with pytest.raises(ConfigError, match="'out_noise'.*Got 'abc'"):
        apply_overrides(AnalogConfig(), ["forward.out_noise=abc"])
    with pytest.raises(ConfigError, match="TOML value"):
        apply_overrides(AnalogConfig(), ["forward.out_noise=1/2"])
    with pytest.raises(ConfigError, match=r"\[\[layers\]\]"):
        apply_overrides(AnalogConfig(), ["layers.digital=true"])


# ---------------------------------------------------------------------------------------
# extensible sections
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakePCM(Section):
    """A fake PCM noise model for the registry tests."""

    section: ClassVar[str] = "zz_noise"
    g_max: float = param(25.0, "Maximal conductance of a device.", unit="µS", valid=Interval(0.0, None, "neither"))
    prog_scale: float = param(1.0, "Scale of the programming noise.", unit="1", valid=Interval(0.0, None))


@dataclass(frozen=True)
class FakeIdeal(Section):
    """A fake noise-free model."""

    section: ClassVar[str] = "zz_noise"
    g_max: float = param(25.0, "Maximal conductance of a device.", unit="µS", valid=Interval(0.0, None, "neither"))


@pytest.fixture
def zz_noise():
    register_section("zz_noise", TypedFactory("zz_noise", {"pcm": FakePCM, "ideal": FakeIdeal}),
                     default=FakeIdeal)
    try:
        yield
    finally:
        unregister_section("zz_noise")


def test_registered_section(zz_noise, tmp_path):
    cfg = load_config({"zz_noise": {"type": "pcm", "prog_scale": 0.5},
                       "layers": [{"match": "fc", "zz_noise": {"prog_scale": 2.0}},
                                  {"match": "c*", "zz_noise": {"type": "ideal"}}]})
    assert cfg.zz_noise == FakePCM(prog_scale=0.5) == cfg.section("zz_noise")
    assert cfg.for_layer("fc").zz_noise == FakePCM(prog_scale=2.0)
    assert cfg.for_layer("conv").zz_noise == FakeIdeal()
    assert AnalogConfig().zz_noise == FakeIdeal()  # the registered default
    for ext in (".toml", ".json"):
        assert load_config(dump_config(cfg, tmp_path / f"c{ext}")) == cfg
    qual = load_config({"zz_noise": {"type": f"{__name__}:FakePCM", "g_max": 10.0}})
    assert qual.zz_noise == FakePCM(g_max=10.0)
    with pytest.raises(ConfigError, match="Did you mean 'pcm'"):
        load_config({"zz_noise": {"type": "pmc"}})
    with pytest.raises(ConfigError, match="Did you mean 'g_max'"):
        load_config({"zz_noise": {"type": "pcm", "gmax": 1.0}})
    assert apply_overrides(cfg, ["zz_noise.g_max=5"]).zz_noise == FakePCM(g_max=5.0, prog_scale=0.5)
    assert apply_overrides(AnalogConfig(), ['zz_noise={type="pcm"}']).zz_noise == FakePCM()
    assert apply_overrides(AnalogConfig(), ["zz_noise=pcm"]).zz_noise == FakePCM()
    assert {r.variant for r in describe_parameters("zz_noise")} == {"pcm", "ideal"}
    with pytest.raises(ConfigError, match="already registered"):
        register_section("zz_noise", FakePCM)
    with pytest.raises(ConfigError, match="built-in"):
        register_section("forward", FakePCM)


def test_unknown_section_until_registered():
    with pytest.raises(ConfigError, match="Unknown section 'zz_noise'"):
        load_config({"zz_noise": {"type": "pcm"}})


@pytest.mark.parametrize("name", ["ideal", "aihwkit", "hwa-standard"])
def test_presets_round_trip(name, tmp_path):
    cfg = preset(name)
    for ext in (".toml", ".json"):
        assert load_config(dump_config(cfg, tmp_path / f"p{ext}")) == cfg
    assert load_config(cfg.to_dict(only_changed=True)) == cfg


def test_device_sections_plug_in(tmp_path):
    from anasim.config import registered_sections

    assert list(registered_sections())[:4] == ["noise_model", "converter", "drift_compensation",
                                               "device_faults"]
    cfg = preset("aihwkit")
    assert cfg.noise_model.to_config()["type"] == "pcm"
    assert cfg.drift_compensation.to_config()["type"] == "global"
    cfg2 = apply_overrides(cfg, ["noise_model.prog_noise_scale=0.5"])
    assert cfg2 != cfg and cfg2.noise_model.to_config() == {"type": "pcm", "prog_noise_scale": 0.5}
    cfg3 = load_config({"preset": "aihwkit", "layers": [
        {"match": "/fc/*", "noise_model": {"read_noise_scale": 0.0}},
        {"match": "/conv1/*", "noise_model": {"type": "none"}}]})
    assert cfg3.for_layer("/fc/Gemm").noise_model.to_config() == {"type": "pcm", "read_noise_scale": 0.0}
    assert cfg3.for_layer("/conv1/Conv").section("noise_model").to_config()["type"] == "none"
    assert cfg3.for_layer("/conv1/Conv").noise_model is None  # typed: ideal devices are no model
    assert load_config(dump_config(cfg3, tmp_path / "d.toml")) == cfg3
    with pytest.raises(ConfigError, match="Did you mean 'pcm'"):
        load_config({"noise_model": {"type": "pmc"}})
    assert AnalogConfig().section("noise_model") is not None  # the devices' default (ideal) model
    assert AnalogConfig().noise_model is None


# ---------------------------------------------------------------------------------------
# typed device fields, one resolver, presets that keep their sections
# ---------------------------------------------------------------------------------------
def test_typed_device_fields():
    from anasim import devices

    ideal = AnalogConfig()
    assert ideal.noise_model is None and ideal.drift_compensation is None and ideal.faults is None
    assert isinstance(ideal.converter, devices.Converter)
    assert ideal.converter == devices.build_converter({"type": "single_pair"})
    assert ideal.sections == {}  # defaults are not written into the file
    cfg = load_config({
        "preset": "aihwkit", "converter": {"type": "dual_pair"},
        "device_faults": {"stuck_at_g_min_rate": 0.1},
        "layers": [{"match": "fc", "noise_model": {"type": "none"}, "drift_compensation": {"type": "none"},
                    "device_faults": {"stuck_at_g_min_rate": 0.0}},
                   {"match": "c*", "converter": {"type": "single_pair", "g_max": 40.0}}]})
    assert isinstance(cfg.noise_model, devices.NoiseModel) and cfg.noise_model.config_type == "pcm"
    assert isinstance(cfg.drift_compensation, devices.DriftCompensation)
    assert cfg.drift_compensation.config_type == "global"
    assert cfg.converter.config_type == "dual_pair"
    assert isinstance(cfg.faults, devices.DeviceFaults) and cfg.faults.params.stuck_at_g_min_rate == 0.1
    assert cfg.device_faults == devices.FaultParams(stuck_at_g_min_rate=0.1)  # the section itself
    fc, conv, other = cfg.for_layer("fc"), cfg.for_layer("conv"), cfg.for_layer("other")
    assert fc.noise_model is None and fc.drift_compensation is None and fc.faults is None
    assert fc.section("drift_compensation").config_type == "none"
    assert fc.converter == cfg.converter
    assert conv.converter == devices.build_converter({"type": "single_pair", "g_max": 40.0})
    assert conv.noise_model == cfg.noise_model and conv.faults == cfg.faults
    assert (other.noise_model, other.converter, other.faults) == (cfg.noise_model, cfg.converter, cfg.faults)
    # objects and short names are accepted and checked like tables
    built = AnalogConfig(sections={"noise_model": "pcm", "converter": devices.build_converter(),
                                   "device_faults": devices.build_faults({"g_max_d2d_std": 0.1})})
    assert built.noise_model == devices.build_noise_model({"type": "pcm"})
    assert built.device_faults == devices.FaultParams(g_max_d2d_std=0.1)
    assert load_config(built.to_dict()) == built
    with pytest.raises(ConfigError, match=r"\[noise_model\] must be a table"):
        AnalogConfig(sections={"noise_model": 3})
    with pytest.raises(ConfigError, match=r"\[device_faults\] must be a table"):
        AnalogConfig(sections={"device_faults": "many"})
    with pytest.raises(ConfigError, match=r"\[converter\] needs a Converter; got the noise_model PCM"):
        AnalogConfig(sections={"converter": devices.build_noise_model({"type": "pcm"})})


def test_user_device_class_through_the_config(monkeypatch):
    import sys
    import types

    from anasim import devices

    mod = types.ModuleType("anasim_test_cfg_devices")

    class Halver(devices.NoiseModel):
        """Programs half the target."""

        def program(self, g_target, ctx, rng):
            return g_target * 0.5

    mod.Halver = Halver
    Halver.__module__, Halver.__qualname__ = mod.__name__, "Halver"
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    cfg = load_config({"noise_model": {"type": "anasim_test_cfg_devices:Halver"}})
    assert isinstance(cfg.noise_model, Halver)
    assert cfg.noise_model.config_type == "anasim_test_cfg_devices:Halver"
    assert load_config(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"has no attribute 'Halvr'.*Did you mean 'Halver'"):
        load_config({"noise_model": {"type": "anasim_test_cfg_devices:Halvr"}})


def test_one_resolver_for_plugin_sections(zz_noise):
    with pytest.raises(ConfigError, match="could not be imported.*ModuleNotFoundError"):
        load_config({"zz_noise": {"type": "no_such_module_xyz:Model"}})
    with pytest.raises(ConfigError, match=r"has no attribute 'FakePMC'.*Did you mean 'FakePCM'"):
        load_config({"zz_noise": {"type": f"{__name__}:FakePMC"}})
    with pytest.raises(ConfigError, match="is not a class"):
        load_config({"zz_noise": {"type": f"{__name__}:invalid_values"}})
    with pytest.raises(ConfigError, match="ClassName"):
        load_config({"zz_noise": {"type": ":FakePCM"}})


def test_device_sections_are_built_in():
    for name in ("noise_model", "converter", "drift_compensation", "device_faults"):
        with pytest.raises(ConfigError, match="built-in device section"):
            register_section(name, FakePCM)
        with pytest.raises(ConfigError, match="built-in device section"):
            unregister_section(name)
    assert {r.variant for r in describe_parameters("noise_model")} >= {"pcm", "none", "reram_wan2022"}


def test_preset_with_an_unregistered_section_is_refused(monkeypatch):
    from anasim.config import presets

    data = {"forward": {"out_noise": 0.1}, "zz_unknown": {"type": "x"}, "zz_other": {}}
    monkeypatch.setitem(presets.PRESETS, "lab", presets.Preset("lab", "a lab's chip", data))
    for make in (lambda: preset("lab"), lambda: load_config({"preset": "lab"}), lambda: load_config("lab")):
        with pytest.raises(ConfigError, match=r"Preset 'lab' has section\(s\) 'zz_unknown', 'zz_other' "
                                              "that are not registered"):
            make()


def test_preset_carries_a_registered_plugin_section(zz_noise, monkeypatch):
    from anasim.config import presets

    data = {"zz_noise": {"type": "pcm", "prog_scale": 3.0}}
    monkeypatch.setitem(presets.PRESETS, "lab", presets.Preset("lab", "a lab's chip", data))
    assert preset("lab").zz_noise == FakePCM(prog_scale=3.0)


# the order of a tile's operations, as the code runs them (anasim/kernels/cpu.py
# _prepare_rows then _finalize_rows; anasim/analog/tile.py for bound management and the
# digital periphery), stated in the same words wherever it is stated
TILE_ORDER = ("noise management, DAC quantization and clipping, input noise, MVM, IR drop, "
              "output-referred weight noise, output non-linearity, output noise, ADC quantization "
              "and clipping, iterative bound management, rescaling, digital accumulation of the "
              "tiles' partial sums, digital bias")


def test_tile_order_stated_identically():
    from anasim.analog import tile
    import anasim.kernels.cpu as cpu
    import anasim.kernels.stages as stages

    readme = Path(__file__).resolve().parents[1] / "README.md"
    texts = {"ForwardParameters": ForwardParameters.__doc__, "analog/tile.py": tile.__doc__,
             "kernels/cpu.py": cpu.__doc__, "kernels/stages.py": stages.__doc__,
             "README.md": readme.read_text(encoding="utf-8")}
    for where, text in texts.items():
        assert TILE_ORDER in " ".join(text.split()), where
        # and no other sentence puts the weight noise before the IR drop
        assert not re.search(r"weight[- ]noise,? (then )?IR drop", " ".join(text.split())), where


def test_import_graph_params_and_devices_below_config():
    root = Path(__file__).resolve().parents[1] / "anasim"

    def imports(path: Path) -> set[str]:
        pkg = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # functions included
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return {m for m in out if m.startswith("anasim")}

    assert imports(root / "params.py") == {"anasim.errors"}
    for path in sorted((root / "devices").glob("*.py")):
        bad = {m for m in imports(path) if m.startswith("anasim.config")}
        assert not bad, (path.name, bad)
    text = (root / "config" / "registry.py").read_text(encoding="utf-8")
    assert "PLUGIN_MODULES" not in text and "except Exception" not in text

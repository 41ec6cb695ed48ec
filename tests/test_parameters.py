"""The model parameter table (server/parameters.py): each type's parsing and refusals, the docs table, and
that every ``skewless.*`` parameter the server reads is declared (a static read of server/)."""

from __future__ import annotations

import ast
import importlib
import logging
import math
import re
import shutil
from pathlib import Path

import pytest

from skewless.server import parameters
from skewless.server.errors import ModelLoadError
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion
from skewless.server.parameters import PARAMETERS, Parameter, parameters_markdown, read, unknown

ROOT = Path(__file__).resolve().parents[1]
# "skewless.*" strings in server/ that are not model config parameters.
NOT_PARAMETERS = {
    "skewless.feature_spec_hash",  # a reply parameter the server sets
    "skewless.histograms",  # an OpenTelemetry instrumentation scope
    "skewless.workers",  # a logger name
    "skewless.transport",  # a span attribute
}


def _cfg(**params: str):
    text = 'name: "m"\n' + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
                                   for k, v in params.items())
    return parse_config(text, "m")


def _refused(p: Parameter, raw: str, where: str = "") -> str:
    with pytest.raises(ModelLoadError) as info:
        p.parse(raw, where)
    return str(info.value)


# -- each type -----------------------------------------------------------------------------------------------
def test_bool_takes_0_and_1_only():
    p = Parameter("x.b", "bool", True, "m", "a")
    assert (p.parse("1"), p.parse("0"), p.parse(None)) == (True, False, True)
    for bad in ("yes", "true", "", " 1"):
        assert _refused(p, bad) == f"config parameter 'x.b' must be 0 or 1, got '{bad}'"


def test_int_bounds_and_refusals():
    p = Parameter("x.i", "int", 7, "m", "a", lo=1)
    assert (p.parse("3"), p.parse(None), p.parse(" 12 ")) == (3, 7, 12)
    assert _refused(p, "0", "model 'm'") == "model 'm': config parameter 'x.i' must be a int in [1, inf], got '0'"
    for bad in ("1.5", "", "abc", "1e3"):
        assert "must be a int in [1, inf]" in _refused(p, bad)
    free = Parameter("x.j", "int", -1, "m", "a")
    assert free.parse("-5") == -5
    assert _refused(free, "x") == "config parameter 'x.j' must be a int, got 'x'"


def test_float_open_and_closed_bounds_and_nan():
    p = Parameter("x.f", "float", 1.0, "m", "a", lo=0.0, hi=1.0, lo_open=True)
    assert p.parse("1") == 1.0 and p.parse("0.5") == 0.5
    for bad in ("0", "1.5", "nan", "-inf", "x"):
        assert f"must be a float in (0, 1], got '{bad}'" in _refused(p, bad)
    both = Parameter("x.g", "float", 99.0, "m", "a", lo=0.0, hi=100.0, lo_open=True, hi_open=True)
    assert both.parse("99.9") == 99.9
    assert "must be a float in (0, 100), got '100'" in _refused(both, "100")
    free = Parameter("x.h", "float", 0.0, "m", "a")
    assert free.parse("-3") == -3.0 and math.isinf(free.parse("inf"))
    assert "must be a float, got 'nan'" in _refused(free, "nan")


def test_str_enum_and_json():
    s = Parameter("x.s", "str", None, "m", "a")
    assert (s.parse(None), s.parse(""), s.parse(" a b ")) == (None, "", " a b ")
    e = Parameter("x.e", "enum", "auto", "m", "a", choices=("auto", "0", "1"))
    assert e.parse("1") == "1" and e.parse(None) == "auto"
    assert _refused(e, "AUTO") == "config parameter 'x.e' must be one of 'auto', '0', '1', got 'AUTO'"
    folded = Parameter("x.l", "enum", None, "m", "a", choices=("basic", "all"), fold_case=True)
    assert folded.parse("ALL") == "all"
    j = Parameter("x.j", "json", None, "m", "a")
    assert j.parse('{"a": [1, 2]}') == {"a": [1, 2]}
    assert _refused(j, "{nope", "model m:1").startswith("model m:1: config parameter 'x.j' is not JSON: ")


def test_blank_is_unset_and_further_check():
    p = Parameter("x.v", "int", None, "m", "a", lo=1, blank_is_unset=True)
    assert p.parse("") is None and p.parse("  ") is None and p.parse("2") == 2
    c = Parameter("x.c", "str", "ok", "m", "a", check=lambda v: None if v.startswith("o") else "must start with o")
    assert c.parse("on") == "on"
    assert _refused(c, "no") == "config parameter 'x.c' must start with o, got 'no'"


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="kind"):
        Parameter("x.k", "list", None, "m", "a")
    with pytest.raises(ValueError, match="choices"):
        Parameter("x.k", "enum", None, "m", "a")
    with pytest.raises(ValueError, match="declared twice"):
        parameters.declare(Parameter("skewless.drift", "bool", True, "m", "a"))


# -- the table as the server reads it --------------------------------------------------------------------------
def test_read_from_a_model_config():
    cfg = _cfg(**{"skewless.drift_window_rows": "500", "skewless.io_binding": "1", "skewless.drift": "0"})
    assert read(cfg, "skewless.drift_window_rows") == 500
    assert read(cfg, "skewless.io_binding") == "1"
    assert read(cfg, "skewless.drift") is False
    assert read(cfg, "skewless.drift_warn") == 0.1  # absent: the default
    assert read(cfg, "skewless.canary_version") is None
    with pytest.raises(ModelLoadError, match="'skewless.prediction_reference' must be 'auto', 'learn:N' with N >= 1"):
        read(_cfg(**{"skewless.prediction_reference": "learn:0"}), "skewless.prediction_reference")
    with pytest.raises(ModelLoadError, match="'skewless.prediction_reference' is empty"):
        read(_cfg(**{"skewless.prediction_reference": " "}), "skewless.prediction_reference")


def test_unknown_keys_name_the_close_matches():
    lines = unknown(["skewless.drift_windw_rows", "skewless.nothing_like_it", "skewless.drift", "cuda_gpu_x"])
    assert lines == [
        "config parameter 'skewless.drift_windw_rows' is not one skewless knows (did you mean "
        "'skewless.drift_window_rows'?): it is ignored",
        "config parameter 'skewless.nothing_like_it' is not one skewless knows: it is ignored",
    ]


def test_a_model_with_an_unknown_key_loads_and_says_so(tmp_path, caplog):
    shutil.copytree(ROOT / "examples" / "models" / "mlp", tmp_path / "mlp")
    text = (tmp_path / "mlp" / "config.pbtxt").read_text()
    text += 'parameters { key: "skewless.shadow_rat" value { string_value: "0.5" } }\n'
    with caplog.at_level(logging.WARNING, logger="skewless.server.models.version"):
        mv = ModelVersion("mlp", 1, tmp_path / "mlp" / "1", parse_config(text, "mlp"), True, 4)
    mv.runtime.close()
    assert "model 'mlp' version 1: config parameter 'skewless.shadow_rat' is not one skewless knows " \
           "(did you mean 'skewless.shadow_rate'?)" in caplog.text


def _server_strings() -> dict[str, list[str]]:
    """Every string constant of the form skewless.<name> in server/, with where it is."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"skewless\.[a-z0-9_]+", node.value):
                found.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_skewless_parameter_the_server_names_is_declared():
    used = _server_strings()
    undeclared = {k: v for k, v in used.items() if k not in PARAMETERS and k not in NOT_PARAMETERS}
    assert not undeclared, f"declare these in server/parameters.py: {undeclared}"
    # ... and every skewless.* declaration is read somewhere outside the table itself.
    outside = {k for k, places in used.items() if any(not p.startswith("server/parameters.py") for p in places)}
    unread = {k for k in PARAMETERS if k.startswith("skewless.") and k not in outside}
    assert not unread, f"declared but read nowhere: {unread}"


def test_every_declared_parameter_is_in_the_docs_table():
    page = (ROOT / "docs" / "reference" / "model-parameters.md").read_text()
    marker = re.search(r"<!-- generated: ([\w.]+):(\w+) -->", page)
    assert marker, "docs/reference/model-parameters.md lacks its generated-table marker"
    rendered = getattr(importlib.import_module(marker[1]), marker[2])()
    assert rendered == parameters_markdown()
    rows = [line for line in rendered.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(PARAMETERS)
    for p in PARAMETERS.values():
        row = next(r for r in rows if r.startswith(f"| `{p.name}` |")).replace("\\|", "|")
        assert f"| {p.expected().removeprefix('a ')} |" in row and p.meaning in row

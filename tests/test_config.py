"""Switches: one declaration, one parser, safe refusals (sglang_nwor_scv.config).

Each bad value is refused with the variable and its allowed values named, and the
plugin then steps aside entirely (no hook registered: upstream SGLang runs); the
engine-level proof (a server started with a bad value serves, upstream) is in
tests/test_engine_nwor.py.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from sglang_nwor_scv import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults():
    m = config.parse({})
    assert (m.nwor, m.scv, m.graph_stage, m.move, m.debug) == ("stage", "vectorized", None, True, False)
    assert m.graph_max_mb is None and m.log_interval == 100 and m.refusal is None


@pytest.mark.parametrize("raw,want", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                      ("0", False), ("False", False), ("no", False), ("OFF", False)])
def test_booleans_accept_every_spelling(raw, want):
    assert config.parse({"SGLANG_NWOR_MOVE": raw}).move is want
    assert config.parse({"SGLANG_NWOR_SCV_DEBUG": raw}).debug is want
    assert config.parse({"SGLANG_NWOR_GRAPH": raw}).graph_stage is want


def test_empty_means_the_default():
    m = config.parse({"SGLANG_NWOR_MOVE": "", "SGLANG_NWOR_SCV_DEBUG": " ", "SGLANG_NWOR_GRAPH": ""})
    assert (m.move, m.debug, m.graph_stage) == (True, False, None)
    assert config.parse({"SGLANG_NWOR_GRAPH": "AUTO"}).graph_stage is None


@pytest.mark.parametrize("name,raw,message", [
    ("SGLANG_NWOR_MODE", "bogus", "SGLANG_NWOR_MODE='bogus' is not one of off, stage"),
    ("SGLANG_SCV_MODE", "fast", "SGLANG_SCV_MODE='fast' is not one of off, vectorized, graph"),
    ("SGLANG_NWOR_SCV_DEBUG", "maybe", "SGLANG_NWOR_SCV_DEBUG='maybe' is not a boolean"),
    ("SGLANG_NWOR_GRAPH", "2", "SGLANG_NWOR_GRAPH='2' is not auto or a boolean"),
    ("SGLANG_NWOR_MOVE", "enabled", "SGLANG_NWOR_MOVE='enabled' is not a boolean"),
    ("SGLANG_NWOR_SCV_LOG_INTERVAL", "abc", "SGLANG_NWOR_SCV_LOG_INTERVAL='abc' is not an integer >= 1"),
    ("SGLANG_NWOR_SCV_LOG_INTERVAL", "0", "SGLANG_NWOR_SCV_LOG_INTERVAL='0' is not an integer >= 1"),
    ("SGLANG_NWOR_GRAPH_MAX_MB", "-5", "SGLANG_NWOR_GRAPH_MAX_MB='-5' is not an integer >= 0 or 'auto'"),
    ("SGLANG_NWOR_SCV_PROFILE_STEPS", "5:2", "SGLANG_NWOR_SCV_PROFILE_STEPS='5:2' is not a:b"),
    ("SGLANG_NWOR_SCV_PROFILE_BS", "8,x", "SGLANG_NWOR_SCV_PROFILE_BS='8,x' is not a comma-separated"),
])
def test_bad_values_name_the_variable_and_its_values(name, raw, message):
    with pytest.raises(config.SwitchError, match=re.escape(message)):
        config.parse({name: raw})


def test_a_bad_value_steps_aside_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setenv("SGLANG_NWOR_SCV_DEBUG", "False!")
    with caplog.at_level(logging.ERROR, logger="sglang_nwor_scv"):
        m = config.reload()
        config.modes()  # cached: not logged twice
    config.modes.cache_clear()
    assert (m.nwor_on, m.scv_on, m.graph_stage, m.move) == (False, False, False, False)
    assert "SGLANG_NWOR_SCV_DEBUG='False!'" in m.refusal
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "upstream SGLang runs unmodified" in lines[0]


def test_plugin_registers_no_hook_on_a_bad_value(monkeypatch):
    """register() with a bad switch: SGLang's registry gets nothing from us."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_nwor_scv import plugin

    monkeypatch.setenv("SGLANG_NWOR_MODE", "bogus")
    monkeypatch.setattr(plugin, "_registered", False)
    config.modes.cache_clear()
    calls = []
    monkeypatch.setattr(HookRegistry, "register", classmethod(lambda cls, *a, **k: calls.append(a)))
    plugin.register()
    config.modes.cache_clear()
    assert calls == []


def _readme_switches() -> list[str]:
    text = README.read_text()
    table = text[text.index("| variable |"):]
    table = table[: table.index("\n\n")]
    return re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.M)


def test_readme_table_lists_every_switch_once():
    names = [s.name for s in config.SWITCHES]
    assert len(set(names)) == len(names)
    documented = _readme_switches()
    assert sorted(set(documented) - {"SGLANG_PLUGINS"}) == sorted(names)
    assert len(documented) == len(set(documented))


def test_readme_defaults_match_the_declarations():
    text = README.read_text()
    for s in config.SWITCHES:
        row = re.search(rf"^\| `{s.name}` \|([^|]*)\|([^|]*)\|", text, flags=re.M)
        default = row.group(2).strip().strip("`")
        want = "unset" if s.default is None else s.default
        assert default == want, (s.name, default, want)

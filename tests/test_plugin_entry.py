"""The plugin is discoverable, registers only on supported SGLang releases, and
refuses unknown ones with one clear message, changing nothing."""

from __future__ import annotations

import importlib.metadata as md
import logging

import pytest

from sglang_nwor_scv import config, plugin, versions


def test_entry_point_is_discoverable():
    eps = {e.name: e.value for e in md.entry_points(group="sglang.srt.plugins")}
    assert eps.get("nwor_scv") == "sglang_nwor_scv.plugin:register"
    assert md.entry_points(group="sglang.srt.plugins")["nwor_scv"].load() is plugin.register


def test_installed_sglang_is_supported():
    assert versions.installed_sglang_version() in versions.SUPPORTED


@pytest.fixture
def clean_registry(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    saved = {k: list(v) for k, v in HookRegistry._hooks.items()}
    HookRegistry._hooks.clear()
    monkeypatch.setattr(plugin, "_registered", False)
    yield HookRegistry
    HookRegistry._hooks.clear()
    HookRegistry._hooks.update(saved)


@pytest.mark.parametrize("ver", ["0.5.16", "0.5.24", "0.4.0", None])
def test_unknown_version_is_refused_and_changes_nothing(ver, monkeypatch, caplog, clean_registry):
    monkeypatch.delenv("SGLANG_NWOR_SCV_FORCE_VERSION", raising=False)
    config.reload()
    monkeypatch.setattr(versions, "installed_sglang_version", lambda: ver)
    with caplog.at_level(logging.WARNING, logger="sglang_nwor_scv"):
        plugin.register()
    assert not any(clean_registry._hooks.values()), "hooks registered on an unknown version"
    refusals = [r for r in caplog.records if "is not supported by sglang-nwor-scv" in r.message]
    assert len(refusals) == 1
    assert "upstream code unmodified" in refusals[0].message


def test_supported_version_registers_each_adapter_target_once(monkeypatch, clean_registry):
    from sglang_nwor_scv.adapters import v0_5_23

    plugin.register()
    plugin.register()  # idempotent
    hooks = clean_registry._hooks
    assert set(hooks) == set(v0_5_23.TARGETS.values())  # the NGRAM mask site is on by default
    assert all(len(v) == 1 for v in hooks.values())


def test_ngram_mask_switched_off_is_not_hooked(monkeypatch, clean_registry):
    from sglang_nwor_scv.adapters import v0_5_23

    monkeypatch.setenv("SGLANG_SCV_NGRAM_MASK", "off")
    config.reload()
    try:
        plugin.register()
        assert set(clean_registry._hooks) == set(v0_5_23.TARGETS.values()) - {v0_5_23.TARGETS["ngram_mask"]}
    finally:
        monkeypatch.delenv("SGLANG_SCV_NGRAM_MASK")
        config.reload()


def test_force_version_selects_adapter(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_SCV_FORCE_VERSION", "0.5.17")
    config.reload()
    assert versions.adapter_for("0.6.0").VERSION == "0.5.17"
    monkeypatch.setenv("SGLANG_NWOR_SCV_FORCE_VERSION", "9.9")
    config.reload()
    with pytest.raises(versions.UnsupportedVersion):
        versions.adapter_for("0.5.23")
    monkeypatch.delenv("SGLANG_NWOR_SCV_FORCE_VERSION")
    config.reload()

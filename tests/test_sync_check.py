"""sglang_nwor_scv.sync_check: counting the syncs torch's sync debug mode reports.

On the CPU no CUDA call can sync, so these tests raise the warning torch would raise
("called a synchronizing CUDA operation") themselves; the GPU engine test
(tests/gpu/test_engine_gpu.py::test_no_host_sync_in_plugin_sites) checks the real thing.
"""

from __future__ import annotations

import warnings

import pytest

from sglang_nwor_scv import config, sync_check

SYNC = "called a synchronizing CUDA operation"


@pytest.fixture(autouse=True)
def _on(monkeypatch):
    monkeypatch.setenv("SGLANG_NWOR_SCV_SYNC_CHECK", "1")
    config.modes.cache_clear()
    sync_check.take()
    yield
    config.modes.cache_clear()


def test_syncs_inside_watch_are_counted_once_and_others_pass_through():
    with pytest.warns(UserWarning, match="unrelated"):
        with sync_check.watch():
            warnings.warn(SYNC, stacklevel=1)
            with sync_check.watch():  # nested: counted by the outer block only
                warnings.warn(SYNC, stacklevel=1)
            warnings.warn("unrelated", stacklevel=1)
    assert sync_check.take() == 2
    assert sync_check.take() == 0


def test_allowed_syncs_are_not_counted():
    with sync_check.allowed():
        with sync_check.watch():
            warnings.warn(SYNC, stacklevel=1)
    assert sync_check.take() == 0


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("SGLANG_NWOR_SCV_SYNC_CHECK")
    config.modes.cache_clear()
    with pytest.warns(UserWarning, match="synchronizing"):
        with sync_check.watch():
            warnings.warn(SYNC, stacklevel=1)
    assert sync_check.take() == 0

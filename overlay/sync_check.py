"""Count host syncs inside the plugin's own step work (``SGLANG_NWOR_SCV_SYNC_CHECK=1``).

A verify step must never make the host wait for the GPU: the scheduler overlaps host
work with the running forward. torch's sync debug mode ("warn") turns every
synchronizing CUDA call into a Python warning raised at the line that made it;
``watch()`` counts those inside our sites and logs the first locations, ``allowed()``
marks the syncs made on purpose (the counter flush, debug checks). The count reaches
the ``host_syncs`` metric (and the totals file) at each flush.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")

_MARK = "synchronizing CUDA operation"
_state = {"count": 0, "logged": 0, "depth": 0}


def enabled() -> bool:
    return modes().sync_check


def _set_mode(mode) -> object:
    """Set torch's sync debug mode (CUDA hosts only); returns the previous one."""
    if not torch.cuda.is_available():
        return None
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    return previous


def record(message: str, filename: str, lineno: int) -> None:
    _state["count"] += 1
    if _state["logged"] < 5:
        _state["logged"] += 1
        logger.warning("NWOR/SCV host sync at %s:%d: %s", filename, lineno, message[:200])


_OFF = contextlib.nullcontext()


def watch():
    """Count synchronizing CUDA calls made inside the block (outermost block only).
    Off (the default): a shared no-op context, since this sits on every verify step."""
    return _watch() if enabled() and not _state["depth"] else _OFF


def allowed():
    """A sync made on purpose (counter flush, debug checks): not counted."""
    return _allowed() if enabled() else _OFF


@contextlib.contextmanager
def _watch():
    _state["depth"] += 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        previous = _set_mode("warn")
        try:
            yield
        finally:
            if previous is not None:
                _set_mode(previous)
            _state["depth"] -= 1
    for w in caught:
        if _MARK in str(w.message):
            record(str(w.message), w.filename, w.lineno)
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextlib.contextmanager
def _allowed():
    previous = _set_mode("default")
    _state["depth"] += 1  # a watch opened inside does not count either
    try:
        yield
    finally:
        _state["depth"] -= 1
        if previous is not None:
            _set_mode(previous)


def take() -> int:
    """Syncs counted since the last call."""
    n, _state["count"] = _state["count"], 0
    return n

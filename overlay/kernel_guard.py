"""Kernels that failed to launch: each is launched no more in this process, and its caller
takes upstream's path (or, for the NWOR commit, the kernel's torch reference) from then on,
with one log line.

Triton compiles each specialisation on its first launch. A GPU, driver or Triton build the
CI never ran can fail there (shared memory out of range, a PTX the driver rejects), and that
must cost speed, never the server or the KV cache. The NGRAM mask, SCV's acceptance and the
move hand the step to upstream, which has not run yet when they launch. The NWOR commit
cannot: only it writes the staged rows, so it writes them with ``commit_accepted_kv_ref``
(the same bytes, with a host sync).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_nwor_scv")
_failed: dict[str, str] = {}  # kernel -> the error of its failed launch


def usable(kernel: str) -> bool:
    return kernel not in _failed


def failures() -> dict[str, str]:
    """Every kernel that stepped aside in this process, with its error (the totals file
    carries it, so a test's failed count assertion names the cause)."""
    return dict(_failed)


def record_failure(kernel: str, error: BaseException, instead: str) -> None:
    """Remember that ``kernel`` failed to launch; log once what runs ``instead``."""
    if kernel in _failed:
        return
    _failed[kernel] = f"{type(error).__name__}: {error}"[:300]
    logger.warning("sglang_nwor_scv: the %s kernel failed to launch (%s); %s from now on",
                   kernel, _failed[kernel], instead)

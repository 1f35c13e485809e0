"""Which SGLang releases the plugin knows, and the adapter for each.

The version is matched exactly: hook sites move between releases, and a hook on a
moved site would do nothing (SGLang only logs hook failures). An unknown version
gets no hooks and one warning, unless SGLANG_NWOR_SCV_FORCE_VERSION names the
adapter to try (for development builds).
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

SUPPORTED = {"0.5.23": "v0_5_23", "0.5.17": "v0_5_17"}


class UnsupportedVersion(RuntimeError):
    pass


def installed_sglang_version() -> str | None:
    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def adapter_for(ver: str | None) -> ModuleType:
    """The adapter module for ``ver``; raises UnsupportedVersion with the reason."""
    from sglang_nwor_scv.config import modes

    forced = modes().force_version
    key = forced or ver
    if key not in SUPPORTED:
        raise UnsupportedVersion(
            f"sglang {ver or '(not installed)'} is not supported by sglang-nwor-scv "
            f"(supported: {', '.join(sorted(SUPPORTED))}); speculative decoding runs "
            "upstream code unmodified. Set SGLANG_NWOR_SCV_FORCE_VERSION=<supported "
            "version> to try an adapter anyway."
        )
    return importlib.import_module(f"sglang_nwor_scv.adapters.{SUPPORTED[key]}")


def installed_adapter(what: str) -> ModuleType | None:
    """The adapter of the installed SGLang, or None after one warning saying that ``what``
    (the hooks, the phase clocks) stays off: upstream runs unmodified."""
    try:
        return adapter_for(installed_sglang_version())
    except UnsupportedVersion as e:
        logging.getLogger("sglang_nwor_scv").warning("%s off: %s", what, e)
        return None

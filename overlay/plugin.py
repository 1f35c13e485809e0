"""SGLang general-plugin entry point (``sglang.srt.plugins: nwor_scv``).

SGLang calls ``register()`` first thing in every process (engine, scheduler, TP
workers). It parses the switches once (sglang_nwor_scv.config) and registers hooks;
idempotent. With a bad switch value, or on an SGLang release it does not know, it
registers nothing and logs one line: upstream SGLang runs unmodified.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_nwor_scv")
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from sglang_nwor_scv.config import modes
    from sglang_nwor_scv.versions import installed_adapter

    if modes().refusal:  # already logged once by modes()
        return
    adapter = installed_adapter("sglang-nwor-scv hooks")
    if adapter is None:
        return
    from sglang_nwor_scv import hooks

    hooks.register_all(adapter)
    logger.info("sglang-nwor-scv hooks registered for sglang %s", adapter.VERSION)

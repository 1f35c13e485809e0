"""Test-only SGLang plugin: injects a fault into chosen verify steps (tests/test_faults.py).

``NWOR_SCV_FAULT=nan_logits:3,7`` fills the target model's logits with NaN after the
verify forwards number 3 and 7 of this scheduler process (counted from 0), the same way
with the NWOR/SCV plugin on or off, so their outputs must stay identical. It replaces
nothing upstream does; it only corrupts what the verify forward returned.
"""

from __future__ import annotations

import os

_seen = {"verify": 0}


def _around_forward(original, self, batch, *args, **kwargs):
    out = original(self, batch, *args, **kwargs)
    if kwargs.get("is_verify"):
        kind, _, steps = os.environ.get("NWOR_SCV_FAULT", "").partition(":")
        index = _seen["verify"]
        _seen["verify"] += 1
        if kind == "nan_logits" and str(index) in steps.split(","):
            out.logits_output.next_token_logits.fill_(float("nan"))
    return out


def install() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation",
                          _around_forward, HookType.AROUND)

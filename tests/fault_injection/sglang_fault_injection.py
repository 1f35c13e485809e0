"""Test-only SGLang plugin: injects a fault into chosen verify steps (tests/test_faults.py).

``NWOR_SCV_FAULT=<kind>:3,7`` faults the verify forwards number 3 and 7 of this scheduler
process (counted from 0, retries not counted), the same way with the NWOR/SCV plugin on
or off, so their outputs must stay identical. Kinds:

- ``nan_logits``: fill the target model's verify logits with NaN after the forward;
- ``raise_in_verify``: raise inside the verify forward, in layer 1's attention (layer 0's
  K/V already staged or written), then run the same forward again, as a worker that
  retries a failed step would. The retry must not see anything of the failed attempt.
  Eager forwards only: a CUDA-graph replay runs no Python attention.
- ``raise_after_verify``: the verify forward runs whole (eager, or replayed from a CUDA
  graph: every layer staged or written), then an exception before acceptance, then the
  same forward again. Nothing of the first forward may be committed.

- ``kernels_fail``: every Triton kernel of the NWOR/SCV plugin fails at launch, as on a
  GPU or Triton build its CI never saw (no step list: from the first launch on). Upstream
  alone launches none of them, so with the plugin off nothing changes.

``NWOR_SCV_FAULT_LOG`` names a file that gets one line per injected fault, so a test can
tell that the fault really happened. Nothing upstream does is replaced.
"""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    """The exception ``raise_in_verify`` raises (and catches) inside a verify forward."""


_seen = {"verify": 0}
_armed = {"raise": False}


def _fault_for(index: int) -> str | None:
    kind, _, steps = os.environ.get("NWOR_SCV_FAULT", "").partition(":")
    return kind if str(index) in steps.split(",") else None


def _log(kind: str, index: int) -> None:
    path = os.environ.get("NWOR_SCV_FAULT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{kind} {index}\n")


def _around_forward(original, self, batch, *args, **kwargs):
    if not kwargs.get("is_verify"):
        return original(self, batch, *args, **kwargs)
    index = _seen["verify"]
    _seen["verify"] += 1
    kind = _fault_for(index)
    if kind == "raise_in_verify":
        _armed["raise"] = True
        try:
            return original(self, batch, *args, **kwargs)
        except InjectedFault:
            _log(kind, index)
            return original(self, batch, *args, **kwargs)  # the retry
        finally:
            _armed["raise"] = False
    if kind == "raise_after_verify":
        try:
            original(self, batch, *args, **kwargs)
            raise InjectedFault("injected: exception after the verify forward returned")
        except InjectedFault:
            _log(kind, index)
        return original(self, batch, *args, **kwargs)  # the retry
    out = original(self, batch, *args, **kwargs)
    if kind == "nan_logits":
        out.logits_output.next_token_logits.fill_(float("nan"))
        _log(kind, index)
    return out


def _around_attention(original, self, *args, **kwargs):
    if _armed["raise"] and getattr(self, "layer_id", None) == 1:
        _armed["raise"] = False
        raise InjectedFault("injected: exception inside the verify forward (layer 1)")
    return original(self, *args, **kwargs)


class _FailingLaunch:
    """A Triton kernel indexed by its grid: the launcher raises before queueing anything."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _log("kernels_fail", self.name)
            raise RuntimeError(f"injected: {self.name} failed to compile for this GPU")
        return launch


_PLUGIN_KERNELS = {"sglang_nwor_scv.kernels.commit_kv": "commit_accepted_kv_kernel",
                   "sglang_nwor_scv.kernels.verify_accept": "_verify_accept_greedy_kernel",
                   "sglang_nwor_scv.kernels.move_kv": "_move_accepted_kv_kernel",
                   "sglang_nwor_scv.kernels.ngram_mask": "_full_tree_mask_kernel",
                   "sglang_nwor_scv.kernels.ngram_draft": "_ngram_draft_kernel",
                   "sglang_nwor_scv.kernels.verify_metadata": "_target_verify_buffers_kernel"}


def install() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if os.environ.get("NWOR_SCV_FAULT", "").partition(":")[0] == "kernels_fail":
        import importlib

        for module, kernel in _PLUGIN_KERNELS.items():
            setattr(importlib.import_module(module), kernel, _FailingLaunch(kernel))

    HookRegistry.register("sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation",
                          _around_forward, HookType.AROUND)
    HookRegistry.register("sglang.srt.layers.radix_attention.RadixAttention.forward",
                          _around_attention, HookType.AROUND)

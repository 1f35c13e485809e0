"""Named ranges around the verify step, for the measurement tools (tools/measure_*.py).

Off unless ``SGLANG_NWOR_SCV_PROFILE=1``: then every range is an NVTX range (for Nsight
users) and, while a torch profiler is recording (SGLang's ``start_profile``), also a
``record_function`` that tools/trace_stats.py finds in the Chrome trace. Range names:

- ``verify_step``: from the start of a TARGET_VERIFY forward to the start of the next
  forward of any model runner in this process (the draft forward for EAGLE and
  STANDALONE, the next verify for NGRAM). It covers the verify forward, acceptance,
  the KV commit or move, and the host work in between, the same way in every mode.
- ``scv_compute_mask``: SGLang's greedy verify site (our fused kernel, or upstream's).
- ``nwor_commit``: the after-accept site (our commit, then upstream's body).

``SGLANG_NWOR_SCV_PROFILE_STEPS=a:b`` additionally opens the CUDA profiler
(``cudaProfilerStart``/``Stop``) around verify steps a..b-1 *of each batch size*
(counted from 0; ``SGLANG_NWOR_SCV_PROFILE_BS=8,64`` limits the sizes), so
``ncu --profile-from-start off`` sees exactly those whole steps. Each profiled step
starts with a one-thread ``spin_kernel`` (``torch.cuda._sleep``) as a boundary marker
and appends its batch size to ``SGLANG_NWOR_SCV_PROFILE_LOG`` (tools/measure_ncu.py
splits the kernel list at the markers).
"""

from __future__ import annotations

import contextlib
import json
import time

import torch

from sglang_nwor_scv.config import modes


def enabled() -> bool:
    return modes().profile


class _StepRange:
    """The open ``verify_step`` range of this process (one scheduler thread)."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}  # batch size -> verify steps begun
        self.nvtx_id = None
        self.record = None
        self.cuda_profiling = False

    def on_forward(self, is_verify: bool, bs: int) -> None:
        self.close()
        if not is_verify:
            return
        index = self.seen.get(bs, 0)
        self.seen[bs] = index + 1
        m = modes()
        window, sizes = m.profile_steps, m.profile_bs
        if (window and window[0] <= index < window[1] and (sizes is None or bs in sizes)
                and torch.cuda.is_available() and not torch.cuda.is_current_stream_capturing()):
            torch.cuda.synchronize()  # earlier work stays outside the window
            torch.cuda.cudart().cudaProfilerStart()
            torch.cuda._sleep(1)  # boundary marker: "spin_kernel"
            self.cuda_profiling = True
            log = m.profile_log
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps({"bs": bs, "index": index, "t": round(time.time(), 3)}) + "\n")
        if torch.cuda.is_available():
            self.nvtx_id = torch.cuda.nvtx.range_start("verify_step")
        if torch.autograd._profiler_enabled():
            self.record = torch.profiler.record_function("verify_step")
            self.record.__enter__()

    def close(self) -> None:
        if self.record is not None:
            self.record.__exit__(None, None, None)
            self.record = None
        if self.nvtx_id is not None:
            torch.cuda.nvtx.range_end(self.nvtx_id)
            self.nvtx_id = None
        if self.cuda_profiling:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            self.cuda_profiling = False


_step = _StepRange()


def on_forward(forward_batch) -> None:
    """Every ModelRunner.forward: close the open step; open one for a verify forward."""
    if enabled():
        _step.on_forward(forward_batch.forward_mode.is_target_verify(),
                         int(getattr(forward_batch, "batch_size", 0) or 0))


_OFF = contextlib.nullcontext()


def span(name: str):
    """A named sub-range of the step; when profiling is off, a shared no-op context
    (these sit on every verify step's path)."""
    return _span(name) if enabled() else _OFF


@contextlib.contextmanager
def _span(name: str):
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        if torch.autograd._profiler_enabled():
            with torch.profiler.record_function(name):
                yield
        else:
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()

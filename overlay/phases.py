"""Host time per phase of the scheduler's step: where a speculative step's latency goes.

A plugin of its own (entry point ``nwor_scv_phases``), separate from NWOR/SCV, so the
same clocks run in an upstream engine (the NWOR/SCV plugin not loaded) and in a plugin
engine. Off unless ``SGLANG_NWOR_SCV_PHASES`` names a file. Then every target in the
adapter's ``PHASES`` table (the scheduler loop's parts; the speculative worker's draft,
verify forward, acceptance, commit, KV move and corpus update) is wrapped in a monotonic
clock: ``perf_counter_ns``, no CUDA call, no sync. Per phase: calls, inclusive ns and
self ns (inclusive minus the phases nested in it).

Times are the scheduler thread's wall time. A phase that reads a device tensor on the
host (``.tolist()``, ``.item()``) waits for the GPU inside it; that wait is host time
the next launch is delayed by, so it belongs to the step's critical path too.

Only busy loop iterations count (one that ran or finished a batch); idle spinning is
dropped. ``loop.iteration`` is the wall time of a busy iteration, so
``loop.iteration - sum(loop.*)`` is what no phase covers. The totals are rewritten to
the file on the second idle iteration after work (the overlap loop finishes the last
batch's output one iteration late), with ``flushes`` counting the writes, so a tool
reading the file between batches sees whole batches.

Entry-point order puts this plugin after ``nwor_scv``: on the targets both wrap (the
model forward, the commit and the KV move), these clocks are outermost and include the
plugin's own host work; ``outermost`` in the file says whether that held.
"""

from __future__ import annotations

import logging
import os
from time import perf_counter_ns

from sglang_nwor_scv.json_file import write_json_atomically

logger = logging.getLogger("sglang_nwor_scv")

_STARTS_ITERATION = "loop.recv"
_WORK = frozenset({"loop.run_batch", "loop.output"})


class PhaseClock:
    """Phase totals of one scheduler process (one scheduler thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.totals: dict[str, list[int]] = {}  # name -> [calls, inclusive ns, self ns]
        self.pending: dict[str, list[int]] = {}  # this loop iteration's phases
        self.stack: list[list[int]] = []  # open phases: [start ns, nested ns]
        self.worked = False
        self.iteration_start: int | None = None
        self.idle_after_work = 0
        self.dirty = False
        self.flushes = 0
        self.outermost: dict[str, bool] | None = None  # known once hooks are applied
        self.adapter = None

    def enter(self) -> list[int]:
        frame = [perf_counter_ns(), 0]
        self.stack.append(frame)
        return frame

    def leave(self, name: str, frame: list[int]) -> None:
        total = perf_counter_ns() - frame[0]
        self.stack.pop()
        if self.stack:
            self.stack[-1][1] += total
        row = self.pending.setdefault(name, [0, 0, 0])
        row[0] += 1
        row[1] += total
        row[2] += total - frame[1]
        if name in _WORK:
            self.worked = True

    def new_iteration(self) -> None:
        """Called as the loop's first phase begins: keep the last iteration if it worked."""
        now = perf_counter_ns()
        if self.worked:
            if self.iteration_start is not None:
                self.pending["loop.iteration"] = [1, now - self.iteration_start,
                                                  now - self.iteration_start]
            for name, (calls, incl, own) in self.pending.items():
                row = self.totals.setdefault(name, [0, 0, 0])
                row[0] += calls
                row[1] += incl
                row[2] += own
            self.dirty, self.idle_after_work = True, 0
        elif self.dirty:
            self.idle_after_work += 1
            if self.idle_after_work >= 2:
                self.write()
        self.pending, self.worked, self.iteration_start = {}, False, now

    def write(self) -> None:
        if self.outermost is None and self.adapter is not None:
            self.outermost = check_outermost(self.adapter)
        self.flushes += 1
        self.dirty = False
        data = {"flushes": self.flushes, "pid": os.getpid(), "outermost": self.outermost,
                "phases": {k: {"calls": c, "ns": i, "self_ns": s}
                           for k, (c, i, s) in sorted(self.totals.items())}}
        write_json_atomically(self.path, data)


_clock: PhaseClock | None = None


def _around(name: str):
    def around(original, *args, **kwargs):
        clock = _clock
        if name == _STARTS_ITERATION:
            clock.new_iteration()
        frame = clock.enter()
        try:
            return original(*args, **kwargs)
        finally:
            clock.leave(name, frame)
    around.__name__ = around.__qualname__ = "phase_" + name.replace(".", "_")
    return around


_HOOKS: dict[str, object] = {}


def register() -> None:
    """Entry point ``nwor_scv_phases``: wrap the adapter's PHASES targets when asked."""
    global _clock
    if _clock is not None:
        return
    from sglang_nwor_scv.config import modes
    from sglang_nwor_scv.versions import installed_adapter

    path = modes().phases_path
    if not path:
        return
    adapter = installed_adapter("phase clocks")
    if adapter is None:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    _clock = PhaseClock(path)
    for name, target in adapter.PHASES.items():
        _HOOKS[name] = _around(name)
        HookRegistry.register(target, _HOOKS[name], HookType.AROUND)
    _clock.adapter = adapter
    logger.info("phase clocks on %d targets -> %s", len(adapter.PHASES), path)


def check_outermost(adapter) -> dict[str, bool]:
    """For targets NWOR/SCV hooks too: is the phase clock the outermost wrapper?"""
    from sglang_nwor_scv.hooks import resolve

    out = {}
    for name, target in adapter.PHASES.items():
        if target not in adapter.TARGETS.values() or name not in _HOOKS:
            continue
        cells = getattr(resolve(target), "__closure__", None) or ()
        out[target] = any(getattr(c, "cell_contents", None) is _HOOKS[name] for c in cells)
    return out

"""NWOR's device counters read without waiting for the GPU.

The commit kernel adds committed entries and accepted rows to a device counter; the
host needs them once per log interval. ``tolist()`` on that counter would wait for the
whole verify forward queued before the commit. Under the overlap scheduler (EAGLE's
v2 worker) that wait drains the pipeline once per interval. So a read is a copy into
pinned host memory queued on the stream, plus an event; its numbers are taken at a
later flush, once the event has completed (``event.query()`` never waits). Totals
therefore lag by up to one interval on a GPU. On the CPU the copy is done at once and
nothing lags.

Two pinned buffers, allocated once per runner (``prepare``, at its first commit), so a
flush never allocates pinned memory. If both are still in flight, the flush starts no
read: the device counter keeps accumulating and is read later, so nothing is lost.
When the scheduler goes idle the plugin waits once and counts everything
(``commit.flush_when_idle``); reads still in flight when a process is killed mid-burst
are never counted (``in_flight`` says how many there are; the totals file records it).

``start`` must run on the stream that updated the counter (the commit's): the copy and
the event are queued on the counter device's current stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BUFFERS = 2


@dataclass
class _Read:
    host: torch.Tensor  # int64 [2] (pinned on a CUDA host): committed, accepted
    event: object  # torch.cuda.Event, None when the copy is already done (CPU)
    staged: int  # host-side count of staged rows covered by this read
    busy: bool = False


class CounterReads:
    """Non-blocking reads of one ``[committed, accepted]`` device counter."""

    def __init__(self) -> None:
        self._slots: list[_Read] = []
        self._order: list[_Read] = []  # reads in flight, oldest first

    def prepare(self, counter: torch.Tensor) -> None:
        """Allocate the host buffers for ``counter`` (once)."""
        if not self._slots:
            pin = counter.is_cuda
            self._slots = [_Read(torch.zeros(2, dtype=torch.int64, pin_memory=pin), None, 0)
                           for _ in range(_BUFFERS)]

    def start(self, counter: torch.Tensor, staged: int) -> bool:
        """Queue a copy of ``counter`` (then zero it, in stream order). False: both
        buffers are still in flight; the counter keeps accumulating."""
        self.prepare(counter)
        slot = next((s for s in self._slots if not s.busy), None)
        if slot is None:
            return False
        if counter.is_cuda:
            slot.host.copy_(counter, non_blocking=True)
            slot.event = torch.cuda.Event()
            slot.event.record(torch.cuda.current_stream(counter.device))  # the copy's stream
        else:
            slot.host.copy_(counter)
            slot.event = None
        counter.zero_()
        slot.staged, slot.busy = staged, True
        self._order.append(slot)
        return True

    def take_ready(self) -> list[tuple[int, int, int]]:
        """``(staged, committed, accepted)`` of every read whose copy has landed, oldest
        first; never waits."""
        out = []
        while self._order and (self._order[0].event is None or self._order[0].event.query()):
            slot = self._order.pop(0)
            committed, accepted = (int(x) for x in slot.host.tolist())
            out.append((slot.staged, committed, accepted))
            slot.busy, slot.event = False, None
        return out

    @property
    def in_flight(self) -> int:
        return len(self._order)

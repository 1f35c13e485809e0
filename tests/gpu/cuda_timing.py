"""Device time per call from CUDA events, shared by the GPU benchmarks.

pytest-benchmark times the host side (call + synchronize); this is the other half:
back-to-back calls between two events, so launch overhead overlaps with execution.
"""

from __future__ import annotations

import torch


def device_us_per_call(fn, iters: int, warmup: int) -> float:
    """Mean device microseconds per ``fn()`` over ``iters`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters

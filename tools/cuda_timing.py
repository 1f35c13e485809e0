"""Device time and launches per call, shared by the GPU benchmarks and tests.

pytest-benchmark times the host side (call + synchronize); ``device_us_per_call`` is
the other half: back-to-back calls between two events, so launch overhead overlaps
with execution. ``launches_per_call`` counts the device work one call issues.
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


def launches_per_call(fn) -> int:
    """Kernels and memsets/copies one ``fn()`` issues (torch.profiler, after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

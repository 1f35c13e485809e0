"""Host µs per call of two ways to do one step, measured interleaved.

The plugin's kernels replace upstream launches whose cost is host time, so their benchmarks
time the host side: rounds of ``calls`` back-to-back calls per variant, the order swapped
every round, a device sync between rounds only (none on a CPU-only machine). Shared by the
kernel benchmarks that write their result into the kernels step's bench.json
(pytest-benchmark ``extra_info``) and by ``tests/bench_host_cost.py``."""

from __future__ import annotations

import statistics
import time

import torch


def interleaved_rounds(variants: dict, rounds: int, calls: int) -> dict:
    """Per variant, per round: mean µs per call (every variant called once first, to
    compile and warm it)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for f in variants.values():
        f()
    sync()
    names = list(variants)
    per_round = {name: {} for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            f = variants[name]
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                f()
            per_round[name][r] = (time.perf_counter_ns() - t0) / calls / 1e3
            sync()
    return per_round


def summarize(per_round: dict) -> dict:
    """Per-variant median µs per call with a bootstrap 95% CI, and the paired relative
    difference of the second variant against the first (``second_vs_first``)."""
    from tools.measure_latency import bootstrap_ci, paired_difference

    names = list(per_round)
    stats = {name: {"median_us": statistics.median(v.values()),
                    "ci95_us": list(bootstrap_ci(list(v.values())))} for name, v in per_round.items()}
    return {"per_variant": stats,
            "second_vs_first": paired_difference(per_round[names[1]], per_round[names[0]])}


def interleaved_host_us(benchmark, variants: dict, rounds: int, calls: int) -> dict:
    """``interleaved_rounds`` under pytest-benchmark, summarized."""
    per_round = benchmark.pedantic(lambda: interleaved_rounds(variants, rounds, calls),
                                   rounds=1, iterations=1)
    return {"rounds": rounds, "calls_per_round": calls, **summarize(per_round)}

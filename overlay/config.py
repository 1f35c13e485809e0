"""Feature switches, read from the environment when first needed (never at import
or plugin registration), so one installed plugin serves every configuration.

| variable                    | values                          | default     |
|-----------------------------|---------------------------------|-------------|
| SGLANG_NWOR_MODE            | off, stage                      | stage       |
| SGLANG_SCV_MODE             | off, vectorized, graph          | vectorized  |
| SGLANG_NWOR_SCV_DEBUG       | 0, 1 (check invariants per step)| 0           |
| SGLANG_NWOR_SCV_STEP_LOG    | path: append one JSON line/step | unset       |
| SGLANG_NWOR_SCV_LOG_INTERVAL| verify steps between log lines  | 100         |
| SGLANG_NWOR_SCV_FORCE_VERSION | adapter to use on an unsupported SGLang | unset |
| SGLANG_NWOR_GRAPH           | 0, 1: also stage in CUDA-graph verify (experimental) | 0 |
| SGLANG_NWOR_SCV_TOTALS      | path: cumulative counters as JSON, rewritten at each flush | unset |
| SGLANG_NWOR_SCV_PROFILE     | 0, 1: NVTX + torch.profiler ranges (sglang_nwor_scv.profiling) | 0 |
| SGLANG_NWOR_SCV_PROFILE_STEPS | a:b: cudaProfilerStart/Stop around verify steps a..b-1 | unset |
| SGLANG_NWOR_SCV_SYNC_CHECK  | 0, 1: count host syncs in our sites (sglang_nwor_scv.sync_check) | 0 |

``graph`` falls back to ``vectorized`` where no CUDA graph can be captured (CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

NWOR_MODES = ("off", "stage")
SCV_MODES = ("off", "vectorized", "graph")


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Modes:
    nwor: str
    scv: str
    debug: bool
    step_log: str | None
    log_interval: int
    graph_stage: bool = False
    totals_path: str | None = None

    @property
    def per_step(self) -> bool:
        """Debug or step-log mode: each step's counts are read (and checked) on the host."""
        return self.debug or bool(self.step_log)

    @property
    def nwor_on(self) -> bool:
        return self.nwor == "stage"

    @property
    def scv_on(self) -> bool:
        return self.scv != "off"


@lru_cache(maxsize=1)
def modes() -> Modes:
    """The process's modes, read once on first use."""
    return Modes(
        nwor=_choice("SGLANG_NWOR_MODE", NWOR_MODES, "stage"),
        scv=_choice("SGLANG_SCV_MODE", SCV_MODES, "vectorized"),
        debug=os.environ.get("SGLANG_NWOR_SCV_DEBUG", "0") not in ("", "0", "false"),
        step_log=os.environ.get("SGLANG_NWOR_SCV_STEP_LOG") or None,
        log_interval=int(os.environ.get("SGLANG_NWOR_SCV_LOG_INTERVAL", "100")),
        graph_stage=os.environ.get("SGLANG_NWOR_GRAPH", "0") == "1",
        totals_path=os.environ.get("SGLANG_NWOR_SCV_TOTALS") or None,
    )

"""Per target-model-runner state, and which call sites are wired.

One ``RunnerState`` per target ``ModelRunner`` (kept on the runner, never global):
whether NWOR may stage there, the open stage, the CUDA-graph buckets staged at
capture, the step's commit and the counters. The KV-move site sees only the KV
pool, so the state is also found from its pool (``state_for_pool``).
"""

from __future__ import annotations

import logging
import weakref

import torch

from sglang_nwor_scv.config import modes
from sglang_nwor_scv.counter_reads import CounterReads
from sglang_nwor_scv.eligibility import nwor_refusal
from sglang_nwor_scv.metrics import Metrics

logger = logging.getLogger("sglang_nwor_scv")

# Looked up by the upstream object, never stored on it: model runner -> RunnerState,
# KV pool -> RunnerState.
_by_runner: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_by_pool: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class RunnerState:
    """NWOR state of one target model runner (see the module docstring)."""

    def __init__(self, model_runner) -> None:
        from sglang_nwor_scv.graph_stage import GraphStaging

        m = modes()
        self.refusal = (m.refusal or "SGLANG_NWOR_MODE=off") if not m.nwor_on else nwor_refusal(model_runner)
        if not self.refusal and missing_sites():
            # Staging without its commit site would lose KV rows: never half-wire.
            self.refusal = f"call sites not wired: {sorted(missing_sites())}"
        both = both_ways_in()
        if both:
            logger.warning("sglang-nwor-scv: a patched SGLang tree and the plugin both wire %s; "
                           "it works, but verify steps are counted twice. Leave the plugin out "
                           "of SGLANG_PLUGINS on a patched tree (docs/patches.md)", sorted(both))
        self.stage = None  # the open VerifyStage of this step, if any
        self.committed_window = None  # out_cache_loc of the window NWOR committed this step
        self.graph = GraphStaging()
        self.metrics = Metrics()
        self.steps = 0  # committed verify steps
        self.verify_steps = 0  # every verify forward of this runner (flush cadence)
        self.flushed_at = 0  # verify_steps at the last flush (the idle flush skips if equal)
        self.pending = None  # device int64 [committed, accepted] since the last flush
        self.pending_staged = 0  # staged rows not yet handed to a counter read
        self.counter_reads = CounterReads()  # reads of ``pending`` in flight
        self.row_bytes = 0
        self.debug_snapshot = None  # (snapshot, window) of the open stage, debug mode only
        self.tp_rank = _process_rank()
        self.graph_note_logged = False
        pool = getattr(model_runner, "token_to_kv_pool", None)
        buffers = [*(getattr(pool, "k_buffer", None) or []), *(getattr(pool, "v_buffer", None) or [])]
        self.kv_pool_bytes = sum(b.numel() * b.element_size() for b in buffers)
        if pool is not None:
            try:
                _by_pool[pool] = self
            except TypeError:  # a pool type that cannot be weakly referenced
                pass
        if self.refusal:
            logger.warning("NWOR disabled for this model runner: %s", self.refusal)
        else:
            from sglang_nwor_scv.graph_stage import graph_staging_on

            logger.info("NWOR enabled (mode=%s, SCV=%s, graph staging=%s, debug=%s)",
                        m.nwor, m.scv, graph_staging_on(model_runner), m.debug)


def _process_rank() -> int:
    """This worker's rank (tensor-parallel ranks are the global ranks SGLang sets up;
    the attribute that holds it moved between SGLang versions)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def runner_state(model_runner) -> RunnerState:
    st = _by_runner.get(model_runner)
    if st is None:
        st = _by_runner[model_runner] = RunnerState(model_runner)
    return st


def all_states() -> list[RunnerState]:
    """Every runner state of this process (the idle flush visits them)."""
    return list(_by_runner.values())


def existing_state(model_runner) -> RunnerState | None:
    """The runner's state if a verify forward created it (never creates one)."""
    return _by_runner.get(model_runner) if model_runner is not None else None


def state_for_pool(pool) -> RunnerState | None:
    try:
        return _by_pool.get(pool)
    except TypeError:
        return None


# ---------------------------------------------------------------- wiring
REQUIRED_SITES = frozenset({"model_forward", "stage_kv", "after_accept", "accept_move"})
_wired: set[str] = set()
_wiring_check = None


def declare_wired(*names: str) -> None:
    """Called by patched upstream modules: these call sites are compiled in."""
    _wired.update(names)


def set_wiring_check(check) -> None:
    """The plugin passes a function that lists the hooks really applied."""
    global _wiring_check
    _wiring_check = check


def both_ways_in() -> set[str]:
    """Sites wired by the patched tree and hooked by the plugin at the same time."""
    return set(_wired) & (_wiring_check() if _wiring_check else set())


def missing_sites() -> set[str]:
    wired = set(_wired) | (_wiring_check() if _wiring_check else set())
    return set(REQUIRED_SITES - wired)

"""The call sites NWOR/SCV need inside SGLang, as plain version-agnostic functions.

Both ways in call exactly these: the plugin wraps upstream functions with them
(sglang_nwor_scv.hooks), and the versioned patches (patches/) insert one-line
calls to them. Each returns quickly and changes nothing when its feature is off
or the runner is ineligible.

This module holds the verify stage's life cycle (open before the verify forward,
stage each layer's K/V, close after) and names the other sites, which live with
their jobs: the commit (sglang_nwor_scv.commit), the KV move (.move), graph
capture staging (.graph_stage), SCV's verify (.scv), NGRAM's full mask (.ngram_mask)
and verify inputs (.ngram_verify_inputs), the replayed verify graph's attention
metadata (.verify_metadata), the scheduler's batch snapshot (.batch_snapshot), the NGRAM
lookup's accepted tokens from the scheduler's copy (.accept_readback).
State lives on the target ``ModelRunner`` (sglang_nwor_scv.state), not in globals.
"""

from __future__ import annotations

import contextlib
import logging
import weakref

from sglang_nwor_scv import debug_checks, graph_stage, sync_check
from sglang_nwor_scv.accept_readback import host_copies as accept_host_copies  # noqa: F401
from sglang_nwor_scv.accept_readback import remember as remember_accept_copies  # noqa: F401  (site "accept_readback")
from sglang_nwor_scv.batch_snapshot import isolated_batch  # noqa: F401  (site "forward_isolation")
from sglang_nwor_scv.batch_snapshot import record_batch  # noqa: F401  (site "batch_record")
from sglang_nwor_scv.batch_snapshot import sampling_copy  # noqa: F401  (site "sampling_copy")
from sglang_nwor_scv.batch_snapshot import wanted as batch_snapshot_wanted  # noqa: F401
from sglang_nwor_scv.commit import commit_after_accept  # noqa: F401  (call site "after_accept")
from sglang_nwor_scv.commit import flush_metrics
from sglang_nwor_scv.commit import flush_when_idle  # noqa: F401  (call site "scheduler_idle")
from sglang_nwor_scv.config import modes
from sglang_nwor_scv.move import accept_move  # noqa: F401  (call site "accept_move")
from sglang_nwor_scv.ngram_mask import full_mask as ngram_full_mask  # noqa: F401  (site "ngram_mask")
from sglang_nwor_scv.ngram_mask import wanted as ngram_mask_wanted  # noqa: F401
from sglang_nwor_scv.ngram_verify_inputs import prepare as ngram_verify_inputs  # noqa: F401
from sglang_nwor_scv.nwor import StagedLayer, VerifyStage  # noqa: F401  (tests build stages)
from sglang_nwor_scv.scv import try_verify_greedy  # noqa: F401  (call site "verify_greedy")
from sglang_nwor_scv.state import (  # noqa: F401  (patched modules call declare_wired)
    declare_wired,
    existing_state,
    runner_state,
    set_wiring_check,
)
from sglang_nwor_scv.verify_metadata import (  # noqa: F401  (call site "verify_metadata")
    try_fill as fill_target_verify_buffers,
)

logger = logging.getLogger("sglang_nwor_scv")

# The open stage of each target runner's attention backend (looked up by the backend,
# never stored on it).
_open_stage: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stage_of(backend):
    try:
        return _open_stage.get(backend)
    except TypeError:  # not a backend (None, or an object without weak references)
        return None


# ---------------------------------------------------------------- verify forward
def begin_verify_forward(model_runner, forward_batch) -> None:
    """Open a fresh stage for this TARGET_VERIFY forward (drops any stale one)."""
    if not forward_batch.forward_mode.is_target_verify():
        return
    st = runner_state(model_runner)
    st.stage = None
    st.committed_window = None
    if st.refusal:
        return
    pool = model_runner.token_to_kv_pool
    st.stage = VerifyStage(pool=pool, out_cache_loc=forward_batch.out_cache_loc,
                           num_layers=len(pool.k_buffer))
    # The eager and graph runners hand attention a copy of the batch (static
    # buffers), so the open stage is found by the attention backend instead.
    _open_stage[model_runner.attn_backend] = st.stage
    if modes().debug:
        with sync_check.allowed():
            st.debug_snapshot = debug_checks.poison_window(pool, forward_batch.out_cache_loc)


def end_verify_forward(model_runner, forward_batch, ok: bool, graph_replayed: bool = False) -> None:
    """Close the stage. Partial stages are flushed at once (upstream-equivalent).

    After a CUDA-graph replay the stage is the replayed bucket's, captured without
    KV writes (sglang_nwor_scv.graph_stage); a bucket captured with upstream's writes
    stages nothing and its step gets upstream's path (with the one-launch move)."""
    if not forward_batch.forward_mode.is_target_verify():
        return
    st = existing_state(model_runner)
    if st is None:
        return
    st.verify_steps += 1
    stage = st.stage
    if stage is None:
        return _flush_unstaged(st)
    stage.closed = ok
    if _stage_of(model_runner.attn_backend) is stage:
        del _open_stage[model_runner.attn_backend]
    if not ok:
        st.stage = None  # the step failed: never commit what it staged
        return
    if not stage.layers and graph_replayed:
        runner = getattr(model_runner, "decode_cuda_graph_runner", None)
        bucket = st.graph.buckets.get(getattr(runner, "bs", None))
        if not st.graph_note_logged:
            st.graph_note_logged = True
            logger.info(graph_stage.summary(st.graph))
        if bucket is not None:  # the bucket's K/V, refilled by this replay, never move
            stage.layers = bucket.layers
            stage.plan = bucket.plan
    if not stage.layers:
        st.stage = None  # nothing staged: upstream wrote this step's K/V
        return _flush_unstaged(st)
    if not stage.complete:
        logger.warning("NWOR: %d of %d layers staged; writing the stage whole",
                       len(stage.layers), stage.num_layers)
        stage.flush_all()
        st.metrics.add(flushed=1)
        st.stage = None
        return _flush_unstaged(st)


def _flush_unstaged(st) -> None:
    """A verify step that will not commit (NWOR refused, or nothing staged) still moves
    the counters to the host at the log interval (committed steps flush after their
    commit, so the last commit is always counted)."""
    if st.verify_steps % modes().log_interval == 0:
        flush_metrics(st, log=True)


def stage_kv(backend, forward_batch, layer, k, v, k_scale=None, v_scale=None) -> bool:
    """Stage one layer's verify K/V. True: handled, the caller must not write the pool."""
    captured = graph_stage.stage_captured(backend, forward_batch, layer, k, v, k_scale, v_scale)
    if captured is not None:
        return captured
    stage = _stage_of(backend)
    if stage is None or stage.closed or k is None or v is None:
        return False
    if not forward_batch.forward_mode.is_target_verify():
        return False
    if backend.token_to_kv_pool is not stage.pool:
        return False  # another model's pool
    stage.add(layer.layer_id, k, v, k_scale, v_scale)
    return True


def fused_kv_write_allowed(forward_batch) -> bool:
    """False while a stage is open: rope+KV-write fusion would bypass staging."""
    if not forward_batch.forward_mode.is_target_verify():
        return True
    if graph_stage.capturing():
        return False  # capturing a staged verify bucket
    try:  # the ambient backend of this forward (SGLang's forward context)
        from sglang.srt.model_executor.forward_context import get_attn_backend, has_forward_context
    except ImportError:  # no forward context: staging will see no rows -> upstream path
        return True
    stage = _stage_of(get_attn_backend()) if has_forward_context() else None
    return stage is None or stage.closed


# ---------------------------------------------------------------- CUDA-graph capture
@contextlib.contextmanager
def graph_capture(graph_runner, size):
    """Around the capture of one verify bucket (``capture_one_shape``): staged at
    capture when graph staging is on, with the capture's outcome recorded."""
    token = begin_graph_capture(graph_runner, size)
    ok = False
    try:
        yield
        ok = True
    finally:
        end_graph_capture(graph_runner, size, token, ok)


def begin_graph_capture(graph_runner, size):
    """Open a capture stage for one verify bucket (graph staging on)."""
    mode = getattr(graph_runner, "capture_forward_mode", None)
    if mode is None or not mode.is_target_verify():
        return None
    st = runner_state(graph_runner.model_runner)
    st.graph.record_reserved(first=True)
    if not graph_stage.wants_capture(graph_runner):
        return None
    return graph_stage.begin_capture(graph_runner, size, st)


def end_graph_capture(graph_runner, size, token, ok: bool) -> None:
    st = existing_state(graph_runner.model_runner)
    if st is None:
        return
    if token is not None:
        graph_stage.end_capture(graph_runner, size, token, ok, st)
    st.graph.record_reserved(first=False)

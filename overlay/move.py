"""The post-verify KV move (``move_accept_tokens_to_target_kvcache``), for every step.

After tree / NGRAM acceptance upstream copies the accepted path to the front of each
request's verify window. Two cases, decided per call:

- NWOR committed this step's window: the accepted rows are already in their final
  slots and the path's source rows were never written, so upstream's move must not
  run (it would copy rows that hold nothing).
- Any other step (NWOR refused: FlashInfer, FA3, other pools; a graph bucket over the
  staging budget; SGLANG_NWOR_MODE=off): the one-launch move
  (``kernels/move_kv.py``) puts the same bytes in the same slots as upstream's move,
  without the register-spilling ``copy_all_layer_kv_cache_tiled`` and without the
  2 x layers launches of ``SGLANG_NATIVE_MOVE_KV_CACHE=1``. Rows already in place
  (a whole chain) are not copied. Pools whose move differs (hybrid/SWA, page-major,
  HND, quantized) keep upstream's move, with one log line.
"""

from __future__ import annotations

import logging
import weakref

from sglang_nwor_scv import kernel_guard
from sglang_nwor_scv.config import modes
from sglang_nwor_scv.eligibility import move_refusal
from sglang_nwor_scv.state import state_for_pool

logger = logging.getLogger("sglang_nwor_scv")

_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> KVMovePlan | reason


def accept_move(batch, accept_index, num_correct_drafts, token_to_kv_pool_allocator) -> bool:
    """True when this step's accepted path is in place (NWOR committed it, or the fused
    move just moved it): the caller must then not run upstream's move."""
    pool = token_to_kv_pool_allocator.get_kvcache()
    st = state_for_pool(pool)
    if st is not None and st.committed_window is not None:
        committed, st.committed_window = st.committed_window, None
        if committed is batch.out_cache_loc:  # identity: a later step never matches
            return True
    done = modes().move and _fused_move(pool, accept_index, num_correct_drafts, batch.out_cache_loc)
    if st is not None:
        st.metrics.add(**{"moves_fused" if done else "moves_upstream": 1})
    return done


def _fused_move(pool, accept_index, num_correct_drafts, out_cache_loc) -> bool:
    plan = _plan_for(pool) if kernel_guard.usable("KV move") else None
    if plan is None:
        return False
    try:
        plan.launch(accept_index, num_correct_drafts, out_cache_loc)
    except ValueError as e:  # a shape the move does not take: upstream this step
        logger.warning("NWOR move: upstream's KV move runs for this step (%s)", e)
        return False
    except Exception as e:  # the launch itself failed (nothing moved): upstream from now on
        kernel_guard.record_failure("KV move", e, "upstream's post-verify move runs")
        return False
    return True


def _plan_for(pool):
    entry = _plans.get(pool)
    if entry is None:
        from sglang_nwor_scv.kernels.move_kv import KVMovePlan

        reason = move_refusal(pool)
        entry = reason if reason else KVMovePlan.for_pool(pool)
        _plans[pool] = entry
        if reason:
            logger.info("NWOR move: upstream's post-verify KV move kept: %s", reason)
        else:
            logger.info("NWOR move: post-verify KV moves run as one launch over %d buffers",
                        entry.num_buffers)
    return None if isinstance(entry, str) else entry

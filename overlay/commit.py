"""The NWOR commit: after acceptance, write the staged accepted rows to their final slots.

Runs right after acceptance (``commit_mamba_states_after_verify``, called by the EAGLE
family and NGRAM). One kernel launch writes every layer's accepted rows and, in the
same launch, adds the committed entries and the accepted rows to the runner's device
counters; the host reads them once per log interval without waiting for the GPU
(sglang_nwor_scv.counter_reads), or every step in debug / step-log mode, which sync
on purpose.
"""

from __future__ import annotations

import json
import logging

import torch

from sglang_nwor_scv import (accept_readback, debug_checks, kernel_guard, ngram_mask, scv, sync_check,
                             verify_metadata)
from sglang_nwor_scv.config import modes
from sglang_nwor_scv.json_file import write_json_atomically
from sglang_nwor_scv.kernels import launcher
from sglang_nwor_scv.state import RunnerState, all_states, existing_state

logger = logging.getLogger("sglang_nwor_scv")


def commit_after_accept(target_worker, batch, accept_lens, accept_index,
                        draft_token_num: int) -> None:
    """Commit the accepted rows of the open stage straight to their final slots."""
    st = existing_state(getattr(target_worker, "model_runner", None))
    if st is None or st.stage is None:
        return
    stage, st.stage = st.stage, None  # one-shot
    bs = accept_lens.shape[0]
    if (not stage.complete or not _same_window(batch.out_cache_loc, stage.out_cache_loc)
            or bs * draft_token_num != stage.rows or accept_index.shape[0] != bs):
        logger.warning("NWOR: stage does not match the accepted batch; writing it whole")
        stage.flush_all()
        st.metrics.add(flushed=1)
        return
    made = scv.take_commit_list(accept_index)  # SCV's kernel made it: rows, window positions
    m = modes()
    if st.pending is None:
        st.pending = torch.zeros(2, dtype=torch.int64, device=accept_lens.device)
        st.counter_reads.prepare(st.pending)
    counter = torch.zeros(2, dtype=torch.int64, device=accept_lens.device) if m.per_step else st.pending
    if made is not None:
        src, dst = made
        stage.commit(src, dst, committed=counter, dst_window=stage.out_cache_loc,
                     accept_lens=accept_lens)
    else:  # the commit reads upstream's acceptance itself
        stage.commit_from_acceptance(accept_index, accept_lens, draft_token_num, counter)
    st.committed_window = stage.out_cache_loc  # the move site skips exactly this window
    st.steps += 1
    st.pending_staged += stage.rows
    if not st.row_bytes:  # the pool's row size never changes: once per runner
        st.row_bytes = _row_bytes(stage)
    if m.per_step:
        st.pending += counter
        with sync_check.allowed():  # these modes sync on purpose
            from sglang_nwor_scv.kernels.commit_list import (commit_list_from_acceptance_ref,
                                                             slots_from_positions_ref)

            if made is not None:
                slots = slots_from_positions_ref(dst, stage.out_cache_loc)
            else:
                src, slots = commit_list_from_acceptance_ref(accept_index, accept_lens,
                                                             stage.out_cache_loc, draft_token_num)
            _step_record(st, stage, counter, accept_lens, src, slots, made is not None, m)
    st.debug_snapshot = None
    if st.steps % m.log_interval == 0:
        flush_metrics(st, log=True)


def _same_window(a, b) -> bool:
    """The batch's window is the staged one (the same tensor, or a view of the same slots)."""
    return a is b or (a.shape == b.shape and a.data_ptr() == b.data_ptr())


def _step_record(st: RunnerState, stage, counter, accept_lens, src, dst, scv_list: bool, m) -> None:
    """Debug / step-log mode: check this step now and write its record."""
    committed, accepted = (int(x) for x in counter.tolist())
    record = {"step": st.steps, "rank": st.tp_rank, "bs": int(accept_lens.shape[0]),
              "staged": stage.rows, "scv": scv_list, "graph": stage.plan is not None,
              "verify_rows": int(stage.out_cache_loc.numel()),
              "layers": len(stage.layers), "committed": committed, "accepted": accepted}
    ok = committed == accepted and record["layers"] == stage.num_layers
    if m.debug and st.debug_snapshot is not None:
        record.update(debug_checks.check_pool(stage, st.debug_snapshot, src, dst))
        ok = ok and record["poison_ok"] and record["outside_ok"] and record["commit_ok"]
    record["ok"] = bool(ok)
    if not ok:
        st.metrics.add(violations=1)
        logger.error("NWOR invariant violated: %s", record)
    if m.step_log:
        with open(m.step_log, "a") as f:
            f.write(json.dumps(record) + "\n")
    flush_metrics(st, log=False)


def flush_when_idle(fully_idle=None) -> None:
    """The scheduler has nothing queued or running: count everything not counted yet,
    so /metrics and the totals file are exact between bursts instead of up to one log
    interval behind. It waits for the device, once per burst: the GPU has no work left
    then, and no step is running. ``fully_idle``: the scheduler's own check, asked only
    when there is something to flush (the usual idle iteration costs one comparison)."""
    if _idle_flush["failed"]:
        return
    due = [st for st in all_states()
           if st.verify_steps != st.flushed_at or st.counter_reads.in_flight]
    if not due or (fully_idle is not None and not fully_idle()):
        return
    for st in due:
        try:
            flush_metrics(st, log=False, read_now=True)
        except Exception as e:  # housekeeping never takes the scheduler down: off for good
            _idle_flush["failed"] = True
            logger.warning("NWOR: idle counter flush failed (%s); from now on counters are "
                           "counted at the log interval only", e)
            return


_idle_flush = {"failed": False}


def flush_metrics(st: RunnerState, log: bool, read_now: bool = False) -> None:
    """Move device-side totals into the metrics: start a non-blocking read of the
    counter and count every earlier read that has landed (debug / step-log modes, and
    ``read_now``, wait for the device and read at once)."""
    counts = scv.take_counts()
    launches = launcher.take_counts()
    st.metrics.add(launches_kept=launches["kept"], launches_triton=launches["triton"],
                   scv_kernel=counts["fused"], scv_fallback=counts["fallback"],
                   ngram_mask_kernel=ngram_mask.take_count(),
                   ngram_draft_kernel=ngram_mask.take_count("draft"),
                   verify_metadata_kernel=verify_metadata.take_count(),
                   accept_readback=accept_readback.take_count(), host_syncs=sync_check.take())
    st.flushed_at = st.verify_steps
    per_step = modes().per_step
    if read_now and st.pending is not None and st.pending.is_cuda:
        with sync_check.allowed():  # the commit ran on the forward stream: wait for all
            torch.cuda.synchronize(st.pending.device)
    _take_landed(st)  # first: a landed read frees its buffer for this flush's read
    if st.pending is not None and st.pending_staged:
        if per_step or read_now:  # per-step modes sync every step anyway: read now
            with sync_check.allowed():
                committed, accepted = (int(x) for x in st.pending.tolist())
            st.pending.zero_()
            _count(st, st.pending_staged, committed, accepted, check=not per_step)  # per step: checked
            st.pending_staged = 0
        elif st.counter_reads.start(st.pending, st.pending_staged):  # no wait: read later
            st.pending_staged = 0
    _take_landed(st)  # on the CPU the read just started has landed already
    if log and (st.steps or st.metrics.totals["moves_fused"] or st.metrics.totals["moves_upstream"]):
        logger.info(st.metrics.summary())
    totals = modes().totals_path
    if totals:  # measurement runs; the idle flush writes while a client may be reading
        write_json_atomically(totals, dict(st.metrics.totals, steps=st.steps, verify_steps=st.verify_steps,
                                       counter_reads_in_flight=st.counter_reads.in_flight,
                                       graph=st.graph.report(), kv_pool_bytes=st.kv_pool_bytes,
                                       kernels_stepped_aside=kernel_guard.failures()))



def _take_landed(st: RunnerState) -> None:
    for staged, committed, accepted in st.counter_reads.take_ready():
        _count(st, staged, committed, accepted, check=True)


def _count(st: RunnerState, staged: int, committed: int, accepted: int, check: bool) -> None:
    st.metrics.add(staged=staged, committed=committed, accepted=accepted,
                   bytes_saved=(staged - committed) * st.row_bytes)
    if check and committed != accepted:
        st.metrics.add(violations=1)
        logger.error("NWOR: committed %d rows but verify accepted %d", committed, accepted)


def _row_bytes(stage) -> int:
    pool = stage.pool
    start = getattr(pool, "start_layer", 0) or 0
    total = 0
    for i in stage.layers:
        for buf in (pool.k_buffer[i - start], pool.v_buffer[i - start]):
            total += buf[0].numel() * buf.element_size()
    return total

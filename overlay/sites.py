"""The call sites NWOR/SCV need inside SGLang, as plain version-agnostic functions.

Both ways in call exactly these: the plugin wraps upstream functions with them
(sglang_nwor_scv.hooks), and the versioned patches (patches/) insert one-line
calls to them. Each returns quickly and changes nothing when the feature is off
or the runner is ineligible.

State lives on the target ``ModelRunner`` (``RunnerState``), not in globals.
"""

from __future__ import annotations

import contextvars
import json
import logging

import torch

from sglang_nwor_scv import sync_check
from sglang_nwor_scv.config import modes
from sglang_nwor_scv.eligibility import nwor_refusal
from sglang_nwor_scv.metrics import Metrics
from sglang_nwor_scv.nwor import StagedLayer, VerifyStage, commit_plan
from sglang_nwor_scv.scv import commit_list_from_scv, take_counts
from sglang_nwor_scv.scv import try_verify_greedy  # noqa: F401  (call site "verify_greedy")

logger = logging.getLogger("sglang_nwor_scv")

_STATE_ATTR = "_nwor_scv_state"
_BACKEND_ATTR = "_nwor_scv_stage"  # on the target runner's attention backend
POISON_BYTE = 0xA5  # debug mode fills verify-window rows with this before the forward


class RunnerState:
    """Per target-model-runner NWOR state: eligibility, the open stage, counters."""

    def __init__(self, model_runner) -> None:
        m = modes()
        self.refusal = "SGLANG_NWOR_MODE=off" if not m.nwor_on else nwor_refusal(model_runner)
        if not self.refusal and missing_sites():
            # Staging without its commit site would lose KV rows: never half-wire.
            self.refusal = f"call sites not wired: {sorted(missing_sites())}"
        self.stage: VerifyStage | None = None
        self.metrics = Metrics()
        self.steps = 0
        self.pending = None  # device int64 [committed, accepted] since the last flush (kept, zeroed)
        self.pending_staged = 0
        self.row_bytes = 0
        self.debug_snapshot = None  # (snapshot, window) of the open stage, debug mode only
        self.graph_stages: dict[int, dict] = {}  # bucket bs -> {layer_id: StagedLayer}
        self.graph_plans: dict[int, object] = {}  # bucket bs -> KVCommitPlan over its staged K/V
        self.tp_rank = _process_rank()
        self._graph_note = False
        if self.refusal:
            logger.warning("NWOR disabled for this model runner: %s", self.refusal)
        else:
            logger.info("NWOR enabled (mode=%s, SCV=%s, debug=%s)", m.nwor, m.scv, m.debug)


def _process_rank() -> int:
    """This worker's rank (tensor-parallel ranks are the global ranks SGLang sets up;
    the attribute that holds it moved between SGLang versions)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


def missing_sites() -> set[str]:
    wired = set(_wired) | (_wiring_check() if _wiring_check else set())
    return set(REQUIRED_SITES - wired)


def runner_state(model_runner) -> RunnerState:
    st = getattr(model_runner, _STATE_ATTR, None)
    if st is None:
        st = RunnerState(model_runner)
        setattr(model_runner, _STATE_ATTR, st)
    return st


# ---------------------------------------------------------------- verify forward
def begin_verify_forward(model_runner, forward_batch) -> None:
    """Open a fresh stage for this TARGET_VERIFY forward (drops any stale one)."""
    if not forward_batch.forward_mode.is_target_verify():
        return
    st = runner_state(model_runner)
    st.stage = None
    if st.refusal:
        return
    pool = model_runner.token_to_kv_pool
    st.stage = VerifyStage(pool=pool, out_cache_loc=forward_batch.out_cache_loc,
                           num_layers=len(pool.k_buffer))
    # The eager and graph runners hand attention a copy of the batch (static
    # buffers), so the open stage hangs off the attention backend instead.
    setattr(model_runner.attn_backend, _BACKEND_ATTR, st.stage)
    if modes().debug:
        with sync_check.allowed():
            st.debug_snapshot = _poison_window(pool, forward_batch.out_cache_loc)


def end_verify_forward(model_runner, forward_batch, ok: bool, graph_replayed: bool = False) -> None:
    """Close the stage. Partial stages are flushed at once (upstream-equivalent).

    After a CUDA-graph replay the stage is the one captured for the replayed bucket
    (SGLANG_NWOR_GRAPH=1), cut to this batch's rows."""
    if not forward_batch.forward_mode.is_target_verify():
        return
    st = runner_state(model_runner)
    stage = st.stage
    if stage is None:
        return
    stage.closed = ok
    if getattr(model_runner.attn_backend, _BACKEND_ATTR, None) is stage:
        setattr(model_runner.attn_backend, _BACKEND_ATTR, None)
    if not ok:
        st.stage = None  # the step failed: never commit what it staged
        return
    if not stage.layers and graph_replayed:
        runner = getattr(model_runner, "decode_cuda_graph_runner", None)
        bucket = getattr(runner, "bs", None)
        captured = st.graph_stages.get(bucket)
        if captured:
            rows = stage.rows
            stage.layers = {i: StagedLayer(s.k[:rows], s.v[:rows], s.k_scale, s.v_scale)
                            for i, s in captured.items()}
            # The bucket's K/V never move between replays: build its commit plan once
            # (rows below the bucket's size are simply never named by the commit list).
            plan = st.graph_plans.get(bucket)
            if plan is None:
                full = next(iter(captured.values())).k.shape[0]
                plan = st.graph_plans[bucket] = commit_plan(stage.pool, captured, full)
            stage.plan = plan
    if not stage.layers:
        # A replayed CUDA graph ran the captured upstream writes: nothing was staged.
        st.stage = None
        if not st._graph_note:
            st._graph_note = True
            logger.info("NWOR: CUDA-graph verify steps keep upstream KV writes; eager steps "
                        "stage (SGLANG_NWOR_GRAPH=1 stages graph steps too, experimental).")
        return
    if not stage.complete:
        logger.warning("NWOR: %d of %d layers staged; writing the stage whole",
                       len(stage.layers), stage.num_layers)
        stage.flush_all()
        st.metrics.add(flushed=1)
        st.stage = None


def stage_kv(backend, forward_batch, layer, k, v, k_scale=None, v_scale=None) -> bool:
    """Stage one layer's verify K/V. True: handled, the caller must not write the pool."""
    capture = _capture.get()
    if capture is not None:
        return _stage_captured(capture, backend, forward_batch, layer, k, v, k_scale, v_scale)
    stage = getattr(backend, _BACKEND_ATTR, None)
    if stage is None or stage.closed or k is None or v is None:
        return False
    if not forward_batch.forward_mode.is_target_verify():
        return False
    if backend.token_to_kv_pool is not stage.pool:
        return False  # another model's pool
    stage.add(layer.layer_id, k, v, k_scale, v_scale)
    return True


# ---------------------------------------------------------------- CUDA-graph capture
_capture: contextvars.ContextVar = contextvars.ContextVar("nwor_scv_capture", default=None)


def begin_graph_capture(graph_runner, size):
    """Open a capture stage for one verify bucket (SGLANG_NWOR_GRAPH=1 only)."""
    if not modes().graph_stage:
        return None
    mode = getattr(graph_runner, "capture_forward_mode", None)
    if mode is None or not mode.is_target_verify():
        return None
    if getattr(graph_runner, "ragged_verify_mode", False) or getattr(graph_runner, "enable_pdmux", False):
        return None
    model_runner = graph_runner.model_runner
    st = runner_state(model_runner)
    if st.refusal:
        return None
    layers: dict = {}
    st.graph_stages[int(size)] = layers
    return _capture.set((model_runner.token_to_kv_pool, layers))


def end_graph_capture(graph_runner, size, token, ok: bool) -> None:
    if token is None:
        return
    _capture.reset(token)
    st = runner_state(graph_runner.model_runner)
    layers = st.graph_stages.get(int(size))
    n = len(graph_runner.model_runner.token_to_kv_pool.k_buffer)
    if not ok or layers is None or len(layers) != n:
        # The graph may lack some layers' writes: never replay it without them.
        raise RuntimeError(f"NWOR graph capture of bucket {size} staged "
                           f"{len(layers or {})} of {n} layers; set SGLANG_NWOR_GRAPH=0")
    logger.info("NWOR: verify graph bucket %s captured without KV writes (%d layers staged)",
                size, n)


def _stage_captured(capture, backend, forward_batch, layer, k, v, k_scale, v_scale) -> bool:
    pool, layers = capture
    if (k is None or v is None or backend.token_to_kv_pool is not pool
            or not forward_batch.forward_mode.is_target_verify()):
        return False
    if not torch.cuda.is_current_stream_capturing():
        return False  # warm-up forwards before capture write as upstream (dummy slots)
    # The captured run's k/v live in the graph's memory pool: holding them keeps
    # them there, and every replay refills them.
    layers[layer.layer_id] = StagedLayer(k, v, k_scale, v_scale)
    return True


def fused_kv_write_allowed(forward_batch) -> bool:
    """False while a stage is open: rope+KV-write fusion would bypass staging."""
    if not forward_batch.forward_mode.is_target_verify():
        return True
    if _capture.get() is not None:
        return False  # capturing a staged verify graph
    try:  # the ambient backend of this forward (SGLang's forward context)
        from sglang.srt.model_executor.forward_context import get_attn_backend, has_forward_context
    except ImportError:  # no forward context: staging will see no rows -> upstream path
        return True
    stage = getattr(get_attn_backend(), _BACKEND_ATTR, None) if has_forward_context() else None
    return stage is None or stage.closed


# ---------------------------------------------------------------- after acceptance
def commit_after_accept(target_worker, batch, accept_lens, accept_index,
                        draft_token_num: int) -> None:
    """Commit the accepted rows of the open stage straight to their final slots."""
    model_runner = getattr(target_worker, "model_runner", None)
    st = getattr(model_runner, _STATE_ATTR, None) if model_runner is not None else None
    if st is None or st.stage is None:
        return
    stage, st.stage = st.stage, None  # one-shot
    same_window = (batch.out_cache_loc is stage.out_cache_loc
                   or (batch.out_cache_loc.shape == stage.out_cache_loc.shape
                       and batch.out_cache_loc.data_ptr() == stage.out_cache_loc.data_ptr()))
    bs = accept_lens.shape[0]
    if (not stage.complete or not same_window or bs * draft_token_num != stage.rows
            or accept_index.shape[0] != bs):
        logger.warning("NWOR: stage does not match the accepted batch; writing it whole")
        stage.flush_all()
        st.metrics.add(flushed=1)
        return
    from sglang_nwor_scv.kernels.commit_list import commit_list_from_acceptance  # triton: lazily

    made = commit_list_from_scv(accept_index, stage.out_cache_loc)
    src, dst = made if made is not None else commit_list_from_acceptance(
        accept_index, accept_lens, stage.out_cache_loc, draft_token_num)
    per_step = modes().per_step
    if st.pending is None:
        st.pending = torch.zeros(2, dtype=torch.int64, device=src.device)
    counter = torch.zeros(1, dtype=torch.int64, device=src.device) if per_step else st.pending[0:1]
    stage.commit(src, dst, committed=counter)  # the kernel adds its committed rows to counter
    # Keyed by this step's window tensor: a later step (new window) never matches.
    setattr(batch, _MOVED_ATTR, stage.out_cache_loc)
    _account(st, stage, counter, accept_lens, src, dst, made is not None, per_step)


_MOVED_ATTR = "_nwor_scv_moved_window"


def accept_move_needed(batch) -> bool:
    """False when NWOR already wrote this step's accepted path to its final slots."""
    moved = getattr(batch, _MOVED_ATTR, None)
    if moved is not None and moved is batch.out_cache_loc:
        setattr(batch, _MOVED_ATTR, None)
        return False
    return True


# ---------------------------------------------------------------- accounting
def _account(st: RunnerState, stage: VerifyStage, counter, accept_lens, src, dst,
             scv: bool, per_step: bool) -> None:
    """Accumulate in ``st.pending`` on the device (the commit kernel already added the
    committed rows there, outside per-step mode; the accepted total takes two small
    launches); copy to the host once per log interval, or per step in debug /
    step-log mode, which sync on purpose."""
    st.steps += 1
    st.pending_staged += stage.rows
    if not st.row_bytes:  # the pool's row size never changes: once per runner
        st.row_bytes = _row_bytes(stage)
    accepted = accept_lens.sum(dtype=torch.int64)
    m = modes()
    if per_step:
        pair = torch.stack([counter[0], accepted])
        st.pending += pair
        with sync_check.allowed():  # these modes sync on purpose
            _step_record(st, stage, pair, accept_lens, src, dst, scv, m)
    else:
        st.pending[1:].add_(accepted)
    st.debug_snapshot = None
    if st.steps % max(1, m.log_interval) == 0:
        flush_metrics(st, log=True)


def _step_record(st: RunnerState, stage: VerifyStage, pair, accept_lens, src, dst, scv: bool,
                 m) -> None:
    """Debug / step-log mode: check this step now and write its record."""
    committed, accepted = (int(x) for x in pair.tolist())
    record = {"step": st.steps, "rank": st.tp_rank, "bs": int(accept_lens.shape[0]),
              "staged": stage.rows,
              "scv": scv,
              "verify_rows": int(stage.out_cache_loc.numel()),
              "layers": len(stage.layers), "committed": committed, "accepted": accepted}
    ok = committed == accepted and record["layers"] == stage.num_layers
    if m.debug and st.debug_snapshot is not None:
        record.update(_check_pool(stage, st.debug_snapshot, src, dst))
        ok = ok and record["poison_ok"] and record["outside_ok"] and record["commit_ok"]
    record["ok"] = bool(ok)
    if not ok:
        st.metrics.add(violations=1)
        logger.error("NWOR invariant violated: %s", record)
    if m.step_log:
        with open(m.step_log, "a") as f:
            f.write(json.dumps(record) + "\n")
    flush_metrics(st, log=False)


def flush_metrics(st: RunnerState, log: bool) -> None:
    """Move device-side totals into the metrics (one small device-to-host copy)."""
    scv = take_counts()
    st.metrics.add(scv_kernel=scv["fused"], scv_fallback=scv["fallback"], host_syncs=sync_check.take())
    if st.pending is not None and st.pending_staged:
        with sync_check.allowed():  # one small copy per log interval, on purpose
            committed, accepted = (int(x) for x in st.pending.tolist())
        st.pending.zero_()
        staged, st.pending_staged = st.pending_staged, 0
        st.metrics.add(staged=staged, committed=committed, accepted=accepted,
                       bytes_saved=(staged - committed) * st.row_bytes)
        if committed != accepted and not modes().per_step:  # per-step mode counted it already
            st.metrics.add(violations=1)
            logger.error("NWOR: committed %d rows but verify accepted %d", committed, accepted)
    if log:
        logger.info(st.metrics.summary())
    totals = modes().totals_path
    if totals:  # measurement runs: cumulative counters of this process
        with open(totals, "w") as f:
            json.dump(dict(st.metrics.totals, steps=st.steps), f)


def _row_bytes(stage: VerifyStage) -> int:
    pool = stage.pool
    start = getattr(pool, "start_layer", 0) or 0
    total = 0
    for i in stage.layers:
        for buf in (pool.k_buffer[i - start], pool.v_buffer[i - start]):
            total += buf[0].numel() * buf.element_size()
    return total


# ---------------------------------------------------------------- debug checks
_SNAPSHOT_LIMIT = 256 << 20  # bytes: larger pools are checked on the window only


def _poison_window(pool, out_cache_loc):
    loc = out_cache_loc.to(torch.int64)
    bufs = list(pool.k_buffer) + list(pool.v_buffer)
    for buf in bufs:
        buf.view(torch.uint8).view(buf.shape[0], -1)[loc] = POISON_BYTE
    total = sum(b.numel() * b.element_size() for b in bufs)
    snapshot = [b.clone() for b in bufs] if total <= _SNAPSHOT_LIMIT else None
    return snapshot, loc


def _check_pool(stage: VerifyStage, debug, src, dst) -> dict:
    snapshot, window = debug
    pool = stage.pool
    start = getattr(pool, "start_layer", 0) or 0
    valid = (src >= 0) & (dst >= 0)
    dst_v, src_v = dst[valid], src[valid]
    rejected = window[~torch.isin(window, dst_v)]
    poison_ok = outside_ok = commit_ok = True
    for i, staged in stage.layers.items():
        for buf, srcs in ((pool.k_buffer[i - start], staged.k), (pool.v_buffer[i - start], staged.v)):
            rows = buf.view(torch.uint8).view(buf.shape[0], -1)
            poison_ok &= bool((rows[rejected] == POISON_BYTE).all())
            if buf.dtype == srcs.dtype and staged.k_scale is None:
                want = srcs.reshape(srcs.shape[0], -1)[src_v]
                commit_ok &= torch.equal(buf.view(buf.shape[0], -1)[dst_v].view(torch.uint8),
                                         want.contiguous().view(torch.uint8))
    if snapshot is not None:
        touched = torch.zeros(pool.k_buffer[0].shape[0], dtype=torch.bool, device=window.device)
        touched[dst_v] = True
        bufs = list(pool.k_buffer) + list(pool.v_buffer)
        for before, after in zip(snapshot, bufs, strict=True):
            b = before.view(torch.uint8).view(before.shape[0], -1)[~touched]
            a = after.view(torch.uint8).view(after.shape[0], -1)[~touched]
            outside_ok &= torch.equal(a, b)
    return {"poison_ok": bool(poison_ok), "outside_ok": bool(outside_ok),
            "commit_ok": bool(commit_ok), "rejected_rows": int(rejected.numel())}

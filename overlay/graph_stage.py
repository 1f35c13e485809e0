"""NWOR under CUDA graphs: verify buckets captured without their KV writes.

While a verify bucket of the decode graph runner is being captured, the Triton
backend's KV write site hands each layer's K/V here instead of writing the pool,
so the graph contains no verify KV write. Those tensors live in the graph's
memory pool and every replay refills them; after a replay the bucket's staged K/V
go to the same commit as an eager stage.

Memory. Holding a layer's K/V holds its whole projection output (k and v are views
of the fused qkv activation): for Llama-3-8B about 12 KB per token and layer. Held
for every bucket that would be the sum over SGLang's default bucket list (about
4,600 requests x draft tokens on an H100), many GB. So:

- After a bucket is captured its tensors are *released* to the graph pool and only
  borrowed views (``borrowed_view``) are kept: the next, smaller bucket's capture
  reuses that memory, so the pool grows by about one bucket's staged K/V, not the
  sum. This is safe because only one verify graph replays at a time and its
  staged rows are committed, on the same stream, before any other graph of the
  pool can replay (the commit runs right after acceptance, before draft-extend).
- A bucket is staged only if its staged K/V fit the budget
  (``SGLANG_NWOR_GRAPH_MAX_MB``; ``auto``: 1% of the KV pool, at most 1 GiB, and at
  most half the free device memory when its capture starts). Larger buckets are
  captured as upstream does; their steps still get the one-launch move
  (sglang_nwor_scv.move). The size is measured on the warm-up forwards that
  SGLang runs right before each capture, so the decision comes before any layer
  of the captured forward is staged.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from sglang_nwor_scv.config import GRAPH_AUTO_ALGORITHMS, modes
from sglang_nwor_scv.nwor import StagedLayer, commit_plan

logger = logging.getLogger("sglang_nwor_scv")

_MIB = 1 << 20
_AUTO_POOL_FRACTION = 0.01
_AUTO_CAP = 1024 * _MIB
_FREE_FRACTION = 0.5


@dataclass
class BucketStage:
    """What one captured verify bucket stages: borrowed K/V views and their commit plan."""

    layers: dict  # layer_id -> StagedLayer (borrowed views into the graph pool)
    plan: object  # KVCommitPlan over those views, built once
    tokens: int
    held_bytes: int  # graph-pool bytes this bucket's staged K/V held during its capture


@dataclass
class GraphStaging:
    """Per-runner record of graph staging: staged buckets, skipped ones, the budget."""

    buckets: dict = field(default_factory=dict)  # bucket bs -> BucketStage
    skipped: dict = field(default_factory=dict)  # bucket bs -> estimated bytes (over budget)
    budget_bytes: int | None = None
    reserved_before: int | None = None  # device memory reserved before the first verify capture
    reserved_after: int | None = None  # ... and after the latest one

    def record_reserved(self, first: bool) -> None:
        """Allocator bookkeeping (no device sync): what the verify captures reserved."""
        if torch.cuda.is_available():
            now = torch.cuda.memory_reserved()
            if first and self.reserved_before is None:
                self.reserved_before = now
            if not first:
                self.reserved_after = now

    def report(self) -> dict:
        """For the totals file: per bucket, what staging holds (or would hold)."""
        return {"budget_bytes": self.budget_bytes,
                "staged_held_bytes": {str(b): v.held_bytes for b, v in sorted(self.buckets.items())},
                "skipped_estimated_bytes": {str(b): v for b, v in sorted(self.skipped.items())},
                "capture_reserved_bytes": (None if None in (self.reserved_before, self.reserved_after)
                                           else self.reserved_after - self.reserved_before)}


@dataclass
class _Capture:
    """One bucket's capture in progress (lives in a contextvar during capture_one_shape)."""

    pool: object
    bucket: int
    budget_bytes: int
    probe: dict = field(default_factory=dict)  # layer_id -> bytes its K/V hold (warm-up)
    staged: dict = field(default_factory=dict)  # layer_id -> StagedLayer (owning, capture only)
    decided: bool | None = None  # None until the captured forward reaches its first layer


_capture: contextvars.ContextVar = contextvars.ContextVar("nwor_scv_capture", default=None)


def capturing() -> bool:
    """A staged-bucket capture is in progress (fused KV writes must stay off)."""
    cap = _capture.get()
    return cap is not None and _decide(cap) is not False


def budget_bytes(kv_pool_bytes: int) -> int:
    """The largest staged-K/V footprint a bucket may hold (see the module docstring)."""
    mb = modes().graph_max_mb
    if mb is not None:
        return mb * _MIB
    return auto_budget_bytes(kv_pool_bytes)


def auto_budget_bytes(kv_pool_bytes: int) -> int:
    """``SGLANG_NWOR_GRAPH_MAX_MB=auto``: 1% of the KV pool, at most 1 GiB."""
    return min(int(kv_pool_bytes * _AUTO_POOL_FRACTION), _AUTO_CAP)


def graph_staging_on(model_runner) -> bool:
    """SGLANG_NWOR_GRAPH for this runner (``auto``: the algorithms in
    config.GRAPH_AUTO_ALGORITHMS)."""
    wanted = modes().graph_stage
    if wanted is not None:
        return wanted
    args = getattr(model_runner, "server_args", None)
    algo = str(getattr(args, "speculative_algorithm", None) or "").upper()
    return algo in GRAPH_AUTO_ALGORITHMS


def wants_capture(graph_runner) -> bool:
    """This graph runner captures target-verify buckets that staging can take."""
    if not graph_staging_on(graph_runner.model_runner):
        return False
    mode = getattr(graph_runner, "capture_forward_mode", None)
    if mode is None or not mode.is_target_verify():
        return False
    return not (getattr(graph_runner, "ragged_verify_mode", False)
                or getattr(graph_runner, "enable_pdmux", False)
                or _graphs_per_size(graph_runner) > 1)


def _graphs_per_size(graph_runner) -> int:
    """How many graphs the runner captures per batch size: one per LoRA variant (lora /
    nolora) times one per attention variant. A bucket is keyed by its size only, so
    runners that capture several graphs per size keep upstream's writes (staging one
    graph of a size and replaying another would commit the wrong graph's K/V)."""
    lora = 2 if getattr(graph_runner, "record_nolora_graph", False) else 1
    variants = getattr(graph_runner, "attention_graph_variants", None)
    labels = getattr(variants, "capture_labels", None) if variants is not None else None
    return lora * (len(labels) if labels else 1)


def begin_capture(graph_runner, size, state):
    """Open a capture stage for one verify bucket; returns a token for ``end_capture``."""
    if state.refusal:
        return None
    pool = graph_runner.model_runner.token_to_kv_pool
    if state.graph.budget_bytes is None:
        state.graph.budget_bytes = budget_bytes(state.kv_pool_bytes)
    budget = state.graph.budget_bytes
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        budget = min(budget, int(free * _FREE_FRACTION))
    return _capture.set(_Capture(pool=pool, bucket=int(size), budget_bytes=budget))


def end_capture(graph_runner, size, token, ok: bool, state) -> None:
    if token is None:
        return
    cap = _capture.get()
    _capture.reset(token)
    if not ok:
        return  # SGLang's capture raised: its error propagates, nothing was recorded
    if not cap.decided:
        if cap.decided is False:
            state.graph.skipped[cap.bucket] = sum(cap.probe.values())
        return
    n = len(graph_runner.model_runner.token_to_kv_pool.k_buffer)
    if len(cap.staged) != n:
        # The graph may lack some layers' writes: never replay it without them.
        raise RuntimeError(f"NWOR graph capture of bucket {size} staged {len(cap.staged)} "
                           f"of {n} layers; set SGLANG_NWOR_GRAPH=0")
    held = sum(_held_bytes(s) for s in cap.staged.values())
    tokens = next(iter(cap.staged.values())).k.shape[0]
    # Borrow, then drop the owners: the graph pool may hand this memory to the next
    # bucket's capture (module docstring: why that is safe).
    layers = {i: StagedLayer(borrowed_view(s.k), borrowed_view(s.v), s.k_scale, s.v_scale)
              for i, s in cap.staged.items()}
    cap.staged.clear()
    plan = commit_plan(cap.pool, layers)
    state.graph.buckets[cap.bucket] = BucketStage(layers, plan, tokens, held)
    logger.debug("NWOR: verify graph bucket %d captured without KV writes (%d layers, %d tokens, "
                 "%.1f MiB of staged K/V, released to the graph pool)", cap.bucket, n, tokens,
                 held / _MIB)


def stage_captured(backend, forward_batch, layer, k, v, k_scale, v_scale) -> bool | None:
    """The KV write site during a bucket capture. None: no capture is open here."""
    cap = _capture.get()
    if cap is None:
        return None
    if (k is None or v is None or backend.token_to_kv_pool is not cap.pool
            or not forward_batch.forward_mode.is_target_verify()):
        return False
    if not torch.cuda.is_current_stream_capturing():
        # Warm-up forward right before the capture: write as upstream (dummy slots),
        # and measure what staging this layer would hold.
        cap.probe[layer.layer_id] = _held_bytes(StagedLayer(k, v))
        return False
    if not _decide(cap):
        return False
    cap.staged[layer.layer_id] = StagedLayer(k, v, k_scale, v_scale)
    return True


def _decide(cap: _Capture) -> bool | None:
    """Stage this bucket? Decided once, when its captured forward starts."""
    if cap.decided is None and torch.cuda.is_current_stream_capturing():
        need = sum(cap.probe.values())
        cap.decided = bool(cap.probe) and need <= cap.budget_bytes
        if not cap.decided:
            logger.debug("NWOR: verify graph bucket %d keeps upstream KV writes: staging would "
                         "hold %.1f MiB (budget %.1f MiB)", cap.bucket, need / _MIB,
                         cap.budget_bytes / _MIB)
    return cap.decided


def summary(graph: GraphStaging) -> str:
    """One line for the log: which buckets stage and what they hold."""
    staged = sorted(graph.buckets)
    if not staged and not graph.skipped:
        return "NWOR: no verify graph bucket was captured with staging"
    held = max((b.held_bytes for b in graph.buckets.values()), default=0)
    text = (f"NWOR graph staging: {len(staged)} of {len(staged) + len(graph.skipped)} verify "
            f"buckets staged")
    if staged:
        text += f" (bs {staged[0]}-{staged[-1]}), largest holds {held / _MIB:.1f} MiB"
    if graph.budget_bytes is not None:
        text += f" (budget {graph.budget_bytes / _MIB:.1f} MiB)"
    if graph.skipped:
        text += f"; bs {min(graph.skipped)}-{max(graph.skipped)} keep upstream KV writes"
    return text


def _held_bytes(staged: StagedLayer) -> int:
    """Bytes of the distinct allocations a layer's staged K/V keep alive."""
    seen = {}
    for t in (staged.k, staged.v):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_TYPESTR = {torch.uint8: "|u1", torch.int16: "<i2", torch.int32: "<i4", torch.int64: "<i8"}


def borrowed_view(t: torch.Tensor) -> torch.Tensor:
    """A tensor over ``t``'s memory that does not keep that memory allocated.

    Built through the array-interface protocol (CUDA: ``__cuda_array_interface__``),
    via a same-size integer view for dtypes the protocol cannot name (bf16, fp8).
    Valid only while the memory holds what the caller expects (here: from a bucket's
    replay until its commit)."""
    word = t.view(_WORD[t.element_size()])
    iface = {"shape": tuple(word.shape), "typestr": _TYPESTR[word.dtype],
             "data": (word.data_ptr(), False), "version": 3,
             "strides": tuple(s * word.element_size() for s in word.stride())}
    if t.is_cuda:
        out = torch.as_tensor(SimpleNamespace(__cuda_array_interface__=iface), device=t.device)
    else:  # CPU tests of the same logic
        import numpy as np

        out = torch.from_numpy(np.asarray(SimpleNamespace(__array_interface__=iface)))
    return out.view(t.dtype)

"""NWOR: stage the target model's verify K/V, then commit only accepted rows.

One ``VerifyStage`` lives for exactly one TARGET_VERIFY forward of one model
runner. It holds references to the K/V tensors the forward already produced (no
copy, no extra DRAM write) and is either committed once, after acceptance, or
flushed whole (the upstream behaviour) when anything does not line up. A stage
that is neither is dropped when the next verify forward opens a new one, so a
step that failed between staging and commit can never leak into a later step.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch

from sglang_nwor_scv import kernel_guard

logger = logging.getLogger(__name__)


@dataclass
class StagedLayer:
    k: torch.Tensor  # [T, H, Dk], any token/head strides
    v: torch.Tensor  # [T, H, Dv]
    k_scale: object = None
    v_scale: object = None


@dataclass
class VerifyStage:
    """K/V of one verify forward, held instead of written to ``pool``."""

    pool: object  # MHATokenToKVPool of the target model
    out_cache_loc: torch.Tensor  # [bs * N] int64: the verify window's slots
    num_layers: int
    layers: dict[int, StagedLayer] = field(default_factory=dict)
    closed: bool = False  # the forward returned normally
    plan: object = None  # a KVCommitPlan reused across steps (a CUDA-graph bucket's static K/V)

    def __post_init__(self) -> None:
        self.rows = int(self.out_cache_loc.numel())  # read once: add() runs per layer

    def add(self, layer_id: int, k, v, k_scale=None, v_scale=None) -> None:
        if layer_id in self.layers:
            raise RuntimeError(f"NWOR: layer {layer_id} staged twice in one verify forward")
        if k.shape[0] != self.rows or v.shape[0] != self.rows:
            raise RuntimeError(
                f"NWOR: layer {layer_id} staged {k.shape[0]} rows, window has {self.rows}")
        self.layers[layer_id] = StagedLayer(k, v, k_scale, v_scale)

    @property
    def complete(self) -> bool:
        return self.closed and len(self.layers) == self.num_layers

    def commit(self, src_rows: torch.Tensor, dst_slots: torch.Tensor,
               committed: torch.Tensor | None = None, *, dst_window: torch.Tensor | None = None,
               accept_lens: torch.Tensor | None = None) -> None:
        """Write staged rows ``src_rows`` to pool slots ``dst_slots`` (-1 = skip), all layers
        (``dst_window``: ``dst_slots`` are positions in it; ``accept_lens``: counted too)."""
        args = (src_rows, dst_slots, committed)
        kw = dict(dst_window=dst_window, accept_lens=accept_lens)
        self._launch(lambda plan: plan.launch(*args, **kw), lambda plan: plan.launch_ref(*args, **kw))

    def commit_from_acceptance(self, accept_index: torch.Tensor, accept_lens: torch.Tensor,
                               draft_token_num: int, committed: torch.Tensor | None = None) -> None:
        """Write upstream's accepted path of each request to the front of its window, all
        layers, in one launch that reads ``accept_index`` itself (no commit list first)."""
        def by_torch(plan):
            from sglang_nwor_scv.kernels.commit_list import commit_list_from_acceptance_ref

            src, dst = commit_list_from_acceptance_ref(accept_index, accept_lens, self.out_cache_loc,
                                                       draft_token_num)
            plan.launch_ref(src, dst, committed, accept_lens=accept_lens)

        self._launch(lambda plan: plan.launch_from_acceptance(
            accept_index, accept_lens, self.out_cache_loc, draft_token_num, committed), by_torch)

    def _launch(self, launch, by_torch) -> None:
        """``launch(plan)`` with a CUDA-graph bucket's kept plan (its K/V tensors stay), or
        with the pool's eager plan rebound to this stage's K/V, released once queued. If the
        kernel fails to launch, ``by_torch(plan)`` writes the same rows, now and from then on
        (kernel_guard): only the commit writes staged rows, so it cannot hand them back."""
        plan = self.plan if self.plan is not None else eager_commit_plan(self.pool, self.layers)
        try:
            if kernel_guard.usable("NWOR commit"):
                try:
                    launch(plan)
                    return
                except Exception as e:
                    if plan.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                        raise  # a capture is no place for the reference's host syncs
                    kernel_guard.record_failure("NWOR commit", e,
                                                "its torch reference writes the accepted rows")
            by_torch(plan)
        finally:
            if plan is not self.plan:
                plan.release_sources()

    def flush_all(self) -> None:
        """Write every staged row to its own slot: exactly what upstream would have done."""
        rows = torch.arange(self.rows, device=self.out_cache_loc.device, dtype=torch.int64)
        self.commit(rows, self.out_cache_loc.to(torch.int64))


def commit_plan(pool, layers: dict[int, StagedLayer]):
    """One-launch commit plan (pointer, stride and scale tables) from staged layers
    into ``pool``. Building it is host work (~0.3 ms for 32 layers),
    so a CUDA-graph bucket, whose staged K/V never move, builds it once."""
    from sglang_nwor_scv.kernels.commit_kv import KVCommitPlan

    ids, k_src, v_src, k_scales, v_scales = _sources(layers)
    start = getattr(pool, "start_layer", 0) or 0
    k_dst = [pool.k_buffer[i - start] for i in ids]
    v_dst = [pool.v_buffer[i - start] for i in ids]
    k_src = [_as_heads(x, k_dst[0].shape[-1]) for x in k_src]
    v_src = [_as_heads(x, v_dst[0].shape[-1]) for x in v_src]
    return KVCommitPlan(k_src, v_src, k_dst, v_dst, k_scales, v_scales, kv_dtype=pool.dtype)


# pool -> (layer ids, the pool's k_buffer and v_buffer lists, the last eager step's plan,
# its sources released after the launch)
_eager_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def eager_commit_plan(pool, layers: dict[int, StagedLayer]):
    """The commit plan of an eager verify step (new K/V tensors every step): the pool's
    last eager plan rebound to this step's addresses when the layout is the same (the
    usual case: the same model code at the same batch shape) and the pool still has the
    buffers the plan writes to, else a new plan. The caller releases its sources after
    the launch.

    The staged tensors are offered to ``rebind`` as they are: when they are already
    ``[T, H, D]`` (RadixAttention's K/V) they have the plan's layout; any other shape
    never matches, and those steps build a plan each (correct, slower)."""
    try:
        kept_ids, kept_k, kept_v, plan = _eager_plans.get(pool, (None, None, None, None))
    except TypeError:  # a pool without weak references: no reuse
        return commit_plan(pool, layers)
    ids, k_src, v_src, k_scales, v_scales = _sources(layers)
    if (plan is not None and kept_ids == ids and kept_k is pool.k_buffer and kept_v is pool.v_buffer
            and plan.rebind(k_src, v_src, k_scales, v_scales)):
        return plan
    plan = commit_plan(pool, layers)
    _eager_plans[pool] = (ids, pool.k_buffer, pool.v_buffer, plan)
    return plan


def _sources(layers: dict[int, StagedLayer]):
    """(layer ids, K and V tensors as staged, K and V scales or None) in layer order."""
    ids = sorted(layers)
    staged = [layers[i] for i in ids]
    k_scales, v_scales = [s.k_scale for s in staged], [s.v_scale for s in staged]
    if all(x is None for x in k_scales + v_scales):
        k_scales = v_scales = None
    return ids, [s.k for s in staged], [s.v for s in staged], k_scales, v_scales


def _as_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x if x.dim() == 3 and x.shape[2] == head_dim else x.view(x.shape[0], -1, head_dim)

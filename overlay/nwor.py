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
from dataclasses import dataclass, field

import torch

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

    @property
    def rows(self) -> int:
        return int(self.out_cache_loc.numel())

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
        plan = self.plan if self.plan is not None else commit_plan(self.pool, self.layers)
        plan.launch(src_rows, dst_slots, committed, dst_window=dst_window, accept_lens=accept_lens)

    def flush_all(self) -> None:
        """Write every staged row to its own slot: exactly what upstream would have done."""
        rows = torch.arange(self.rows, device=self.out_cache_loc.device, dtype=torch.int64)
        self.commit(rows, self.out_cache_loc.to(torch.int64))


def commit_plan(pool, layers: dict[int, StagedLayer]):
    """One-launch commit plan (pointer, stride and scale tables) from staged layers
    into ``pool``. Building it is host work (~0.3 ms for 32 layers),
    so a CUDA-graph bucket, whose staged K/V never move, builds it once."""
    from sglang_nwor_scv.kernels.commit_kv import KVCommitPlan

    ids = sorted(layers)
    start = getattr(pool, "start_layer", 0) or 0
    staged = [layers[i] for i in ids]
    k_dst = [pool.k_buffer[i - start] for i in ids]
    v_dst = [pool.v_buffer[i - start] for i in ids]
    k_src = [s.k.view(s.k.shape[0], -1, k_dst[0].shape[-1]) for s in staged]
    v_src = [s.v.view(s.v.shape[0], -1, v_dst[0].shape[-1]) for s in staged]
    k_scales, v_scales = [s.k_scale for s in staged], [s.v_scale for s in staged]
    if all(x is None for x in k_scales + v_scales):
        k_scales = v_scales = None
    return KVCommitPlan(k_src, v_src, k_dst, v_dst, k_scales, v_scales, kv_dtype=pool.dtype)

"""Move the accepted verify path to the front of each request's window, all layers, one launch.

After a tree (or NGRAM) verify step SGLang copies the accepted path's K/V rows to the
front of each request's verify window (``move_accept_tokens_to_target_kvcache`` in
``srt/speculative/spec_utils.py``): three index-building launches, then
``MHATokenToKVPool.move_kv_cache``, whose Triton kernel
``copy_all_layer_kv_cache_tiled`` holds up to 256 rows x one byte tile of every buffer
in registers per program. Above 128 rows that tile spills (H100: 2,706 spills, 344-516
MB of DRAM writes to move at most 4.75 MB, 345-382 us per launch; see
docs/move-fix.md). ``SGLANG_NATIVE_MOVE_KV_CACHE=1`` avoids the spill with two torch
index ops per layer (2 x layers launches of host work).

This op does the same move (same bytes land in the same slots) in one launch with
no spill: one program per (request, buffer, byte tile) holds only that request's
accepted rows (at most ``max_depth``). It builds the move list itself from
upstream's acceptance outputs and skips rows that are already in place (a chain
accepts its window front as is, so a chain moves nothing).

Three faces, as everywhere in this package:

- ``move_accepted_kv_ref``: plain torch, the spec and the CPU oracle.
- ``_move_accepted_kv_kernel``: Triton, grid ``(bs, buffers, byte tiles)``.
- ``KVMovePlan``: the pool's pointer/row-size tables, built once per pool (host
  work), then ``launch`` per step: one launch, no host sync, no allocation.

Semantics (SGLang 0.5.23's, which 0.5.17 shares whenever the window is where
``req_to_token`` says it is): for request ``b`` with ``W`` window slots
``out_cache_loc[b*W : (b+1)*W]`` and ``n_b = num_correct_drafts[b] + 1`` accepted
rows, entry ``i < min(n_b, D)`` with ``accept_index[b, i] >= 0`` copies the row of
slot ``out_cache_loc[accept_index[b, i]]`` to slot ``out_cache_loc[b*W + i]`` in every
buffer. All of a request's rows are read before any is written, with a block-wide
barrier between the reads and the writes, so a move within one window is safe in
place; different requests' windows are disjoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from .commit_kv import _to_device_async  # host table -> device, no host sync
from .host_math import next_power_of_2
from .launcher import launch as launch_kernel

_TILE_BYTES = 512  # bytes of one row a program moves (x its request's accepted rows)


# ---------------------------------------------------------------- reference
def move_list_ref(accept_index: torch.Tensor, num_correct_drafts: torch.Tensor,
                  out_cache_loc: torch.Tensor):
    """``(src_slots, dst_slots)`` of the rows that really move (int64, any order-
    preserving subset of upstream's list: rows already in place are dropped)."""
    bs, depth = accept_index.shape
    loc = out_cache_loc.to(torch.int64)
    width = loc.numel() // bs if bs else 0
    i = torch.arange(depth, device=accept_index.device)
    pos = accept_index.to(torch.int64)
    live = (i.unsqueeze(0) < (num_correct_drafts.to(torch.int64) + 1).unsqueeze(1)) & (pos >= 0)
    src = loc[pos.clamp(min=0)]
    dst = loc.view(bs, width)[:, :depth] if width >= depth else None
    if dst is None:
        raise ValueError(f"window of {width} slots is shorter than accept_index's {depth} columns")
    live &= src != dst
    return src[live], dst[live]


def move_accepted_kv_ref(buffers: Sequence[torch.Tensor], accept_index: torch.Tensor,
                         num_correct_drafts: torch.Tensor, out_cache_loc: torch.Tensor) -> None:
    """Plain torch: ``buf[dst] = buf[src]`` for every buffer (the gather copies first,
    so the move is safe in place, as upstream's is)."""
    src, dst = move_list_ref(accept_index, num_correct_drafts, out_cache_loc)
    for buf in buffers:
        buf[dst] = buf[src]


# ---------------------------------------------------------------- kernel
@triton.jit
def _move_accepted_kv_kernel(
    ptr_table,  # int64 [B]: data_ptr of each pool buffer (k layers, then v layers)
    row_words_table,  # int64 [B]: words per slot row of each buffer
    accept_index_ptr,  # int32/int64 [bs, D], row stride stride_ai: flat verify rows, -1 pad
    num_correct_ptr,  # int32/int64 [bs]: accepted drafts per request (bonus excluded)
    loc_ptr,  # int32/int64 [bs * W]: the verify window's slots
    stride_ai,
    D,
    W,
    WORD: tl.constexpr,  # element type moved (tl.int64 / int32 / int16 / int8)
    BLOCK_D: tl.constexpr,
    TILE: tl.constexpr,  # words per program
):
    b = tl.program_id(0)
    buf = tl.program_id(1)
    tile = tl.program_id(2)

    i = tl.arange(0, BLOCK_D)
    n = tl.load(num_correct_ptr + b).to(tl.int64) + 1
    live = (i < D) & (i < n)
    pos = tl.load(accept_index_ptr + b * stride_ai + i, mask=live, other=-1).to(tl.int64)
    live = live & (pos >= 0)
    src = tl.load(loc_ptr + pos, mask=live, other=0).to(tl.int64)
    dst = tl.load(loc_ptr + b * W + i, mask=live, other=0).to(tl.int64)
    live = live & (src != dst)  # already in place: nothing to move
    if tl.max(live.to(tl.int32), axis=0) > 0:
        row_words = tl.load(row_words_table + buf)
        base = tl.load(ptr_table + buf).to(tl.pointer_type(WORD))
        w = tile * TILE + tl.arange(0, TILE)
        mask = live[:, None] & (w < row_words)[None, :]
        # every row is loaded before any is stored: safe in place within the window. The
        # barrier makes that hold across the program's threads too (a row one thread
        # writes may be a row another thread still has to read).
        rows = tl.load(base + src[:, None] * row_words + w[None, :], mask=mask)
        tl.debug_barrier()
        tl.store(base + dst[:, None] * row_words + w[None, :], rows, mask=mask)


# ---------------------------------------------------------------- host side
_WORDS = ((8, tl.int64), (4, tl.int32), (2, tl.int16), (1, tl.uint8))  # bytes, word moved


class KVMovePlan:
    """Pointer and row-size tables for one pool's buffers; ``launch`` moves one step.

    Parameters
    ----------
    buffers : sequence of B contiguous tensors ``[R, ...]`` on one device
        Every buffer whose slot rows move together (a pool's ``k_buffer`` then
        ``v_buffer``). Rows are copied as raw bytes, so any dtype (FP8 included).
    """

    def __init__(self, buffers: Sequence[torch.Tensor]):
        if not buffers:
            raise ValueError("buffers is empty: expected the pool's K and V buffers")
        device = buffers[0].device
        row_bytes = []
        for j, x in enumerate(buffers):
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_contiguous():
                raise ValueError(f"buffers[{j}] must be a contiguous [R, ...] tensor")
            if x.device != device:
                raise ValueError(f"buffers[{j}] is on {x.device}, buffers[0] on {device}")
            row_bytes.append(x[0].numel() * x.element_size())
        size, self._word = next(w for w in _WORDS if all(r % w[0] == 0 for r in row_bytes))
        words = [r // size for r in row_bytes]
        self.ptr_table = _to_device_async(
            torch.tensor([x.data_ptr() for x in buffers], dtype=torch.int64), device)
        self.row_words = _to_device_async(torch.tensor(words, dtype=torch.int64), device)
        self.tile = min(triton.next_power_of_2(max(words)), max(1, _TILE_BYTES // size))
        self.num_tiles = triton.cdiv(max(words), self.tile)
        self.num_buffers = len(buffers)
        self.device = device
        self._keepalive = list(buffers)

    @classmethod
    def for_pool(cls, pool) -> "KVMovePlan":
        """Plan over an ``MHATokenToKVPool``'s ``k_buffer`` + ``v_buffer`` (NHD layout)."""
        return cls([*pool.k_buffer, *pool.v_buffer])

    def launch(self, accept_index: torch.Tensor, num_correct_drafts: torch.Tensor,
               out_cache_loc: torch.Tensor) -> None:
        """Move every request's accepted path to the front of its window (see module doc).

        Parameters
        ----------
        accept_index : int32/int64 ``[bs, D]``, last dim contiguous
            Flat verify rows of the accepted path, root first, -1 padded.
        num_correct_drafts : int32/int64 ``[bs]``
            Accepted draft tokens per request (the bonus row is added here).
        out_cache_loc : int32/int64 ``[bs * W]``, contiguous, ``W >= D``
            The verify window's slots.
        """
        if accept_index.dim() != 2 or accept_index.stride(1) != 1:
            raise ValueError(f"accept_index must be [bs, D] with a contiguous last dim, got "
                             f"{tuple(accept_index.shape)} strides {accept_index.stride()}")
        bs, depth = accept_index.shape
        if num_correct_drafts.shape != (bs,):
            raise ValueError(f"num_correct_drafts has shape {tuple(num_correct_drafts.shape)}, "
                             f"expected ({bs},)")
        if bs == 0 or depth == 0:
            return
        if not out_cache_loc.is_contiguous() or out_cache_loc.numel() % bs:
            raise ValueError(f"out_cache_loc ({out_cache_loc.numel()} slots) is not a contiguous "
                             f"window per request for bs {bs}")
        width = out_cache_loc.numel() // bs
        if width < depth:
            raise ValueError(f"window of {width} slots is shorter than accept_index's {depth} columns")
        for name, x in (("accept_index", accept_index), ("num_correct_drafts", num_correct_drafts),
                        ("out_cache_loc", out_cache_loc)):
            if x.device != self.device:
                raise ValueError(f"{name} is on {x.device}, the pool on {self.device}")
        launch_kernel(_move_accepted_kv_kernel, (bs, self.num_buffers, self.num_tiles), (
            self.ptr_table, self.row_words, accept_index, num_correct_drafts, out_cache_loc,
            accept_index.stride(0), depth, width),
            dict(WORD=self._word, BLOCK_D=next_power_of_2(depth), TILE=self.tile, num_warps=4))

    __call__ = launch

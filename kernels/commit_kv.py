"""NWOR commit: write the accepted draft rows' K/V into the paged KV pool.

After speculative verification only the accepted rows of the verify window are
written to SGLang's ``MHATokenToKVPool`` (``k_buffer[l]`` / ``v_buffer[l]``),
for all layers in one Triton launch. Three faces, as everywhere in this package:

- ``commit_accepted_kv_ref``: plain torch, the spec and the CPU oracle. It runs
  the same torch ops as ``MHATokenToKVPool.set_kv_buffer`` (0.5.17 - 0.5.23), so
  its bytes are the upstream bytes on whatever device it runs.
- ``commit_accepted_kv_kernel``: the Triton kernel, grid ``(M, L)``: one
  program per (commit entry, layer); padding entries return at once.
- ``KVCommitPlan`` (pointer/stride/scale tables built once for a fixed set of
  tensors, then ``launch`` with no host sync, CUDA-graph capturable) and
  ``commit_accepted_kv`` (build a plan and launch it, for eager callers).

Bit-exactness notes (what "the same bytes" takes):

- ``set_kv_buffer`` quantizes as ``cache_k.div_(k_scale).to(kv_dtype)``: the
  division result is rounded to the *source* dtype before the FP8 cast, and how
  torch divides depends on where the scale lives: a CUDA tensor divisor is first
  rounded to the source dtype and divided exactly; a host scalar (Python float
  or 0-dim CPU tensor) on a CUDA source is applied as ``x * fp32(1 / s)``; on a
  CPU source the fp32 scale divides exactly. ``KVCommitPlan`` folds the rule
  into a per-layer fp32 table plus one mode flag (upstream's fused FP8 writer in
  ``sglang/kernels/ops/kvcache/cache_move.py`` follows the same two rules).
- FP8 and bf16 rounding is done with integer bit arithmetic copied from c10
  (``fp8e4m3fn_from_fp32_value``, ``fp8e5m2_from_fp32_value``,
  ``round_to_nearest_even``) instead of Triton casts: Triton's fp8 casts
  saturate (torch's do not, or differently, depending on the torch release),
  and the Triton interpreter's fp32->bf16 cast truncates instead of rounding.
  How torch's e4m3fn cast treats overflow changed between releases (NaN before,
  448 after): it is read once from the installed torch (``_e4m3fn_overflow_codes``).
- Under ``TRITON_INTERPRET=1`` the kernel loads raw data pointers from an int64
  CPU tensor and casts them with ``.to(tl.pointer_type(...))``; the interpreter
  dereferences them as host addresses, so this works for CPU tensors. Do not
  pass the destination buffers themselves as kernel arguments: the interpreter
  copies tensor arguments to a host copy and writes that copy back after the
  launch, which would undo writes made through the pointer table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from .launcher import launch as launch_kernel

ScaleLike = Union[float, torch.Tensor]

_SRC_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_KV_KIND = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float8_e4m3fn: 3,
    torch.float8_e5m2: 4,
}
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# Per-layer scale handling (constexpr in the kernel).
SCALE_NONE = 0  # no division: dtypes equal, or no scale given
SCALE_DIV = 1  # x / s, correctly rounded (s already rounded as torch would)
SCALE_MUL = 2  # x * r, r = fp32(1 / fp32(s)) (torch's host-scalar path on CUDA)

_MAX_TILE_ELEMS = 4096  # elements of one [BLOCK_H, BLOCK_D] tile


# --------------------------------------------------------------------------
# Reference (plain torch): the spec.
# --------------------------------------------------------------------------


def commit_accepted_kv_ref(
    k_src: Sequence[torch.Tensor],
    v_src: Sequence[torch.Tensor],
    k_dst: Sequence[torch.Tensor],
    v_dst: Sequence[torch.Tensor],
    src_rows: torch.Tensor,
    dst_slots: torch.Tensor,
    k_scales: Optional[Sequence[ScaleLike]] = None,
    v_scales: Optional[Sequence[ScaleLike]] = None,
    committed: Optional[torch.Tensor] = None,
    *,
    kv_dtype: Optional[torch.dtype] = None,
    dst_window: Optional[torch.Tensor] = None,
    accept_lens: Optional[torch.Tensor] = None,
) -> None:
    """Write the valid commit entries of every layer, with plain torch ops.

    Parameters
    ----------
    k_src, v_src : sequence of L tensors, ``[T, H, Dk]`` / ``[T, H, Dv]``
        Verify-pass K/V per layer (float32, float16 or bfloat16; may be strided
        views, last dim contiguous).
    k_dst, v_dst : sequence of L tensors, ``[R, H, Dk]`` / ``[R, H, Dv]``
        Pool buffers as ``MHATokenToKVPool.k_buffer[l]`` / ``v_buffer[l]``
        (store dtype: the KV dtype, or uint8 holding FP8 bytes).
    src_rows, dst_slots : int64 ``[M]``
        Entry ``i`` copies row ``src_rows[i]`` to slot ``dst_slots[i]``; an entry
        with a negative value in either is padding and is skipped. Valid slots
        must be unique.
    k_scales, v_scales : optional sequence of L floats or 0-dim tensors
        Per-layer scales, applied as ``set_kv_buffer`` does: ``x / scale`` in the
        source dtype, only when the source dtype differs from ``kv_dtype``.
    committed : optional int64 ``[1]`` (``[2]`` with ``accept_lens``)
        ``committed[0]`` is incremented by the number of valid entries (once per
        entry, not per layer); ``committed[1]`` by ``accept_lens.sum()``.
    kv_dtype : optional torch.dtype
        The pool's ``dtype``; required when the buffers are uint8 (FP8 bytes).
    dst_window : optional int ``[T]``
        When given, ``dst_slots`` are positions in it (slot = ``dst_window[pos]``).
    accept_lens : optional int ``[bs]``
        Accepted rows per request, summed into ``committed[1]``.

    Not graph-safe (boolean indexing syncs); use ``KVCommitPlan`` there.
    """
    kv_dtype = _resolve_kv_dtype(k_dst[0], kv_dtype)
    if dst_window is not None:
        dst_slots = torch.where(dst_slots >= 0, dst_window.to(torch.int64)[dst_slots.clamp(min=0)], -1)
    valid = (src_rows >= 0) & (dst_slots >= 0)
    src = src_rows[valid]
    dst = dst_slots[valid]
    for layer in range(len(k_src)):
        for srcs, dsts, scales in ((k_src, k_dst, k_scales), (v_src, v_dst, v_scales)):
            # index_select copies, so div_ below never touches the caller's tensor
            x = srcs[layer].index_select(0, src)
            if x.dtype != kv_dtype:  # memory_pool.py MHATokenToKVPool.set_kv_buffer
                if scales is not None and scales[layer] is not None:
                    x.div_(scales[layer])
                x = x.to(kv_dtype)
            buf = dsts[layer]
            if buf.dtype != kv_dtype:
                x = x.view(buf.dtype)
            buf[dst] = x
    if committed is not None:
        committed[0] += valid.sum().to(committed.dtype)
        if accept_lens is not None:
            committed[1] += accept_lens.sum().to(committed.dtype)


# --------------------------------------------------------------------------
# Kernel.
# --------------------------------------------------------------------------


@triton.jit
def _bf16_bits_to_f32(bits):
    return (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_to_bf16_bits(x):
    # c10::detail::round_to_nearest_even (NaN -> 0x7FC0 as on the CPU)
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(x != x, 0x7FC0, r)
    return r.to(tl.uint16)


@triton.jit
def _f32_to_e4m3fn_bits(x, OVERFLOW_CODE: tl.constexpr, CARRY_CODE: tl.constexpr):
    # c10::detail::fp8e4m3fn_from_fp32_value; OVERFLOW_CODE / CARRY_CODE are what
    # the installed torch gives for |x| >= 480 and for a rounding carry into 0x7F.
    u = x.to(tl.uint32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    # below 2**-6: an fp32 add of 2**14 rounds the subnormal mantissa (RNE)
    den = (a.to(tl.float32, bitcast=True) + 16384.0).to(tl.uint32, bitcast=True) - (141 << 23)
    # a - ((127 - 7) << 23) + 0x7FFFF + mant_odd, written without negative constants
    nrm = (a - 0x3BF80001 + ((a >> 20) & 1)) >> 20
    nrm = tl.where(nrm == 0x7F, CARRY_CODE, nrm)
    big = tl.where(a > 0x7F800000, 0x7F, OVERFLOW_CODE)
    r = tl.where(a >= 0x43F00000, big, tl.where(a < (121 << 23), den, nrm))
    return (r | sign).to(tl.uint8)


@triton.jit
def _f32_to_e5m2_bits(x):
    # c10::detail::fp8e5m2_from_fp32_value (overflow -> inf, NaN -> 0x7F)
    u = x.to(tl.uint32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    den = (a.to(tl.float32, bitcast=True) + 128.0).to(tl.uint32, bitcast=True) - (134 << 23)
    nrm = (a - 0x37F00001 + ((a >> 21) & 1)) >> 21
    big = tl.where(a > 0x7F800000, 0x7F, 0x7C)
    r = tl.where(a >= (143 << 23), big, tl.where(a < (113 << 23), den, nrm))
    return (r | sign).to(tl.uint8)


@triton.jit
def _commit_tile(
    src_base,  # int64 scalar: data_ptr of this layer's source [T, H, D]
    dst_base,  # int64 scalar: data_ptr of this layer's pool buffer [R, H, D]
    src_row,  # int64 scalar
    dst_slot,  # int64 scalar
    tok_stride,  # int64 scalar, source token stride (elements)
    head_stride,  # int64 scalar, source head stride (elements)
    scale,  # fp32 scalar (divisor or reciprocal, see SCALE_MODE)
    H: tl.constexpr,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SRC_KIND: tl.constexpr,
    KV_KIND: tl.constexpr,
    RAW_COPY: tl.constexpr,
    SCALE_MODE: tl.constexpr,
    E4M3_OVERFLOW: tl.constexpr,
    E4M3_CARRY: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + offs_h
        mask = (h[:, None] < H) & (offs_d[None, :] < D)
        src_off = src_row * tok_stride + h[:, None] * head_stride + offs_d[None, :]
        dst_off = dst_slot * (H * D) + h[:, None] * D + offs_d[None, :]
        if RAW_COPY:
            # same dtype: move bits (torch's index_put copies bits too)
            if SRC_KIND == 0:
                v = tl.load(src_base.to(tl.pointer_type(tl.int32)) + src_off, mask=mask)
                tl.store(dst_base.to(tl.pointer_type(tl.int32)) + dst_off, v, mask=mask)
            else:
                v = tl.load(src_base.to(tl.pointer_type(tl.int16)) + src_off, mask=mask)
                tl.store(dst_base.to(tl.pointer_type(tl.int16)) + dst_off, v, mask=mask)
        else:
            if SRC_KIND == 0:
                x = tl.load(src_base.to(tl.pointer_type(tl.float32)) + src_off, mask=mask, other=0.0)
            elif SRC_KIND == 1:
                x = tl.load(src_base.to(tl.pointer_type(tl.float16)) + src_off, mask=mask, other=0.0)
                x = x.to(tl.float32)
            else:
                b = tl.load(src_base.to(tl.pointer_type(tl.uint16)) + src_off, mask=mask, other=0)
                x = _bf16_bits_to_f32(b)
            if SCALE_MODE != 0:
                if SCALE_MODE == 1:
                    x = tl.div_rn(x, scale)
                else:
                    x = x * scale
                # torch divides in the source dtype: round back to it
                if SRC_KIND == 1:
                    x = x.to(tl.float16).to(tl.float32)
                elif SRC_KIND == 2:
                    x = _bf16_bits_to_f32(_f32_to_bf16_bits(x))
            if KV_KIND == 0:
                tl.store(dst_base.to(tl.pointer_type(tl.float32)) + dst_off, x, mask=mask)
            elif KV_KIND == 1:
                tl.store(
                    dst_base.to(tl.pointer_type(tl.float16)) + dst_off,
                    x.to(tl.float16),
                    mask=mask,
                )
            elif KV_KIND == 2:
                tl.store(
                    dst_base.to(tl.pointer_type(tl.uint16)) + dst_off,
                    _f32_to_bf16_bits(x),
                    mask=mask,
                )
            elif KV_KIND == 3:
                tl.store(
                    dst_base.to(tl.pointer_type(tl.uint8)) + dst_off,
                    _f32_to_e4m3fn_bits(x, E4M3_OVERFLOW, E4M3_CARRY),
                    mask=mask,
                )
            else:
                tl.store(
                    dst_base.to(tl.pointer_type(tl.uint8)) + dst_off,
                    _f32_to_e5m2_bits(x),
                    mask=mask,
                )


@triton.jit
def _entry(src_rows_ptr, dst_slots_ptr, dst_window_ptr, accept_lens_ptr, e, inside,
           accept_depth, window_width, DST_FROM_WINDOW: tl.constexpr, FROM_ACCEPT: tl.constexpr):
    """(source row, destination slot) of entry ``e``, -1 where it is padding."""
    if FROM_ACCEPT:
        b = e // accept_depth
        i = e % accept_depth
        n_acc = tl.load(accept_lens_ptr + b, mask=inside, other=0).to(tl.int64)
        valid = inside & (i < n_acc)
        src = tl.load(src_rows_ptr + e, mask=valid, other=-1).to(tl.int64)
        slot = tl.load(dst_window_ptr + b * window_width + i, mask=valid, other=-1).to(tl.int64)
    else:
        src = tl.load(src_rows_ptr + e, mask=inside, other=-1)
        slot = tl.load(dst_slots_ptr + e, mask=inside, other=-1)
        if DST_FROM_WINDOW:
            slot = tl.load(dst_window_ptr + slot, mask=inside & (slot >= 0), other=-1).to(tl.int64)
    return src, slot


@triton.jit
def commit_accepted_kv_kernel(
    src_rows_ptr,  # int64 [M]
    dst_slots_ptr,  # int64 [M]: slots, or window positions when DST_FROM_WINDOW
    dst_window_ptr,  # int32/int64 [T]: slot of each window position (DST_FROM_WINDOW only)
    ptr_table,  # int64 [4, L]: data_ptr of k_src, v_src, k_dst, v_dst per layer
    stride_table,  # int64 [4, L]: k token, k head, v token, v head strides (elements)
    scale_table,  # fp32 [2, L]: per-layer K / V scale operand
    committed_ptr,  # int64 [1] or [2] (unused unless COUNT)
    accept_lens_ptr,  # int32/int64 [num_accept] (COUNT_ACCEPTED only)
    num_entries,  # M
    num_layers,  # L
    num_accept,  # entries of accept_lens
    accept_depth,  # D: columns of accept_index (FROM_ACCEPT only)
    window_width,  # N: window slots per request (FROM_ACCEPT only)
    H: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    SRC_KIND: tl.constexpr,
    KV_KIND: tl.constexpr,
    RAW_COPY: tl.constexpr,
    K_SCALE_MODE: tl.constexpr,
    V_SCALE_MODE: tl.constexpr,
    E4M3_OVERFLOW: tl.constexpr,
    E4M3_CARRY: tl.constexpr,
    COUNT: tl.constexpr,
    COUNT_ACCEPTED: tl.constexpr,
    DST_FROM_WINDOW: tl.constexpr,
    FROM_ACCEPT: tl.constexpr,
    COUNT_BLOCK: tl.constexpr,
):
    """Grid ``(M, L)``. ``FROM_ACCEPT``: the entries are upstream's acceptance itself,
    no list launch before this one: ``src_rows_ptr`` is ``accept_index`` ``[bs, D]``
    (contiguous), entry ``b*D+i`` is valid for ``i < accept_lens[b]`` and goes to window
    position ``b*N+i`` (the accepted path at the front of the request's window, where
    upstream's move puts it)."""
    entry = tl.program_id(0)
    layer = tl.program_id(1)

    if COUNT:
        # one program counts the valid entries (and the accepted rows) and bumps
        # the counters once
        if (entry == 0) & (layer == 0):
            total = tl.zeros([COUNT_BLOCK], dtype=tl.int64)
            for start in range(0, num_entries, COUNT_BLOCK):
                offs = start + tl.arange(0, COUNT_BLOCK)
                m = offs < num_entries
                s, d = _entry(src_rows_ptr, dst_slots_ptr, dst_window_ptr, accept_lens_ptr, offs, m,
                              accept_depth, window_width, DST_FROM_WINDOW, FROM_ACCEPT)
                total += ((s >= 0) & (d >= 0)).to(tl.int64)
            tl.store(committed_ptr, tl.load(committed_ptr) + tl.sum(total, axis=0))
            if COUNT_ACCEPTED:
                acc = tl.zeros([COUNT_BLOCK], dtype=tl.int64)
                for start in range(0, num_accept, COUNT_BLOCK):
                    offs = start + tl.arange(0, COUNT_BLOCK)
                    acc += tl.load(accept_lens_ptr + offs, mask=offs < num_accept, other=0).to(tl.int64)
                tl.store(committed_ptr + 1, tl.load(committed_ptr + 1) + tl.sum(acc, axis=0))

    src_row, dst_slot = _entry(src_rows_ptr, dst_slots_ptr, dst_window_ptr, accept_lens_ptr, entry,
                               entry < num_entries, accept_depth, window_width, DST_FROM_WINDOW, FROM_ACCEPT)
    if (src_row >= 0) & (dst_slot >= 0):
        k_src = tl.load(ptr_table + layer)
        v_src = tl.load(ptr_table + num_layers + layer)
        k_dst = tl.load(ptr_table + 2 * num_layers + layer)
        v_dst = tl.load(ptr_table + 3 * num_layers + layer)
        k_tok = tl.load(stride_table + layer)
        k_head = tl.load(stride_table + num_layers + layer)
        v_tok = tl.load(stride_table + 2 * num_layers + layer)
        v_head = tl.load(stride_table + 3 * num_layers + layer)
        k_scale = tl.load(scale_table + layer)
        v_scale = tl.load(scale_table + num_layers + layer)
        _commit_tile(
            k_src, k_dst, src_row, dst_slot, k_tok, k_head, k_scale,
            H, DK, BLOCK_H, BLOCK_DK, SRC_KIND, KV_KIND, RAW_COPY, K_SCALE_MODE,
            E4M3_OVERFLOW, E4M3_CARRY,
        )  # fmt: skip
        _commit_tile(
            v_src, v_dst, src_row, dst_slot, v_tok, v_head, v_scale,
            H, DV, BLOCK_H, BLOCK_DV, SRC_KIND, KV_KIND, RAW_COPY, V_SCALE_MODE,
            E4M3_OVERFLOW, E4M3_CARRY,
        )  # fmt: skip


# --------------------------------------------------------------------------
# Host side: checks, tables, launch.
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _e4m3fn_overflow_codes() -> tuple[int, int]:
    """(code for |x| >= 480, code for a rounding carry into 0x7F) of this torch.

    torch <= 2.11 gives NaN (0x7F) for both, newer torch saturates to 448 (0x7E).
    Host-only and cached: never runs in the launch path after the first plan.
    """
    probe = torch.tensor([1000.0, 470.0]).to(torch.float8_e4m3fn).view(torch.uint8)
    overflow, carry = probe.tolist()
    return int(overflow), int(carry)


def _resolve_kv_dtype(buf: torch.Tensor, kv_dtype: Optional[torch.dtype]) -> torch.dtype:
    if kv_dtype is None:
        if buf.dtype == torch.uint8:
            raise ValueError(
                "kv_dtype is required when the pool buffers are uint8 (FP8 bytes): "
                "pass the pool's dtype, e.g. torch.float8_e4m3fn"
            )
        kv_dtype = buf.dtype
    if kv_dtype not in _KV_KIND:
        raise ValueError(f"kv_dtype must be one of {sorted(map(str, _KV_KIND))}, got {kv_dtype}")
    store = torch.uint8 if kv_dtype in _FP8_DTYPES else kv_dtype
    if buf.dtype not in (store, kv_dtype):
        raise ValueError(f"pool buffers have dtype {buf.dtype}, expected {store} for kv_dtype {kv_dtype}")
    return kv_dtype


def _check_layers(name: str, tensors: Sequence[torch.Tensor], shape: tuple, num_layers: int) -> None:
    """``shape`` holds ints to match and names (str) for free dims."""
    want = "[" + ", ".join(str(d) for d in shape) + "]"
    if len(tensors) != num_layers:
        raise ValueError(f"{name} has {len(tensors)} layers, expected {num_layers}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name}[{i}] must be a 3-D tensor of shape {want}")
        if tuple(t.shape) != tuple(tensors[0].shape) or any(
            isinstance(w, int) and got != w for got, w in zip(t.shape, shape, strict=True)
        ):
            raise ValueError(
                f"{name}[{i}] has shape {list(t.shape)}, expected {want} (the same for every layer)"
            )
        if t.dtype != tensors[0].dtype:
            raise ValueError(f"{name}[{i}] has dtype {t.dtype}, {name}[0] has {tensors[0].dtype}")
        if t.device != tensors[0].device:
            raise ValueError(f"{name}[{i}] is on {t.device}, {name}[0] on {tensors[0].device}")


def _scale_entry(
    scale: ScaleLike, src_dtype: torch.dtype, src_device: torch.device
) -> tuple[int, torch.Tensor]:
    """(mode, fp32 operand) reproducing ``src.div_(scale)`` on ``src_device``.

    See ATen's ``div_true_kernel``: on CUDA a host scalar (Python number or 0-dim
    CPU tensor) is applied as a multiply by its fp32 reciprocal; a CUDA tensor
    divisor is cast to the source dtype (the common dtype) and divided exactly.
    On the CPU the fp32 scale divides exactly.
    """
    if isinstance(scale, torch.Tensor):
        if scale.dim() != 0:
            raise ValueError(
                f"scale tensors must be 0-dim (like RadixAttention.k_scale), got shape {tuple(scale.shape)}"
            )
        if scale.device.type != "cpu" and scale.device != src_device:
            raise ValueError(f"scale on {scale.device}, source on {src_device}")
        host_scalar = scale.device.type == "cpu"
        value = scale.detach()
    elif isinstance(scale, (float, int)):
        host_scalar = True
        value = torch.tensor(float(scale), dtype=torch.float64)
    else:
        raise ValueError(f"scale must be a float or a 0-dim tensor, got {type(scale)}")
    if src_device.type != "cuda":
        return SCALE_DIV, value.to(torch.float32)
    if host_scalar:
        s32 = value.to(torch.float32)
        return SCALE_MUL, torch.ones((), dtype=torch.float32) / s32
    return SCALE_DIV, value.to(src_dtype).to(torch.float32)


def _scale_table(
    name: str,
    scales: Optional[Sequence[ScaleLike]],
    num_layers: int,
    src_dtype: torch.dtype,
    device: torch.device,
) -> tuple[int, torch.Tensor]:
    if scales is None:
        return SCALE_NONE, torch.zeros(num_layers, dtype=torch.float32, device=device)
    if len(scales) != num_layers:
        raise ValueError(f"{name} has {len(scales)} entries, expected {num_layers}")
    if any(s is None for s in scales):
        if all(s is None for s in scales):
            return SCALE_NONE, torch.zeros(num_layers, dtype=torch.float32, device=device)
        raise ValueError(f"{name} mixes None and scales")
    entries = [_scale_entry(s, src_dtype, device) for s in scales]
    modes = {m for m, _ in entries}
    if len(modes) != 1:
        raise ValueError(f"{name} mixes host scalars and device tensors")
    values = [v for _, v in entries]
    if all(v.device.type == "cpu" for v in values):
        return modes.pop(), _to_device_async(torch.stack(values), device)
    return modes.pop(), torch.stack([v.to(device) for v in values])


def _scale_reader(
    k_scales: Optional[Sequence[ScaleLike]],
    v_scales: Optional[Sequence[ScaleLike]],
    k_mode: int,
    v_mode: int,
    src_dtype: torch.dtype,
    device: torch.device,
):
    """A ``_ScaleReader`` that re-reads a plan's ``[2, L]`` scale table from its scale
    objects, or None when none of them can change (no scales, or Python numbers only).

    SGLang updates a layer's ``k_scale`` / ``v_scale`` tensors in place (weight reloads),
    so a plan that outlives a step (a CUDA-graph bucket's, built once; the pool's eager
    plan, rebound every step) must not keep the values it was built with. The result is
    ``_scale_table``'s for the same objects, computed with a few batched ops instead of
    per-layer checks (``_scale_entry``'s rule: CPU source: fp32 value; CUDA source and
    host scalar: fp32 reciprocal; CUDA source and CUDA tensor: rounded to the source
    dtype). A half of numbers only is computed once. Tensors of mixed dtypes (never seen
    in SGLang) take ``_scale_table`` itself each time: stacking them would promote to a
    common dtype and could round twice."""
    halves = ((k_scales, k_mode), (v_scales, v_mode))
    if not any(isinstance(s, torch.Tensor) for scales, _ in halves for s in (scales or ())):
        return None
    num_layers = len(k_scales or v_scales)
    tensors = [s for scales, _ in halves for s in (scales or ()) if isinstance(s, torch.Tensor)]
    if len({t.dtype for t in tensors}) != 1 or not tensors[0].is_floating_point():
        def exact():
            return torch.stack([_scale_table("k_scales", k_scales, num_layers, src_dtype, device)[1],
                                _scale_table("v_scales", v_scales, num_layers, src_dtype, device)[1]])
        return _ScaleReader(exact, host_copy=device.type == "cuda" and SCALE_MUL in (k_mode, v_mode))

    def values(scales):  # the objects themselves (in-place updates show), numbers as tensors
        return [s.detach() if isinstance(s, torch.Tensor) else torch.tensor(float(s), dtype=torch.float64)
                for s in scales]

    def operand(vals, mode):
        x = torch.stack(vals)
        if device.type != "cuda":
            return x.to(torch.float32)
        if mode == SCALE_MUL:
            return _to_device_async(torch.ones(len(vals), dtype=torch.float32) / x.to(torch.float32), device)
        return x.to(src_dtype).to(torch.float32)

    def live(scales):
        return any(isinstance(s, torch.Tensor) for s in (scales or ()))

    host_copy = device.type == "cuda" and any(m == SCALE_MUL and live(sc) for sc, m in halves)
    if k_mode == v_mode != SCALE_NONE and live(k_scales) and live(v_scales):
        both = values(k_scales) + values(v_scales)  # one batch: both halves on one device
        return _ScaleReader(lambda: operand(both, k_mode).view(2, num_layers), host_copy)
    parts = []
    for scales, mode in halves:
        if mode == SCALE_NONE:
            parts.append(torch.zeros(num_layers, dtype=torch.float32, device=device))
        elif not live(scales):  # numbers never change: computed once
            parts.append(operand(values(scales), mode))
        else:
            parts.append((values(scales), mode))
    return _ScaleReader(lambda: torch.stack([operand(*p) if isinstance(p, tuple) else p for p in parts]),
                        host_copy)


class _ScaleReader:
    """``_scale_reader``'s result: call it for the table. ``host_copy``: a read includes a
    host-to-device copy (host scale tensors on a CUDA plan), so it must not be captured
    in a CUDA graph (a replay would copy the capture's values)."""

    def __init__(self, read, host_copy: bool):
        self.read, self.host_copy = read, host_copy

    def __call__(self) -> torch.Tensor:
        return self.read()


def source_layout(k_src: Sequence[torch.Tensor], v_src: Sequence[torch.Tensor]) -> tuple:
    """(layout, addresses): everything a plan's tables encode about its sources, in two
    parts: per layer shape, strides, dtype and device of K and V; and the K and V
    addresses. One pass: this runs on every eager verify step."""
    layout, k_ptrs, v_ptrs = [], [], []
    for k, v in zip(k_src, v_src, strict=True):
        layout.append((k.shape, k.stride(), k.dtype, k.get_device(),
                       v.shape, v.stride(), v.dtype, v.get_device()))
        k_ptrs.append(k.data_ptr())
        v_ptrs.append(v.data_ptr())
    return tuple(layout), [k_ptrs, v_ptrs]


def _as_tuple(scales: Optional[Sequence[ScaleLike]]) -> Optional[tuple]:
    return None if scales is None else tuple(scales)


def _same_scales(kept: Optional[tuple], given: Optional[Sequence[ScaleLike]]) -> bool:
    """The same scale objects (a layer's ``k_scale`` tensor) or equal numbers."""
    if kept is None or given is None:
        return kept is None and given is None
    return len(kept) == len(given) and all(
        a is b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)
        for a, b in zip(kept, given, strict=False)
    )


def _to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host table -> device without a host sync: a pageable H2D copy would block until
    the stream drains (the whole verify forward); pinned + non_blocking does not.
    PyTorch's pinned-memory cache keeps the buffer until the copy has run."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class KVCommitPlan:
    """Pointer/stride/scale tables for committing into a fixed set of tensors.

    Build once (host work, small H2D copies), then call ``launch`` any number of
    times: ``launch`` does attribute checks only (no host sync) and one kernel
    launch (plus, for scale tensors, a few small ops that re-read them), so it can be
    captured in a CUDA graph, unless its scales are CPU tensors (``_ScaleReader``). The plan keeps
    references to every tensor it points at until ``release_sources``;
    ``rebind`` points it at new sources of the same layout. Scale tensors are read again
    at every launch (``_scale_reader``), so a plan kept across steps follows in-place scale
    updates; a scale object replaced by another needs a new plan (``rebind`` refuses).

    Parameters
    ----------
    k_src, v_src : sequence of L tensors, ``[T, H, Dk]`` / ``[T, H, Dv]``
        Staged verify K/V (float32/float16/bfloat16, last dim stride 1, token and
        head strides arbitrary, same shape, dtype and strides layout per layer).
    k_dst, v_dst : sequence of L tensors, ``[R, H, Dk]`` / ``[R, H, Dv]``
        Contiguous pool buffers (``MHATokenToKVPool.k_buffer`` / ``v_buffer``).
    k_scales, v_scales : optional sequence of L floats or 0-dim tensors
        As ``set_kv_buffer``'s ``k_scale`` / ``v_scale`` per layer.
    kv_dtype : optional torch.dtype
        The pool's ``dtype`` (required for uint8 buffers holding FP8).
    """

    def __init__(
        self,
        k_src: Sequence[torch.Tensor],
        v_src: Sequence[torch.Tensor],
        k_dst: Sequence[torch.Tensor],
        v_dst: Sequence[torch.Tensor],
        k_scales: Optional[Sequence[ScaleLike]] = None,
        v_scales: Optional[Sequence[ScaleLike]] = None,
        *,
        kv_dtype: Optional[torch.dtype] = None,
    ):
        # -- check
        num_layers = len(k_src)
        if num_layers == 0:
            raise ValueError("k_src is empty: expected one [T, H, Dk] tensor per layer")
        k0 = k_src[0]
        if not isinstance(k0, torch.Tensor) or k0.dim() != 3:
            raise ValueError("k_src[0] must be a 3-D tensor of shape [T, H, Dk]")
        t, h, dk = k0.shape
        _check_layers("k_src", k_src, (t, h, dk), num_layers)
        _check_layers("v_src", v_src, (t, h, "Dv"), num_layers)
        dv = v_src[0].shape[2]
        _check_layers("k_dst", k_dst, ("R", h, dk), num_layers)
        _check_layers("v_dst", v_dst, ("R", h, dv), num_layers)
        src_dtype = k0.dtype
        if src_dtype not in _SRC_KIND:
            raise ValueError(f"k_src dtype must be float32, float16 or bfloat16, got {src_dtype}")
        if v_src[0].dtype != src_dtype:
            raise ValueError(f"v_src dtype {v_src[0].dtype} differs from k_src dtype {src_dtype}")
        kv_dtype = _resolve_kv_dtype(k_dst[0], kv_dtype)
        if v_dst[0].dtype != k_dst[0].dtype:
            raise ValueError(f"v_dst dtype {v_dst[0].dtype} differs from k_dst {k_dst[0].dtype}")
        device = k0.device
        for name, ts in (("v_src", v_src), ("k_dst", k_dst), ("v_dst", v_dst)):
            if ts[0].device != device:
                raise ValueError(f"{name} is on {ts[0].device}, k_src on {device}")
        for name, ts in (("k_src", k_src), ("v_src", v_src)):
            for i, x in enumerate(ts):
                if x.stride(2) != 1:
                    raise ValueError(f"{name}[{i}] must have stride 1 in its last dim")
        for name, ts in (("k_dst", k_dst), ("v_dst", v_dst)):
            for i, x in enumerate(ts):
                if not x.is_contiguous():
                    raise ValueError(f"{name}[{i}] must be contiguous [R, H, D]")

        raw_copy = src_dtype == kv_dtype
        if raw_copy:  # set_kv_buffer ignores the scales when no cast happens
            k_mode, k_scale_t = _scale_table("k_scales", None, num_layers, src_dtype, device)
            v_mode, v_scale_t = _scale_table("v_scales", None, num_layers, src_dtype, device)
        else:
            k_mode, k_scale_t = _scale_table("k_scales", k_scales, num_layers, src_dtype, device)
            v_mode, v_scale_t = _scale_table("v_scales", v_scales, num_layers, src_dtype, device)

        # -- tables
        ptrs = [[x.data_ptr() for x in ts] for ts in (k_src, v_src, k_dst, v_dst)]
        strides = [
            [x.stride(0) for x in k_src],
            [x.stride(1) for x in k_src],
            [x.stride(0) for x in v_src],
            [x.stride(1) for x in v_src],
        ]
        self.ptr_table = _to_device_async(torch.tensor(ptrs, dtype=torch.int64), device)
        self.stride_table = _to_device_async(torch.tensor(strides, dtype=torch.int64), device)
        self.scale_table = torch.stack([k_scale_t, v_scale_t]).contiguous()
        self._sources = (list(k_src), list(v_src))  # None once released
        self._dests = (list(k_dst), list(v_dst))
        self._dst_ptrs = ptrs[2:]
        self._layout = source_layout(k_src, v_src)[0]
        self._scale_args = None if raw_copy else (_as_tuple(k_scales), _as_tuple(v_scales))
        self._read_scales = None if raw_copy else _scale_reader(k_scales, v_scales, k_mode, v_mode,
                                                               src_dtype, device)

        block_dk = triton.next_power_of_2(dk)
        block_dv = triton.next_power_of_2(dv)
        block_h = max(1, min(triton.next_power_of_2(h), _MAX_TILE_ELEMS // max(block_dk, block_dv)))
        overflow, carry = _e4m3fn_overflow_codes() if kv_dtype == torch.float8_e4m3fn else (0, 0)
        self.device = device
        self.num_layers = num_layers
        self.num_src_rows = t
        self.kv_dtype = kv_dtype
        self._meta = dict(
            H=h,
            DK=dk,
            DV=dv,
            BLOCK_H=block_h,
            BLOCK_DK=block_dk,
            BLOCK_DV=block_dv,
            SRC_KIND=_SRC_KIND[src_dtype],
            KV_KIND=_KV_KIND[kv_dtype],
            RAW_COPY=raw_copy,
            K_SCALE_MODE=k_mode,
            V_SCALE_MODE=v_mode,
            E4M3_OVERFLOW=overflow,
            E4M3_CARRY=carry,
            COUNT_BLOCK=1024,
            num_warps=4 if block_h * max(block_dk, block_dv) >= 1024 else 2,
        )

    def rebind(
        self,
        k_src: Sequence[torch.Tensor],
        v_src: Sequence[torch.Tensor],
        k_scales: Optional[Sequence[ScaleLike]] = None,
        v_scales: Optional[Sequence[ScaleLike]] = None,
    ) -> bool:
        """Point the plan at other sources of exactly its layout; False when they differ.

        For eager verify steps, whose staged K/V are new tensors every step: when every
        layer's shape, strides, dtype and device match the plan's (``source_layout``) and
        the scales are the same objects or values, only the address table is rebuilt (one
        small non-blocking H2D copy), not the checks and tables of a new plan (about 7x
        less host time at 32 layers). Scale values are read by ``launch``. The destinations
        stay the plan's.
        """
        layout, src_ptrs = source_layout(k_src, v_src)
        if layout != self._layout:
            return False
        if self._scale_args is not None and not (_same_scales(self._scale_args[0], k_scales)
                                                 and _same_scales(self._scale_args[1], v_scales)):
            return False  # other scale objects: a new plan (their values are read by launch)
        ptrs = src_ptrs + self._dst_ptrs
        # A new table, not an in-place update: an earlier launch may still be reading the old one.
        self.ptr_table = _to_device_async(torch.tensor(ptrs, dtype=torch.int64), self.device)
        self._sources = (list(k_src), list(v_src))
        return True

    def release_sources(self) -> None:
        """Drop the references to the sources once their launch is queued (the caching
        allocator orders reuse of their memory after it), so a kept plan does not hold a
        step's K/V alive into the next step. ``launch`` refuses until ``rebind``."""
        self._sources = None

    @classmethod
    def for_pool(
        cls,
        pool,
        k_src: Sequence[torch.Tensor],
        v_src: Sequence[torch.Tensor],
        k_scales: Optional[Sequence[ScaleLike]] = None,
        v_scales: Optional[Sequence[ScaleLike]] = None,
    ) -> "KVCommitPlan":
        """Plan against an ``MHATokenToKVPool``'s ``k_buffer`` / ``v_buffer`` (NHD layout)."""
        layout = getattr(pool, "kv_cache_layout", "nhd")
        if layout != "nhd":
            raise ValueError(f"pool layout {layout!r} is not supported (need 'nhd')")
        return cls(k_src, v_src, pool.k_buffer, pool.v_buffer, k_scales, v_scales, kv_dtype=pool.dtype)

    def launch(
        self,
        src_rows: torch.Tensor,
        dst_slots: torch.Tensor,
        committed: Optional[torch.Tensor] = None,
        *,
        dst_window: Optional[torch.Tensor] = None,
        accept_lens: Optional[torch.Tensor] = None,
    ) -> None:
        """Commit entries ``src_rows[i] -> dst_slots[i]`` for every layer, one launch.

        Parameters
        ----------
        src_rows, dst_slots : int64 ``[M]`` on the plan's device
            Negative in either marks a padding entry (skipped).
        committed : optional int64 ``[1]`` (``[2]`` with ``accept_lens``)
            ``committed[0]`` is incremented by the number of valid entries.
        dst_window : optional int32/int64 ``[T]``
            When given, ``dst_slots`` are positions in it: the slot is
            ``dst_window[dst_slots[i]]`` (SCV emits window positions).
        accept_lens : optional int ``[bs]``
            When given, ``committed[1]`` is incremented by its sum (the accepted
            rows, counted in the same launch for the committed == accepted check).
        """
        for name, x in (("src_rows", src_rows), ("dst_slots", dst_slots)):
            if x.dim() != 1 or x.dtype != torch.int64 or x.device != self.device:
                raise ValueError(
                    f"{name} must be an int64 [M] tensor on {self.device}, got "
                    f"{x.dtype} {tuple(x.shape)} on {x.device}"
                )
        if src_rows.shape != dst_slots.shape:
            raise ValueError(
                f"dst_slots has shape {tuple(dst_slots.shape)}, expected "
                f"{tuple(src_rows.shape)} (as src_rows)"
            )
        want = 1 if accept_lens is None else 2
        if committed is not None and (
            committed.numel() != want or committed.dtype != torch.int64 or committed.device != self.device
        ):
            raise ValueError(f"committed must be an int64 [{want}] tensor on {self.device}")
        if accept_lens is not None and (committed is None or accept_lens.dim() != 1):
            raise ValueError("accept_lens needs a [2] committed counter and must be 1-D")
        if dst_window is not None and (dst_window.dim() != 1 or dst_window.device != self.device):
            raise ValueError(f"dst_window must be a 1-D tensor on {self.device}")
        self._check_sources()
        num_entries = src_rows.shape[0]
        if num_entries == 0:
            return
        self._launch(src_rows.contiguous(), dst_slots.contiguous(),
                     dst_window.contiguous() if dst_window is not None else src_rows, committed,
                     accept_lens, num_entries, 0, 0, DST_FROM_WINDOW=dst_window is not None,
                     FROM_ACCEPT=False)

    def launch_from_acceptance(
        self,
        accept_index: torch.Tensor,
        accept_lens: torch.Tensor,
        window: torch.Tensor,
        window_width: int,
        committed: Optional[torch.Tensor] = None,
    ) -> None:
        """Commit upstream's acceptance directly, one launch and no commit list: request
        ``b``'s accepted rows ``accept_index[b, :accept_lens[b]]`` go to the first
        ``accept_lens[b]`` slots of its ``window_width``-slot window (``window`` ``[bs * N]``),
        as ``commit_list_from_acceptance_ref`` + ``launch`` would. ``committed`` (int64
        ``[2]``) gets the committed rows and ``accept_lens.sum()``."""
        if accept_index.dim() != 2 or accept_index.device != self.device:
            raise ValueError(f"accept_index must be a [bs, D] tensor on {self.device}")
        bs, depth = accept_index.shape
        if accept_lens.shape != (bs,) or accept_lens.device != self.device:
            raise ValueError(f"accept_lens must be a [{bs}] tensor on {self.device}")
        if depth > window_width or window.dim() != 1 or window.numel() != bs * window_width:
            raise ValueError(f"accept_index {tuple(accept_index.shape)} does not fit a window of "
                             f"{window_width} x {bs} = {window.numel()} slots")
        if committed is not None and (committed.numel() != 2 or committed.dtype != torch.int64
                                      or committed.device != self.device):
            raise ValueError(f"committed must be an int64 [2] tensor on {self.device}")
        self._check_sources()
        if bs == 0 or depth == 0:
            return
        self._launch(accept_index.contiguous(), accept_index, window.contiguous(), committed,
                     accept_lens.contiguous(), bs * depth, depth, window_width,
                     DST_FROM_WINDOW=False, FROM_ACCEPT=True)

    def launch_ref(
        self,
        src_rows: torch.Tensor,
        dst_slots: torch.Tensor,
        committed: Optional[torch.Tensor] = None,
        *,
        dst_window: Optional[torch.Tensor] = None,
        accept_lens: Optional[torch.Tensor] = None,
    ) -> None:
        """What ``launch`` writes and counts, with ``commit_accepted_kv_ref`` (plain torch,
        host syncs) on the plan's own tensors and scales: for when the kernel cannot launch."""
        self._check_sources()
        k_scales, v_scales = self._scale_args or (None, None)
        commit_accepted_kv_ref(*self._sources, *self._dests, src_rows, dst_slots, k_scales, v_scales,
                               committed, kv_dtype=self.kv_dtype, dst_window=dst_window,
                               accept_lens=accept_lens)

    def _check_sources(self) -> None:
        if self._sources is None:
            raise ValueError("the plan's sources were released: rebind it to this step's K/V first")

    def _launch(self, src_rows, dst_slots, dst_window, committed, accept_lens, num_entries,
                accept_depth, window_width, **variant) -> None:
        if self._read_scales is not None:  # scale tensors change in place (weight reloads)
            if self._read_scales.host_copy and torch.cuda.is_current_stream_capturing():
                raise ValueError("a plan with host (CPU) scale tensors cannot be captured in a "
                                 "CUDA graph: its scale re-read copies from the host")
            self.scale_table = self._read_scales()  # new, not in place: a queued launch reads the old
        launch_kernel(commit_accepted_kv_kernel, (num_entries, self.num_layers), (
            src_rows,
            dst_slots,
            dst_window,
            self.ptr_table,
            self.stride_table,
            self.scale_table,
            committed if committed is not None else src_rows,
            accept_lens if accept_lens is not None else src_rows,
            num_entries,
            self.num_layers,
            accept_lens.shape[0] if accept_lens is not None else 0,
            accept_depth,
            window_width,
        ), dict(
            COUNT=committed is not None,
            COUNT_ACCEPTED=accept_lens is not None and committed is not None,
            **variant,
            **self._meta,
        ))

    __call__ = launch


def commit_accepted_kv(
    k_src: Sequence[torch.Tensor],
    v_src: Sequence[torch.Tensor],
    k_dst: Sequence[torch.Tensor],
    v_dst: Sequence[torch.Tensor],
    src_rows: torch.Tensor,
    dst_slots: torch.Tensor,
    k_scales: Optional[Sequence[ScaleLike]] = None,
    v_scales: Optional[Sequence[ScaleLike]] = None,
    committed: Optional[torch.Tensor] = None,
    *,
    kv_dtype: Optional[torch.dtype] = None,
    dst_window: Optional[torch.Tensor] = None,
    accept_lens: Optional[torch.Tensor] = None,
) -> KVCommitPlan:
    """Triton version of ``commit_accepted_kv_ref``: same arguments, same bytes.

    Builds a ``KVCommitPlan`` (host work and small H2D copies, so not for use
    inside a CUDA graph capture; keep the returned plan and call ``launch``
    there) and launches it once. Returns the plan.
    """
    plan = KVCommitPlan(k_src, v_src, k_dst, v_dst, k_scales, v_scales, kv_dtype=kv_dtype)
    plan.launch(src_rows, dst_slots, committed, dst_window=dst_window, accept_lens=accept_lens)
    return plan

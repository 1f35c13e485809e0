"""The Triton attention backend's target-verify metadata, all requests, one launch.

Before every replayed verify graph, SGLang's Triton backend refills the graph's attention
metadata (``TritonAttnBackend._update_target_verify_buffers``): ``qo_indptr`` from an
``arange``, ``kv_indptr`` from a ``cumsum`` of ``seq_lens``, ``kv_indices`` gathered from
``req_to_token`` by a Triton kernel, the custom mask copied into the graph's buffer, and
``mask_indptr`` from an add, a multiply and another ``cumsum``: about 9 dispatches and 12
CUDA kernels of host work at any batch size, serial with an idle GPU (issue 14; on run 39's
H100 host the whole replay preparation took 589 µs at bs 1).

This writes the same bytes to the same buffers with one launch:

- ``target_verify_buffers_ref``: plain torch, upstream's op sequence; the spec and the CPU
  oracle.
- ``_target_verify_buffers_kernel``: Triton, a 1-D grid. Programs ``0 .. bs-1`` each own
  one request: its ``qo_indptr`` / ``kv_indptr`` / ``mask_indptr`` entry (each program sums
  the earlier requests' lengths itself, so no ``cumsum`` launch) and its ``kv_indices``
  run. The remaining programs copy the custom mask in chunks.
- ``target_verify_buffers``: the launcher; no host sync, nothing read back.

Upstream never writes ``kv_indptr[0]`` or ``mask_indptr[0]`` here (both stay 0 from
allocation); neither does this, and like upstream's gather it starts request 0's
``kv_indices`` run at whatever ``kv_indptr[0]`` holds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_nwor_scv.kernels.host_math import cdiv
from sglang_nwor_scv.kernels.launcher import launch as launch_kernel

_BLOCK = 1024  # kv_indices / mask elements per loop step
_BS_BLOCK = 16  # earlier requests' lengths summed per loop step
_MASK_CHUNK = 16384  # mask bytes per copying program


# ---------------------------------------------------------------- reference
def target_verify_buffers_ref(qo_indptr, kv_indptr, kv_indices, mask_indptr, mask_buffer,
                              req_to_token, req_pool_indices, seq_lens, custom_mask,
                              bs: int, num_draft: int) -> None:
    """Upstream's sequence (SGLang 0.5.17 ``_update_target_verify_buffers`` with
    ``_fill_kv_indptr_and_indices``, no sliding window), on the same buffers."""
    qo_indptr[: bs + 1] = torch.arange(0, (1 + bs) * num_draft, step=num_draft,
                                       dtype=torch.int32, device=qo_indptr.device)
    kv_indptr[1 : bs + 1] = torch.cumsum(seq_lens[:bs], dim=0)
    for i in range(bs):  # create_flashinfer_kv_indices_triton, one program per request
        start, length = int(kv_indptr[i]), int(seq_lens[i])
        row = req_to_token[int(req_pool_indices[i])]
        kv_indices[start : start + length] = row[:length]
    if custom_mask is not None:
        mask_buffer[: custom_mask.shape[0]] = custom_mask
    seq_mask_len = num_draft * (seq_lens[:bs] + num_draft)
    mask_indptr[1 : bs + 1] = torch.cumsum(seq_mask_len, dim=0)


# ---------------------------------------------------------------- kernel
@triton.jit(do_not_specialize=["bs", "mask_len"])
def _target_verify_buffers_kernel(qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr, mask_indptr_ptr,
                                  mask_out_ptr, mask_in_ptr, req_to_token_ptr, req_pool_ptr,
                                  seq_lens_ptr, bs, mask_len, req_to_token_stride,
                                  N: tl.constexpr, BLOCK: tl.constexpr,
                                  BS_BLOCK: tl.constexpr, MASK_CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < bs:
        # earlier requests' lengths (bs is small; one specialisation for every bs)
        acc = tl.zeros([BS_BLOCK], dtype=tl.int64)
        for j0 in range(0, pid, BS_BLOCK):
            j = j0 + tl.arange(0, BS_BLOCK)
            acc += tl.load(seq_lens_ptr + j, mask=j < pid, other=0).to(tl.int64)
        before = tl.sum(acc, axis=0)
        seq_len = tl.load(seq_lens_ptr + pid).to(tl.int64)
        nxt = pid.to(tl.int64) + 1
        if pid == 0:
            tl.store(qo_indptr_ptr, (nxt * 0).to(qo_indptr_ptr.dtype.element_ty))
        tl.store(qo_indptr_ptr + nxt, (nxt * N).to(qo_indptr_ptr.dtype.element_ty))
        tl.store(kv_indptr_ptr + nxt, (before + seq_len).to(kv_indptr_ptr.dtype.element_ty))
        tl.store(mask_indptr_ptr + nxt,
                 (N * (before + seq_len) + nxt * N * N).to(mask_indptr_ptr.dtype.element_ty))
        # upstream's gather starts each request at kv_indptr[i] as stored: the entry just
        # written (read back at its dtype), and for request 0 whatever kv_indptr[0] holds
        start = (before.to(kv_indptr_ptr.dtype.element_ty)).to(tl.int64)
        if pid == 0:
            start = tl.load(kv_indptr_ptr).to(tl.int64)
        row = req_to_token_ptr + tl.load(req_pool_ptr + pid).to(tl.int64) * req_to_token_stride
        for k0 in range(0, seq_len, BLOCK):
            k = k0 + tl.arange(0, BLOCK).to(tl.int64)
            in_row = k < seq_len
            slots = tl.load(row + k, mask=in_row)
            tl.store(kv_indices_ptr + start + k, slots.to(kv_indices_ptr.dtype.element_ty),
                     mask=in_row)
    else:
        # names of their own: Triton merges a name bound in both branches and requires one
        # type (the gather loop's counters are int64, these int32 then int64)
        c0 = (pid - bs).to(tl.int64) * MASK_CHUNK
        for m0 in range(0, MASK_CHUNK, BLOCK):
            m = c0 + m0 + tl.arange(0, BLOCK)
            inside = m < mask_len
            tl.store(mask_out_ptr + m, tl.load(mask_in_ptr + m, mask=inside), mask=inside)


def target_verify_buffers(qo_indptr, kv_indptr, kv_indices, mask_indptr, mask_buffer,
                          req_to_token, req_pool_indices, seq_lens, custom_mask,
                          bs: int, num_draft: int) -> None:
    """``target_verify_buffers_ref``'s writes, one launch. The mask is copied as bytes:
    ``mask_buffer`` and ``custom_mask`` must be 1-byte types holding 0/1 (bool, uint8)."""
    if bs == 0:
        return
    mask_len = 0 if custom_mask is None else int(custom_mask.shape[0])
    if mask_len:
        mask_in, mask_out = custom_mask.view(torch.uint8), mask_buffer.view(torch.uint8)
    else:  # no copying program runs: any byte pointer will do (there may be no mask buffer)
        mask_in = mask_out = seq_lens.view(torch.uint8)
    grid = (bs + cdiv(mask_len, _MASK_CHUNK),)
    launch_kernel(_target_verify_buffers_kernel, grid, (
        qo_indptr, kv_indptr, kv_indices, mask_indptr, mask_out, mask_in,
        req_to_token, req_pool_indices, seq_lens, bs, mask_len, req_to_token.stride(0)),
        dict(N=int(num_draft), BLOCK=_BLOCK, BS_BLOCK=_BS_BLOCK, MASK_CHUNK=_MASK_CHUNK))

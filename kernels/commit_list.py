"""NWOR commit list: which staged verify rows go to which KV slots, in one launch.

The commit kernel (``commit_kv.py``) takes a fixed-shape list of ``(src_row, dst_slot)``
pairs, ``-1`` marking padding. Building that list from acceptance outputs with torch
ops took 6-9 small launches and ~300 us of host time per step (profile of run 11,
H100, ``nwor_commit`` range); each builder here is one Triton launch beside its torch
reference:

- ``commit_list_from_acceptance`` (``_ref``): from upstream's ``accept_index``
  ``[bs, D]`` (flat verify rows, ``-1`` padded) and ``accept_lens`` ``[bs]``: entry
  ``b*D+i`` for ``i < accept_lens[b]`` is ``(accept_index[b, i], out_cache_loc[b*N + i])``,
  the accepted path written straight to the front of the request's window, where
  upstream's ``move_accept_tokens_to_target_kvcache`` would have moved it. Used
  when SCV did not make the list (SCV off, or a step whose ``accept_index`` was
  replaced, e.g. by ``SGLANG_SIMULATE_ACC_LEN``).
- ``slots_from_positions`` (``_ref``): SCV's kernel emits window positions; this maps
  them to KV slots, ``dst = out_cache_loc[pos]`` where ``pos >= 0``, else ``-1``.

No host sync; the slot table may be int32 or int64 (read as is, no conversion copy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# ---------------------------------------------------------------- references
def commit_list_from_acceptance_ref(accept_index: torch.Tensor, accept_lens: torch.Tensor,
                                    out_cache_loc: torch.Tensor, draft_token_num: int):
    bs, depth = accept_index.shape
    window = out_cache_loc.view(bs, draft_token_num)[:, :depth].to(torch.int64)
    step = torch.arange(depth, device=accept_index.device)
    valid = step.unsqueeze(0) < accept_lens.unsqueeze(1).to(step.dtype)
    src = torch.where(valid, accept_index.to(torch.int64), -1)
    dst = torch.where(valid, window, -1)
    return src.flatten(), dst.flatten()


def slots_from_positions_ref(pos: torch.Tensor, out_cache_loc: torch.Tensor) -> torch.Tensor:
    return torch.where(pos >= 0, out_cache_loc.to(torch.int64)[pos.clamp(min=0)], -1)


# ---------------------------------------------------------------- kernels
@triton.jit
def _commit_list_from_acceptance_kernel(accept_index_ptr, accept_lens_ptr, out_cache_loc_ptr,
                                        src_ptr, dst_ptr, stride_ai, D, N,
                                        BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK_D)
    in_row = i < D
    valid = in_row & (i < tl.load(accept_lens_ptr + b).to(tl.int64))
    row = tl.load(accept_index_ptr + b * stride_ai + i, mask=valid, other=-1).to(tl.int64)
    slot = tl.load(out_cache_loc_ptr + b * N + i, mask=valid, other=-1).to(tl.int64)
    tl.store(src_ptr + b * D + i, tl.where(valid, row, -1), mask=in_row)
    tl.store(dst_ptr + b * D + i, tl.where(valid, slot, -1), mask=in_row)


@triton.jit
def _slots_from_positions_kernel(pos_ptr, out_cache_loc_ptr, dst_ptr, M, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = j < M
    pos = tl.load(pos_ptr + j, mask=inside, other=-1).to(tl.int64)
    slot = tl.load(out_cache_loc_ptr + pos, mask=inside & (pos >= 0), other=-1).to(tl.int64)
    tl.store(dst_ptr + j, tl.where(pos >= 0, slot, -1), mask=inside)


# ---------------------------------------------------------------- entry points
def commit_list_from_acceptance(accept_index: torch.Tensor, accept_lens: torch.Tensor,
                                out_cache_loc: torch.Tensor, draft_token_num: int):
    """``(src, dst)``, int64 ``[bs * D]`` each; see the module docstring."""
    bs, depth = accept_index.shape
    if depth > draft_token_num or out_cache_loc.numel() != bs * draft_token_num:
        raise ValueError(f"accept_index {tuple(accept_index.shape)} does not fit a window of "
                         f"{draft_token_num} x {bs} = {out_cache_loc.numel()} slots")
    if accept_index.stride(1) != 1 or not out_cache_loc.is_contiguous():
        accept_index, out_cache_loc = accept_index.contiguous(), out_cache_loc.contiguous()
    src = torch.empty(bs * depth, dtype=torch.int64, device=accept_index.device)
    dst = torch.empty_like(src)
    if bs and depth:
        _commit_list_from_acceptance_kernel[(bs,)](
            accept_index, accept_lens, out_cache_loc, src, dst, accept_index.stride(0), depth,
            draft_token_num, BLOCK_D=triton.next_power_of_2(depth))
    return src, dst


def slots_from_positions(pos: torch.Tensor, out_cache_loc: torch.Tensor) -> torch.Tensor:
    """``dst[j] = out_cache_loc[pos[j]]`` where ``pos[j] >= 0``, else ``-1`` (int64)."""
    pos = pos.contiguous()
    out_cache_loc = out_cache_loc.contiguous()
    dst = torch.empty(pos.shape, dtype=torch.int64, device=pos.device)
    m = pos.numel()
    if m:
        block = min(1024, triton.next_power_of_2(m))
        _slots_from_positions_kernel[(triton.cdiv(m, block),)](pos, out_cache_loc, dst, m, BLOCK=block)
    return dst

"""NGRAM's verify inputs from the device draft-tree mask, all requests, one launch.

After the corpus lookup, SGLang's NGRAM worker (``_prepare_for_speculative_decoding``)
launches three things per verify step, serial with an idle GPU at small batch sizes:

- ``reconstruct_indices_from_tree_mask`` (``sgl_kernel``'s CUDA op on 0.5.17, a Triton
  port on 0.5.23): ``positions`` and the ``retrieve_*`` tree links from the tree mask;
- the full verify mask (the plugin's one-launch ``kernels/ngram_mask.py`` in place of
  upstream's per-request loop);
- ``assign_extend_cache_locs``: the KV slots of the draft tokens, ``req_to_token[pool
  index, seq_len .. seq_len + N)`` per request (after a ``seq_lens + N`` add).

On an H100 host the mask and cache-location launches cost 66 and 59 µs a step (runs
43-48, bs 1). This writes all three results with one launch:

- ``ngram_draft_ref``: plain torch: the reconstruct contract (below), ``full_tree_mask_ref``
  and the cache-location gather; the spec and the CPU oracle.
- ``_ngram_draft_kernel``: Triton, grid ``(bs, N, mask column tiles)``: every program
  writes its tile of the full mask (as ``_full_tree_mask_kernel``); program ``(i, 0, 0)``
  also reconstructs request ``i``'s tree links and gathers its cache locations.
- ``ngram_draft``: the launcher; no host sync (sizes from ``seq_lens_cpu``, as upstream).

The reconstruct contract, per request ``b`` and node ``t`` (``n`` draft tokens; written
down in SGLang 0.5.23's ``kernels/ops/speculative/reconstruct_tree.py``, which ports the
CUDA op): ``anc[i, j] = mask[b, i, j] and j < i``; ``positions = #anc[t, :] + seq_len``;
``retrieve_index = b * n + t``; ``parent[t] = max{j : anc[t, j]}`` else -1;
``retrieve_next_token = min{k : anc[k, t]}`` else -1; ``retrieve_next_sibling = min{k > t
: parent[k] == parent[t]}`` else -1, and -1 for a root.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_nwor_scv.kernels.host_math import cdiv, next_power_of_2
from sglang_nwor_scv.kernels.launcher import launch as launch_kernel
from sglang_nwor_scv.kernels.ngram_mask import full_mask_tile, full_tree_mask_ref

_BLOCK = 512  # mask columns per program
_BS_BLOCK = 16  # earlier requests' lengths summed per loop step


# ---------------------------------------------------------------- reference
def reconstruct_ref(tree_mask: torch.Tensor, seq_lens: torch.Tensor, bs: int, n: int):
    """(positions, retrieve_index, retrieve_next_token, retrieve_next_sibling), each
    ``bs * n`` int64, from the contract in the module docstring."""
    m = tree_mask[: bs * n * n].reshape(bs, n, n).to(torch.bool)
    idx = torch.arange(n, device=m.device)
    anc = m & (idx[None, None, :] < idx[None, :, None])  # [b, i, j]: j an ancestor of i
    positions = anc.sum(dim=2) + seq_lens[:bs, None].to(torch.int64)
    retrieve_index = torch.arange(bs * n, device=m.device).reshape(bs, n)
    parent = torch.where(anc, idx, -1).amax(dim=2)  # [b, i]
    child = torch.where(anc, idx[None, :, None], n).amin(dim=1)  # [b, t]: first k with anc[k, t]
    next_token = torch.where(child < n, child, -1)
    later = idx[None, :, None] > idx[None, None, :]  # [., k, t]: k > t
    same = (parent[:, :, None] == parent[:, None, :]) & later
    sibling = torch.where(same, idx[None, :, None], n).amin(dim=1)
    next_sibling = torch.where((parent >= 0) & (sibling < n), sibling, -1)
    return tuple(t.reshape(-1).to(torch.int64) for t in
                 (positions, retrieve_index, next_token, next_sibling))


def ngram_draft_ref(tree_mask, seq_lens, seq_lens_cpu, req_pool_indices, req_to_token,
                    positions, retrieve_index, retrieve_next_token, retrieve_next_sibling,
                    bs: int, n: int):
    """Upstream's three steps: fills the four tree-link buffers' first ``bs * n`` entries
    and returns ``(full_mask, out_cache_loc)``."""
    for out, value in zip((positions, retrieve_index, retrieve_next_token, retrieve_next_sibling),
                          reconstruct_ref(tree_mask, seq_lens, bs, n), strict=True):
        out.view(-1)[: bs * n] = value.to(out.dtype)
    full = full_tree_mask_ref(tree_mask[: bs * n * n], seq_lens_cpu[:bs], n)
    cols = seq_lens[:bs, None].to(torch.int64) + torch.arange(n, device=seq_lens.device)
    locs = req_to_token[req_pool_indices[:bs, None].to(torch.int64), cols].reshape(-1)
    return full, locs.to(torch.int64)


# ---------------------------------------------------------------- kernel
@triton.jit
def _ngram_draft_kernel(tree_mask_ptr, seq_lens_ptr, req_pool_ptr, req_to_token_ptr,
                        req_to_token_stride, mask_out_ptr, loc_out_ptr, positions_ptr,
                        retrieve_index_ptr, next_token_ptr, next_sibling_ptr,
                        N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr,
                        BS_BLOCK: tl.constexpr):
    i = tl.program_id(0)
    r = tl.program_id(1)
    c0 = tl.program_id(2) * BLOCK
    seq_len = tl.load(seq_lens_ptr + i).to(tl.int64)
    full_mask_tile(tree_mask_ptr, seq_lens_ptr, mask_out_ptr, i, r, c0, seq_len, N, BLOCK, BS_BLOCK)
    if (r == 0) & (c0 == 0):
        # tree links: rows are nodes, columns ancestor candidates (one n x n tile)
        node = tl.arange(0, BLOCK_N)
        row = node[:, None]
        col = node[None, :]
        m = tl.load(tree_mask_ptr + i * (N * N) + row * N + col, mask=(row < N) & (col < N), other=0)
        anc = (m != 0) & (col < row)
        depth = tl.sum(anc.to(tl.int32), axis=1)
        parent = tl.max(tl.where(anc, col, -1), axis=1)
        child = tl.min(tl.where(anc, row, N), axis=0)
        same = (parent[:, None] == parent[None, :]) & (row > col) & (row < N)
        sibling = tl.min(tl.where(same, row, N), axis=0)
        out = i * N + node
        inside = node < N
        tl.store(positions_ptr + out, (depth.to(tl.int64) + seq_len).to(positions_ptr.dtype.element_ty),
                 mask=inside)
        tl.store(retrieve_index_ptr + out, out.to(retrieve_index_ptr.dtype.element_ty), mask=inside)
        tl.store(next_token_ptr + out, tl.where(child < N, child, -1).to(next_token_ptr.dtype.element_ty),
                 mask=inside)
        tl.store(next_sibling_ptr + out,
                 tl.where((parent >= 0) & (sibling < N), sibling, -1).to(next_sibling_ptr.dtype.element_ty),
                 mask=inside)
        # cache locations: req_to_token[pool index, seq_len + t]
        slot_row = req_to_token_ptr + tl.load(req_pool_ptr + i).to(tl.int64) * req_to_token_stride
        slots = tl.load(slot_row + seq_len + node, mask=inside)
        tl.store(loc_out_ptr + out, slots.to(tl.int64), mask=inside)


def ngram_draft(tree_mask, seq_lens, seq_lens_cpu, req_pool_indices, req_to_token,
                positions, retrieve_index, retrieve_next_token, retrieve_next_sibling,
                bs: int, n: int):
    """``ngram_draft_ref``'s writes and results, one launch. The four tree-link buffers must
    be contiguous (upstream's preallocated per-batch-size views are)."""
    n = int(n)
    lens = seq_lens_cpu.tolist()[:bs]  # one conversion for the sum and the max (no view)
    total = n * sum(lens) + bs * n * n
    full = torch.empty(total, dtype=torch.bool, device=tree_mask.device)
    locs = torch.empty(bs * n, dtype=torch.int64, device=tree_mask.device)
    if bs == 0:
        return full, locs
    links = (positions, retrieve_index, retrieve_next_token, retrieve_next_sibling)
    if not all(t.is_contiguous() for t in links):
        raise ValueError("ngram_draft: the tree-link buffers must be contiguous")
    grid, args, consts = launch_args(tree_mask, seq_lens, req_pool_indices, req_to_token, full, locs,
                                     links, bs, n, max(lens))
    _launch(grid, args, consts)
    return full, locs


def _launch(grid, args, consts):
    """Triton's launch alone: its own phase clock (``kernel.ngram_draft.launch``) splits the
    wrapper's host time from the launch's (run 54 clocked the whole at 208 µs a step in the
    engine; run 49's loop benchmark gave 40 µs a call)."""
    launch_kernel(_ngram_draft_kernel, grid, args, consts)


def launch_args(tree_mask, seq_lens, req_pool_indices, req_to_token, full, locs, links,
                bs: int, n: int, max_seq_len: int):
    """The kernel's grid, arguments and constants: one list, so a launch-cost probe launches
    exactly what ``ngram_draft`` launches."""
    grid = (bs, n, cdiv(max_seq_len + n, _BLOCK))
    args = (tree_mask.view(torch.uint8), seq_lens, req_pool_indices, req_to_token,
            req_to_token.stride(0), full.view(torch.uint8), locs, *links)
    consts = dict(N=n, BLOCK_N=next_power_of_2(n), BLOCK=_BLOCK, BS_BLOCK=_BS_BLOCK)
    return grid, args, consts

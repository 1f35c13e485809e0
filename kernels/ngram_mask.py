"""NGRAM's full verify mask (prefix ones + draft tree), all requests, one launch.

On CUDA SGLang's NGRAM worker hands attention a "full" custom mask: for request ``i``
with ``L_i`` cached tokens and ``N`` draft tokens, an ``N x (L_i + N)`` bool block whose
first ``L_i`` columns are ones (every draft token sees the whole prefix) and whose last
``N`` columns are the request's draft-tree mask; the blocks are flattened row-major and
concatenated in batch order (``_prepare_for_speculative_decoding``,
``USE_FULL_MASK`` path). Upstream builds it with a Python loop over the batch: per
request a ``torch.ones`` on the device, a host-to-device copy of the tree mask, a
``cat`` and a cast, then one more ``cat``: about 5 x bs launches and bs small copies of
host work on every verify step (its own TODO: "can be written into a kernel").

This builds the same tensor, bit for bit, from what is already on the device: the tree
mask upstream copied there for ``reconstruct_indices_from_tree_mask`` and ``seq_lens``.

- ``full_tree_mask_ref``: plain torch, upstream's loop, the spec and the CPU oracle.
- ``_full_tree_mask_kernel``: Triton, grid ``(bs, N, column tiles)``.
- ``full_tree_mask``: one launch (each program sums the earlier lengths for its block
  offset, so no ``cumsum`` launch); no host sync
  (the output size and the widest row come from ``seq_lens_cpu``, which upstream reads
  on the host for the same purpose).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_nwor_scv.kernels.host_math import cdiv
from sglang_nwor_scv.kernels.launcher import launch as launch_kernel

_BLOCK = 512  # mask columns per program
_BS_BLOCK = 16  # earlier requests' lengths summed per loop step (small: a chunk per program)


# ---------------------------------------------------------------- reference
def full_tree_mask_ref(tree_mask: torch.Tensor, seq_lens_cpu: torch.Tensor, num_draft: int,
                       device=None) -> torch.Tensor:
    """Upstream's loop: ``tree_mask`` is the ``bs * N * N`` bool draft-tree mask."""
    bs = seq_lens_cpu.shape[0]
    device = device if device is not None else tree_mask.device
    mask = tree_mask.reshape(bs, num_draft, num_draft)
    blocks = []
    for i in range(bs):
        ones = torch.ones((num_draft, int(seq_lens_cpu[i])), device=device)
        blocks.append(torch.cat((ones, mask[i].to(device)), dim=1).to(torch.bool).flatten())
    return torch.cat(blocks, dim=0)


# ---------------------------------------------------------------- kernel
@triton.jit
def full_mask_tile(tree_mask_ptr, seq_lens_ptr, out_ptr, i, r, c0, seq_len,
                   N: tl.constexpr, BLOCK: tl.constexpr, BS_BLOCK: tl.constexpr):
    """Row ``r``, columns ``c0 .. c0 + BLOCK`` of request ``i``'s full-mask block: ones over
    the prefix, then the draft tree. Shared with ``kernels/ngram_draft.py``."""
    # block start: N * (seq_lens[0] + ... + seq_lens[i-1]) + i * N * N; each program sums
    # the earlier lengths itself (bs is small), which saves a cumsum launch on the host
    acc = tl.zeros([BS_BLOCK], dtype=tl.int64)
    for j0 in range(0, i, BS_BLOCK):  # one specialisation for every batch size
        j = j0 + tl.arange(0, BS_BLOCK)
        acc += tl.load(seq_lens_ptr + j, mask=j < i, other=0).to(tl.int64)
    start = N * tl.sum(acc, axis=0) + i.to(tl.int64) * N * N
    row_len = seq_len + N
    if c0 < row_len:
        cols = c0 + tl.arange(0, BLOCK)
        in_row = cols < row_len
        is_draft = cols >= seq_len
        tree = tl.load(tree_mask_ptr + (i * N + r) * N + (cols - seq_len), mask=in_row & is_draft, other=0)
        value = tl.where(is_draft, tree, 1).to(tl.uint8)
        tl.store(out_ptr + start + r * row_len + cols, value, mask=in_row)


@triton.jit
def _full_tree_mask_kernel(tree_mask_ptr, seq_lens_ptr, out_ptr,
                           N: tl.constexpr, BLOCK: tl.constexpr, BS_BLOCK: tl.constexpr):
    i = tl.program_id(0)
    seq_len = tl.load(seq_lens_ptr + i).to(tl.int64)
    full_mask_tile(tree_mask_ptr, seq_lens_ptr, out_ptr, i, tl.program_id(1), tl.program_id(2) * BLOCK,
                   seq_len, N, BLOCK, BS_BLOCK)


def full_tree_mask(tree_mask: torch.Tensor, seq_lens: torch.Tensor, seq_lens_cpu: torch.Tensor,
                   num_draft: int, bs: int | None = None) -> torch.Tensor:
    """The full mask of ``full_tree_mask_ref`` from device ``tree_mask`` / ``seq_lens``, over
    the first ``bs`` requests (default: all of ``seq_lens_cpu``; a count rather than a slice
    view of upstream's max-bs buffer saves the view on every step)."""
    lens = seq_lens_cpu.tolist()[:bs]  # one conversion for the sum and the max
    bs = len(lens)
    n = int(num_draft)
    total = n * sum(lens) + bs * n * n
    out = torch.empty(total, dtype=torch.bool, device=tree_mask.device)
    if bs == 0:
        return out
    width = max(lens) + n
    grid = (bs, n, cdiv(width, _BLOCK))
    launch_kernel(_full_tree_mask_kernel, grid,
                  (tree_mask.view(torch.uint8), seq_lens, out.view(torch.uint8)),
                  dict(N=n, BLOCK=_BLOCK, BS_BLOCK=_BS_BLOCK))
    return out

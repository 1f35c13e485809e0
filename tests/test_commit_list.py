"""The NWOR commit-list builders (``kernels/commit_list.py``) against their torch
references: random batches, windows, acceptance lengths (0 to the whole path),
int32/int64 inputs and a strided ``accept_index``; outputs are poisoned first, so
every entry must be written. Runs the Triton kernels under the interpreter on the CPU
(tests/gpu/test_commit_list_gpu.py runs the same checks on a GPU)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sglang_nwor_scv.kernels.commit_list import (  # noqa: E402
    commit_list_from_acceptance,
    commit_list_from_acceptance_ref,
    slots_from_positions,
    slots_from_positions_ref,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def acceptance_case(bs, n, depth, index_dtype, strided, seed):
    """What upstream's verify leaves: accept_index rows = accepted flat verify rows of
    the request, -1 after; accept_lens in [0, depth]; a window of distinct slots."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, depth + 1, (bs,), generator=g)
    index = torch.full((bs, depth + (3 if strided else 0)), -1, dtype=torch.int64)
    for b in range(bs):
        rows = torch.randperm(n, generator=g)[: int(lens[b])] + b * n
        index[b, : int(lens[b])] = rows
    index = index[:, :depth] if strided else index  # a non-contiguous view when strided
    slots = torch.randperm(bs * n * 4, generator=g)[: bs * n] + 7
    return (index.to(index_dtype).to(DEVICE), lens.to(index_dtype).to(DEVICE),
            slots.to(index_dtype).to(DEVICE))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bs=st.integers(1, 9), n=st.integers(1, 12), extra=st.integers(0, 12),
       index_dtype=st.sampled_from([torch.int32, torch.int64]), strided=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_commit_list_from_acceptance_matches_reference(bs, n, extra, index_dtype, strided, seed):
    depth = max(1, n - extra)  # accept_index width D <= window N
    index, lens, slots = acceptance_case(bs, n, depth, index_dtype, strided, seed)
    src, dst = commit_list_from_acceptance(index, lens, slots, n)
    ref_src, ref_dst = commit_list_from_acceptance_ref(index, lens, slots, n)
    assert src.dtype == dst.dtype == torch.int64 and src.shape == (bs * depth,)
    assert torch.equal(src, ref_src) and torch.equal(dst, ref_dst)
    assert int((src >= 0).sum()) == int(lens.sum())  # one entry per accepted row


def test_commit_list_refuses_a_window_that_does_not_fit():
    index, lens, slots = acceptance_case(2, 4, 4, torch.int64, False, 0)
    with pytest.raises(ValueError, match="does not fit"):
        commit_list_from_acceptance(index, lens, slots, 3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(0, 3000), window=st.integers(1, 64),
       slot_dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**31 - 1))
def test_slots_from_positions_matches_reference(m, window, slot_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(-1, window, (m,), generator=g).to(DEVICE)  # -1 = padding
    slots = (torch.randperm(window * 3, generator=g)[:window] + 1).to(slot_dtype).to(DEVICE)
    dst = slots_from_positions(pos, slots)
    assert dst.dtype == torch.int64 and dst.shape == pos.shape
    assert torch.equal(dst, slots_from_positions_ref(pos, slots))

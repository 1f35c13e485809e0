"""The commit straight from upstream's acceptance (``KVCommitPlan.launch_from_acceptance``)
against the references: the list upstream's acceptance implies
(``commit_list_from_acceptance_ref``) committed by ``commit_accepted_kv_ref``. Random
batches, windows, acceptance lengths (0 to the whole path), int32/int64 inputs, a
strided ``accept_index``; pools poisoned first, so every byte must match and no other
row may change. Runs the Triton kernel under the interpreter on the CPU
(tests/gpu/test_commit_list_gpu.py runs the same checks on a GPU at real shapes)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sglang_nwor_scv.kernels.commit_kv import KVCommitPlan, commit_accepted_kv_ref  # noqa: E402
from tests.test_commit_kv import as_bytes  # noqa: E402
from sglang_nwor_scv.kernels.commit_list import (  # noqa: E402
    commit_list_from_acceptance_ref,
    slots_from_positions_ref,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def acceptance_case(bs, n, depth, index_dtype, strided, seed, junk_tail=False):
    """What upstream's verify leaves: accept_index rows = accepted flat verify rows of
    the request, -1 after (``junk_tail``: other rows after, so only ``accept_lens`` tells
    where the path ends); accept_lens in [0, depth]; a window of distinct slots."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, depth + 1, (bs,), generator=g)
    index = torch.full((bs, depth + (3 if strided else 0)), -1, dtype=torch.int64)
    for b in range(bs):
        rows = torch.randperm(n, generator=g)[:depth] + b * n
        keep = depth if junk_tail else int(lens[b])
        index[b, :keep] = rows[:keep]
    index = index[:, :depth] if strided else index  # a non-contiguous view when strided
    slots = torch.randperm(bs * n * 4, generator=g)[: bs * n] + 7
    return (index.to(index_dtype).to(DEVICE), lens.to(index_dtype).to(DEVICE),
            slots.to(index_dtype).to(DEVICE))


def pool_case(rows, tokens, layers, seed, heads=2, dim=8):
    """Staged K/V (slices of a fused projection, as a real forward leaves them) and a pool
    of random bytes, bf16."""
    g = torch.Generator().manual_seed(seed)
    ks, vs = [], []
    for _ in range(layers):
        fused = torch.randn(tokens, 3 * heads * dim + 5, generator=g).to(torch.bfloat16).to(DEVICE)
        ks.append(fused[:, heads * dim: 2 * heads * dim].view(tokens, heads, dim))
        vs.append(fused[:, 2 * heads * dim: 3 * heads * dim].view(tokens, heads, dim))
    pool = [torch.randint(-30000, 30000, (rows, heads, dim), generator=g, dtype=torch.int16)
            .view(torch.bfloat16).to(DEVICE) for _ in range(2 * layers)]
    return ks, vs, pool[:layers], pool[layers:]


def commit_both(index, lens, slots, n, seed):
    """Commit one step both ways into copies of one pool; returns (ours, reference) as
    (pool buffers, counter)."""
    bs = lens.shape[0]
    ks, vs, kd, vd = pool_case(int(slots.max()) + 1, bs * n, layers=2, seed=seed)
    ours_k, ours_v = [t.clone() for t in kd], [t.clone() for t in vd]
    ref_k, ref_v = [t.clone() for t in kd], [t.clone() for t in vd]
    ours_c = torch.tensor([5, 9], dtype=torch.int64, device=DEVICE)
    ref_c = ours_c.clone()
    KVCommitPlan(ks, vs, ours_k, ours_v).launch_from_acceptance(index, lens, slots, n, ours_c)
    src, dst = commit_list_from_acceptance_ref(index, lens, slots, n)
    commit_accepted_kv_ref(ks, vs, ref_k, ref_v, src, dst, committed=ref_c, accept_lens=lens)
    return (ours_k + ours_v, ours_c), (ref_k + ref_v, ref_c), kd + vd


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bs=st.integers(1, 9), n=st.integers(1, 12), extra=st.integers(0, 12),
       index_dtype=st.sampled_from([torch.int32, torch.int64]), strided=st.booleans(),
       junk_tail=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_commit_from_acceptance_writes_the_reference_bytes(bs, n, extra, index_dtype, strided,
                                                          junk_tail, seed):
    depth = max(1, n - extra)  # accept_index width D <= window N
    index, lens, slots = acceptance_case(bs, n, depth, index_dtype, strided, seed, junk_tail)
    (ours, ours_c), (ref, ref_c), before = commit_both(index, lens, slots, n, seed)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))
    accepted = int(lens.sum())
    assert ours_c.tolist() == ref_c.tolist() == [5 + accepted, 9 + accepted]
    if accepted < bs * n:  # the test can fail: some rows were not committed
        changed = sum(int((as_bytes(a) != as_bytes(b)).any()) for a, b in zip(ours, before, strict=True))
        assert changed == (len(ours) if accepted else 0)


def test_commit_from_acceptance_refuses_a_window_that_does_not_fit():
    index, lens, slots = acceptance_case(2, 4, 4, torch.int64, False, 0)
    ks, vs, kd, vd = pool_case(64, 8, layers=1, seed=0)
    with pytest.raises(ValueError, match="does not fit"):
        KVCommitPlan(ks, vs, kd, vd).launch_from_acceptance(index, lens, slots, 3)


def test_slots_from_positions_ref_maps_and_pads():
    slots = torch.tensor([40, 41, 42, 43], dtype=torch.int32)
    pos = torch.tensor([2, -1, 0, 3])
    assert slots_from_positions_ref(pos, slots).tolist() == [42, -1, 40, 43]

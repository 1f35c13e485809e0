"""The one-launch post-verify KV move (kernels/move_kv.py) against its torch reference and
against SGLang's own ``move_accept_tokens_to_target_kvcache``, byte for byte.

Upstream's move runs for real here: SGLang 0.5.23's index builders and its
``MHATokenToKVPool.move_kv_cache`` (the tiled Triton copy, under the Triton
interpreter on the CPU; the GPU test runs it natively at real shapes) on a real
pool. Trees are SGLang-shaped: each request's accepted path is a strictly
increasing list of its own verify rows starting at its root, -1 padded.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_nwor_scv.kernels.move_kv import KVMovePlan, move_accepted_kv_ref, move_list_ref


def _pool(size=96, heads=2, dim=8, layers=3, dtype=torch.float32, copy=True):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(size=size, page_size=1, dtype=dtype, head_num=heads, head_dim=dim,
                            layer_num=layers, device="cpu", enable_memory_saver=False,
                            enable_kv_cache_copy=copy)
    g = torch.Generator().manual_seed(0)
    for buf in [*pool.k_buffer, *pool.v_buffer]:
        buf.view(torch.uint8).copy_(torch.randint(0, 256, buf.view(torch.uint8).shape, generator=g,
                                                  dtype=torch.uint8))
    return pool


def _tree_acceptance(bs, n, depth, seed, idx_dtype=torch.int32):
    """SGLang-shaped accept_index / num_correct_drafts: paths of random length and gaps."""
    g = torch.Generator().manual_seed(seed)
    accept_index = torch.full((bs, depth), -1, dtype=idx_dtype)
    num_correct = torch.empty(bs, dtype=idx_dtype)
    for b in range(bs):
        length = int(torch.randint(1, min(depth, n) + 1, (1,), generator=g))
        rest = torch.randperm(n - 1, generator=g)[: length - 1].sort().values + 1
        path = torch.cat([torch.zeros(1, dtype=torch.int64), rest])
        accept_index[b, :length] = (b * n + path).to(idx_dtype)
        num_correct[b] = length - 1
    return accept_index, num_correct


def _window(bs, n, size, seed, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed + 100)
    return (torch.randperm(size - 1, generator=g)[: bs * n] + 1).to(dtype)


def _upstream_move(pool, accept_index, num_correct, out_cache_loc):
    from sglang.srt.speculative.spec_utils import move_accept_tokens_to_target_kvcache

    batch = SimpleNamespace(seq_lens=torch.zeros(accept_index.shape[0], dtype=torch.int64),
                            out_cache_loc=out_cache_loc)
    move_accept_tokens_to_target_kvcache(batch, accept_index, num_correct,
                                         SimpleNamespace(get_kvcache=lambda: pool))


def _bytes(pool):
    return [b.view(torch.uint8).clone() for b in [*pool.k_buffer, *pool.v_buffer]]


@pytest.mark.parametrize("bs,n,depth", [(1, 1, 1), (1, 4, 4), (3, 8, 5), (5, 6, 6), (17, 4, 3)])
@pytest.mark.parametrize("loc_dtype", [torch.int64, torch.int32])
def test_move_equals_upstream_move_byte_for_byte(bs, n, depth, loc_dtype):
    accept_index, num_correct = _tree_acceptance(bs, n, depth, seed=bs * 31 + n)
    loc = _window(bs, n, 96, seed=bs, dtype=loc_dtype)
    ours, ref, upstream = _pool(), _pool(), _pool()
    _upstream_move(upstream, accept_index, num_correct, loc.to(torch.int64))
    move_accepted_kv_ref([*ref.k_buffer, *ref.v_buffer], accept_index, num_correct, loc)
    KVMovePlan.for_pool(ours).launch(accept_index, num_correct, loc)
    for a, b, c in zip(_bytes(ours), _bytes(ref), _bytes(upstream), strict=True):
        assert torch.equal(a, c)
        assert torch.equal(b, c)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_move_is_a_raw_byte_copy_for_every_kv_dtype(dtype):
    accept_index, num_correct = _tree_acceptance(4, 8, 8, seed=7)
    loc = _window(4, 8, 96, seed=7)
    ours, ref = _pool(dtype=dtype, dim=16), _pool(dtype=dtype, dim=16)
    move_accepted_kv_ref([*ref.k_buffer, *ref.v_buffer], accept_index, num_correct, loc)
    KVMovePlan.for_pool(ours).launch(accept_index, num_correct, loc)
    assert all(torch.equal(a, b) for a, b in zip(_bytes(ours), _bytes(ref), strict=True))


def test_rows_already_in_place_are_not_copied():
    """A chain accepts its window front as is: the move list is empty and no byte is
    written (checked by pointing the plan at buffers where any write would show)."""
    bs, n = 4, 5
    accept_index = torch.full((bs, n), -1, dtype=torch.int32)
    num_correct = torch.tensor([4, 0, 2, 3], dtype=torch.int32)
    for b in range(bs):
        accept_index[b, : int(num_correct[b]) + 1] = torch.arange(b * n, b * n + int(num_correct[b]) + 1)
    loc = _window(bs, n, 96, seed=3)
    src, dst = move_list_ref(accept_index, num_correct, loc)
    assert src.numel() == dst.numel() == 0
    pool = _pool()
    before = _bytes(pool)
    KVMovePlan.for_pool(pool).launch(accept_index, num_correct, loc)
    assert all(torch.equal(a, b) for a, b in zip(before, _bytes(pool), strict=True))


def test_in_place_overlap_reads_before_writing():
    """Path rows [0, 2, 3]: row 2 is both a source (of slot 1) and a destination (of
    row 3). Every read must see the row's value before the move."""
    pool = _pool(layers=1)
    loc = torch.arange(10, 14, dtype=torch.int64)
    accept_index = torch.tensor([[0, 2, 3, -1]], dtype=torch.int32)
    num_correct = torch.tensor([2], dtype=torch.int32)
    k = pool.k_buffer[0].view(torch.uint8)  # random bytes: compare bytes, not floats (NaNs)
    old = k[[10, 12, 13]].clone()
    KVMovePlan.for_pool(pool).launch(accept_index, num_correct, loc)
    assert torch.equal(k[10:13], old)


def test_bad_arguments_are_clear_errors_and_change_nothing():
    pool = _pool()
    plan = KVMovePlan.for_pool(pool)
    before = _bytes(pool)
    idx = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_correct_drafts has shape"):
        plan.launch(idx, torch.zeros(3, dtype=torch.int32), torch.arange(8))
    with pytest.raises(ValueError, match="shorter than accept_index"):
        plan.launch(idx, torch.zeros(2, dtype=torch.int32), torch.arange(6))
    with pytest.raises(ValueError, match="accept_index must be"):
        plan.launch(idx.t(), torch.zeros(4, dtype=torch.int32), torch.arange(8))
    with pytest.raises(ValueError, match="contiguous"):
        KVMovePlan([pool.k_buffer[0].transpose(1, 2)])
    assert all(torch.equal(a, b) for a, b in zip(before, _bytes(pool), strict=True))


def test_move_site_refuses_pools_whose_move_differs():
    from sglang_nwor_scv.eligibility import move_refusal

    assert move_refusal(_pool()) is None
    assert "only MHATokenToKVPool" in move_refusal(SimpleNamespace(k_buffer=[], v_buffer=[]))

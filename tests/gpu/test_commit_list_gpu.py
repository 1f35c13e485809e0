"""The commit-list builders on the GPU at real shapes (bs 1-128, window N 2-64),
against their torch references, plus one launch each (torch.profiler)."""

from __future__ import annotations

import pytest
import torch
from tests.gpu.sanitizer_shapes import ends

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_nwor_scv.kernels.commit_list import (  # noqa: E402
    commit_list_from_acceptance,
    commit_list_from_acceptance_ref,
    slots_from_positions,
    slots_from_positions_ref,
)
from tools.cuda_timing import launches_per_call  # noqa: E402
from tests.test_commit_list import acceptance_case  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n,depth", ends([(2, 2), (4, 4), (8, 8), (64, 8), (64, 64)]))
@pytest.mark.parametrize("bs", ends([1, 8, 32, 128]))
def test_commit_list_at_real_shapes(bs, n, depth, index_dtype):
    index, lens, slots = acceptance_case(bs, n, depth, index_dtype, strided=False, seed=bs * 131 + n)
    src, dst = commit_list_from_acceptance(index, lens, slots, n)
    ref_src, ref_dst = commit_list_from_acceptance_ref(index, lens, slots, n)
    assert torch.equal(src, ref_src) and torch.equal(dst, ref_dst)
    assert launches_per_call(lambda: commit_list_from_acceptance(index, lens, slots, n)) == 1


@pytest.mark.parametrize("m", ends([1, 8 * 8, 128 * 64, 128 * 64 + 5]))
def test_slots_from_positions_at_real_shapes(m):
    g = torch.Generator().manual_seed(m)
    pos = torch.randint(-1, m, (m,), generator=g).cuda()
    slots = (torch.randperm(4 * m, generator=g)[:m] + 3).cuda()
    assert torch.equal(slots_from_positions(pos, slots), slots_from_positions_ref(pos, slots))
    assert launches_per_call(lambda: slots_from_positions(pos, slots)) == 1

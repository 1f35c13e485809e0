"""The commit straight from upstream's acceptance on the GPU at real shapes (bs 1-128,
window N 2-64), against the references, in one launch (torch.profiler)."""

from __future__ import annotations

import pytest
import torch
from tests.gpu.sanitizer_shapes import ends

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_nwor_scv.kernels.commit_kv import KVCommitPlan  # noqa: E402
from tests.test_commit_list import acceptance_case, as_bytes, commit_both, pool_case  # noqa: E402
from tools.cuda_timing import launches_per_call  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("junk_tail", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n,depth", ends([(2, 2), (4, 4), (8, 8), (64, 8), (64, 64)]))
@pytest.mark.parametrize("bs", ends([1, 8, 32, 128]))
def test_commit_from_acceptance_at_real_shapes(bs, n, depth, index_dtype, junk_tail):
    index, lens, slots = acceptance_case(bs, n, depth, index_dtype, strided=False,
                                         seed=bs * 131 + n, junk_tail=junk_tail)
    (ours, ours_c), (ref, ref_c), _ = commit_both(index, lens, slots, n, seed=bs + n)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(as_bytes(a), as_bytes(b))
    assert ours_c.tolist() == ref_c.tolist()


def test_commit_from_acceptance_is_one_launch():
    index, lens, slots = acceptance_case(32, 8, 8, torch.int32, strided=False, seed=3)
    ks, vs, kd, vd = pool_case(int(slots.max()) + 1, 32 * 8, layers=4, seed=3)
    plan = KVCommitPlan(ks, vs, kd, vd)
    counter = torch.zeros(2, dtype=torch.int64, device="cuda")
    assert launches_per_call(lambda: plan.launch_from_acceptance(index, lens, slots, 8, counter)) == 1

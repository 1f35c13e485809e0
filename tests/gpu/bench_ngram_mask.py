"""Benchmark + check on the GPU: NGRAM's full verify mask, upstream's per-request loop vs
the one-launch kernel (kernels/ngram_mask.py), N 8 drafts, context 1,024-4,096 tokens.

    pytest tests/gpu/bench_ngram_mask.py --benchmark-enable --benchmark-json=out/bench_ngram_mask.json

Each case first checks the kernel's mask equals the loop's bit for bit, then times one
call plus a synchronize (host wall time: the loop's cost is launches and copies on the
host); ``extra_info`` has the launches per call (torch.profiler).
"""

import pytest
import torch
from tests.gpu.sanitizer_shapes import ends

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_nwor_scv.kernels.ngram_mask import full_tree_mask, full_tree_mask_ref  # noqa: E402
from tools.cuda_timing import launches_per_call  # noqa: E402

pytestmark = pytest.mark.gpu
N = 8


def _inputs(bs: int):
    g = torch.Generator().manual_seed(bs)
    host_tree = torch.randint(0, 2, (bs * N * N,), generator=g).to(torch.bool)
    lens_cpu = torch.randint(1024, 4096, (bs,), generator=g)
    return host_tree, host_tree.cuda(), lens_cpu, lens_cpu.cuda()


@pytest.mark.parametrize("bs", ends([1, 8, 32, 128]))
@pytest.mark.parametrize("provider", ["upstream-loop", "kernel"])
def test_bench_full_mask(benchmark, bs, provider):
    host_tree, tree, lens_cpu, lens = _inputs(bs)
    want = full_tree_mask_ref(host_tree, lens_cpu, N, device="cuda")
    got = full_tree_mask(tree, lens, lens_cpu, N)
    assert torch.equal(got, want)
    if provider == "kernel":
        def call():
            full_tree_mask(tree, lens, lens_cpu, N)
    else:  # upstream copies the tree mask from the host, request by request
        def call():
            full_tree_mask_ref(host_tree, lens_cpu, N, device="cuda")

    def timed():
        call()
        torch.cuda.synchronize()

    benchmark.extra_info["launches_per_call"] = launches_per_call(call)
    benchmark.group = f"ngram full mask bs {bs}"
    benchmark(timed)

"""Greedy SCV acceptance vs SGLang's CUDA ``verify_tree_greedy`` at real shapes.

Needs a CUDA GPU (skips otherwise) and SGLang 0.5.23 or 0.5.17: trees, verify and
glue come from the installed version's own ops (``tests/sglang_spec_ops.py``;
on 0.5.17 the chain and NGRAM trees come from its ``sgl_kernel`` CUDA builders).
Run: ``pytest -m gpu tests/gpu/test_verify_accept_gpu.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tests.gpu.sanitizer_shapes import ends

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sglang_spec_ops as spec_ops  # noqa: E402  (SGLang's ops for the installed version)
import test_verify_accept as cases  # noqa: E402  (tree generators and checks)

verify_tree_greedy_func = spec_ops.get("verify_tree_greedy_func")  # the CUDA kernel

from sglang_nwor_scv.kernels.verify_accept import (  # noqa: E402
    alloc_verify_accept_outputs,
    verify_accept_greedy,
    verify_accept_greedy_ref,
)

BATCHES = [1, 2, 7, 32, 64, 128]

# (kind, N, extra): EAGLE chains (N = steps + 1), EAGLE trees as SGLang's
# launch configs build them, NGRAM tries up to 64 nodes.
TREES = [
    ("chain", 2, {}),
    ("chain", 4, {}),
    ("chain", 8, {}),
    ("chain", 64, {}),
    ("eagle", 4, dict(topk=2, steps=3)),
    ("eagle", 8, dict(topk=4, steps=3)),
    ("eagle", 16, dict(topk=4, steps=5)),
    ("eagle", 33, dict(topk=8, steps=4)),
    ("eagle", 64, dict(topk=8, steps=7)),
    ("ngram", 8, dict(max_branch=3)),
    ("ngram", 16, dict(max_branch=2)),
    ("ngram", 64, dict(max_branch=4)),
]


def _id(tree):
    kind, n, extra = tree
    return f"{kind}-N{n}" + "".join(f"-{k}{v}" for k, v in extra.items())


@pytest.mark.parametrize("bs", ends(BATCHES))
@pytest.mark.parametrize("tree", ends(TREES), ids=_id)
def test_matches_sglang_cuda(tree, bs):
    kind, n, extra = tree
    for seed in range(3):
        case = cases.make_case(kind, bs, seed, n=n, **extra)
        cases.check_case(case, sglang_fn=verify_tree_greedy_func)


@pytest.mark.parametrize("style", ["neg", "single"])
@pytest.mark.parametrize("tree", [TREES[2], TREES[6], TREES[10]], ids=_id)
def test_padded_bucket_matches_sglang_cuda(tree, style):
    # A CUDA-graph bucket of 32 holding 21 real requests.
    kind, n, extra = tree
    padding = ("",) * 21 + (style,) * 11
    case = cases.make_case(kind, 32, 0, n=n, padding=padding, **extra)
    cases.check_case(case, sglang_fn=verify_tree_greedy_func)


@pytest.mark.parametrize("tree", [TREES[3], TREES[7], TREES[11]], ids=_id)
def test_no_host_sync_and_graph_replay(tree):
    kind, n, extra = tree
    bs = 64
    first = cases.make_case(kind, bs, 0, n=n, **extra)
    static_in = [x.clone() for x in first.args()[:6]]
    out = alloc_verify_accept_outputs(bs, n, first.max_depth, "cuda")

    torch.cuda.set_sync_debug_mode("error")  # raises on any synchronizing call
    try:
        verify_accept_greedy(*static_in, first.max_depth, out=out)  # compile outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            verify_accept_greedy(*static_in, first.max_depth, out=out)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    for seed in range(1, 6):
        case = cases.make_case(kind, bs, seed, n=n, **extra)
        for dst, src in zip(static_in, case.args()[:6], strict=True):
            dst.copy_(src)
        for x in (out.predict, out.accept_index, out.commit_src, out.num_committed):
            x.fill_(-5)  # poison: the replay must overwrite everything
        graph.replay()
        cases.assert_outputs_equal(out, verify_accept_greedy_ref(*case.args()), f"seed {seed} ")

"""Benchmark: fused greedy acceptance vs the upstream ops it replaces.

Run on a GPU host with SGLang 0.5.23 or 0.5.17:
``pytest tests/gpu/bench_verify_accept.py -m gpu --benchmark-enable -s``
(without ``--benchmark-enable`` each case runs once, as a correctness check).

Per (tree, batch) it checks correctness once, then times

- ``ours-eager``: one ``verify_accept_greedy`` launch into preallocated outputs;
- ``ours-graph``: the same launch replayed from a ``torch.cuda.CUDAGraph``;
- ``upstream``: what the installed SGLang's ``eagle_sample`` + EAGLE verify run
  after the argmax on CUDA, with its own ops (``tests/sglang_spec_ops.py``):
  ``torch.zeros``/``torch.full``/``torch.empty`` buffers,
  ``verify_tree_greedy_func`` (the CUDA kernel), ``accept_lens = +1``, then the
  bonus and new seq_lens (0.5.23: ``prepare_verify_commit_outputs``; 0.5.17:
  ``seq_lens + accept_lens``, ``predict[accept_index]``,
  ``fill_bonus_tokens_func``), and the commit list SGLang builds in
  ``move_accept_tokens_to_target_kvcache`` (run itself, on a stand-in batch
  whose KV pool records the two slot lists instead of moving), called with the
  ``accept_lens - 1`` of ``_finalize_accept_tree_path``. Inside it 0.5.23 reads
  the targets from the verify window (``fill_front_out_cache_loc_func``), 0.5.17
  from ``req_to_token`` (``assign_extend_cache_locs``); both then run
  ``fill_accept_out_cache_loc_func``. For chains (topk = 1) upstream skips the
  move (the path is already in front), so ``upstream`` there is run without the
  commit list, and ``upstream+commit`` with it (what NWOR needs either way);
- ``upstream-graph``: the same ops captured in a CUDA graph, when capturable.

The pytest-benchmark timings are host-visible step latency (call +
``torch.cuda.synchronize()``). Each case also prints the mean device-side time
per call over back-to-back calls (CUDA events) and the kernels launched per call
(torch.profiler) beside the count expected from the ``UPSTREAM_*`` tables of
the installed version.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sglang_spec_ops as spec_ops  # noqa: E402  (SGLang's ops for the installed version)
import test_verify_accept as cases  # noqa: E402  (tree generators and checks)

try:  # the upstream ops this benchmark replays, from the installed version
    verify_tree_greedy_func = spec_ops.get("verify_tree_greedy_func")
    spec_ops.get("fill_bonus_tokens_func")
    spec_ops.get("move_accept_tokens_to_target_kvcache")
except spec_ops.MissingSpecOp as e:
    pytest.skip(f"upstream baseline ops not importable: {e}", allow_module_level=True)

from sglang_nwor_scv.kernels.verify_accept import (  # noqa: E402
    alloc_verify_accept_outputs,
    verify_accept_greedy,
)
from tools.cuda_timing import device_us_per_call, launches_per_call  # noqa: E402

# Device work each upstream op issues (kernels or memsets), for the printout.
UPSTREAM_LAUNCHES = {
    "torch.zeros(predict)": 1,
    "torch.full(accept_index, -1)": 1,
    "torch.empty(num_correct_drafts)": 0,
    "verify_tree_greedy": 1,
    "accept_lens = num_correct_drafts + 1": 1,
}
if spec_ops.has("prepare_verify_commit_outputs"):  # 0.5.23
    UPSTREAM_LAUNCHES["prepare_verify_commit_outputs (2 empty + kernel)"] = 1
else:  # 0.5.17
    UPSTREAM_LAUNCHES.update(
        {
            "new_seq_lens = seq_lens + accept_lens": 1,
            # int32 index: torch casts it to int64 before the gather. Run 4 (H100) counted
            # 8 upstream launches where this table said 7 with 1 here.
            "predict[accept_index] (index cast + gather)": 2,
            "torch.empty_like(bonus)": 0,
            "fill_bonus_tokens": 1,
        }
    )
UPSTREAM_COMMIT_LAUNCHES = {
    "accept_lens - 1": 1,
    "torch.zeros x2 (tgt, src slot lists)": 2,
    "fill_accept_out_cache_loc": 1,
}
if spec_ops.has("fill_front_out_cache_loc_func"):  # 0.5.23
    UPSTREAM_COMMIT_LAUNCHES.update(
        {"num_correct_drafts + 1": 1, "fill_front_out_cache_loc (arange, zeros_like, kernel)": 3}
    )
else:  # 0.5.17
    UPSTREAM_COMMIT_LAUNCHES.update(
        {"seq_lens + num_correct_drafts + 1": 2, "assign_extend_cache_locs (req_to_token)": 1}
    )
OURS_LAUNCHES = 1

TREES = [
    ("chain", 4, {}, 1),  # EAGLE topk=1, steps=3
    ("chain", 8, {}, 1),  # EAGLE topk=1, steps=7
    ("eagle", 16, dict(topk=4, steps=5), 4),
    ("eagle", 64, dict(topk=8, steps=7), 8),
    ("ngram", 8, dict(max_branch=3), -1),
    ("ngram", 64, dict(max_branch=4), -1),
]
BATCHES = [1, 8, 32, 128]


def _id(tree):
    kind, n, extra, _ = tree
    return f"{kind}-N{n}" + "".join(f"-{k}{v}" for k, v in extra.items())


def upstream_step(case: cases.VerifyCase, topk: int, seq_lens, kv_move: spec_ops.KVMove | None):
    """The installed SGLang's post-argmax greedy verify ops, as its EAGLE verify
    runs them on CUDA; ``kv_move``: build the commit list too."""
    bs, n = case.candidates.shape
    dev = case.candidates.device
    predict = torch.zeros((bs * n,), dtype=torch.int32, device=dev)
    accept_index = torch.full((bs, case.max_depth), -1, dtype=torch.int32, device=dev)
    num_correct = torch.empty((bs,), dtype=torch.int32, device=dev)
    verify_tree_greedy_func(
        predicts=predict,
        accept_index=accept_index,
        accept_token_num=num_correct,
        candidates=case.candidates,
        retrieve_index=case.retrieve_index,
        retrieve_next_token=case.retrieve_next_token,
        retrieve_next_sibling=case.retrieve_next_sibling,
        target_predict=case.target_predict,
        topk=topk,
    )
    accept_lens = num_correct + 1
    _, bonus = spec_ops.commit_outputs(predict, accept_index, accept_lens, seq_lens)
    tgt = src = None
    if kv_move is not None:
        tgt, src = kv_move(accept_index, accept_lens - 1)
    return predict, accept_index, num_correct, accept_lens, bonus, src, tgt


def _try_graph(fn):
    """Capture ``fn`` in a CUDA graph (after a warm-up call); None if it can't be."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except Exception as exc:  # report and skip; the eager number stands
        print(f"  (capture failed: {type(exc).__name__}: {exc})")
        return None


@pytest.mark.parametrize("bs", BATCHES)
@pytest.mark.parametrize("tree", TREES, ids=_id)
@pytest.mark.parametrize(
    "variant", ["ours-eager", "ours-graph", "upstream", "upstream+commit", "upstream-graph"]
)
def test_bench_verify_accept(benchmark, variant, tree, bs):
    kind, n, extra, topk = tree
    if variant == "upstream+commit" and kind != "chain":
        pytest.skip("trees always build the commit list upstream")
    case = cases.make_case(kind, bs, 0, n=n, **extra)
    seq_lens = torch.full((bs,), 100, dtype=torch.int64, device="cuda")
    commit_upstream = kind != "chain" or variant == "upstream+commit"

    # Correctness once: ours == SGLang's CUDA verify and glue on these inputs.
    cases.check_case(case, sglang_fn=verify_tree_greedy_func)
    out = alloc_verify_accept_outputs(bs, n, case.max_depth, "cuda")

    def ours():
        verify_accept_greedy(*case.args(), out=out)

    kv_move = spec_ops.KVMove(case.out_cache_loc, seq_lens, n) if commit_upstream else None

    def upstream():
        upstream_step(case, topk, seq_lens, kv_move)

    if variant.startswith("ours"):
        fn, expected = ours, OURS_LAUNCHES
    else:
        fn = upstream
        expected = sum(UPSTREAM_LAUNCHES.values())
        if commit_upstream:
            expected += sum(UPSTREAM_COMMIT_LAUNCHES.values())
    launches = launches_per_call(fn)
    if variant.endswith("graph"):
        graph = _try_graph(fn)
        if graph is None:
            pytest.skip("not capturable")
        fn = graph.replay
        if variant == "ours-graph":  # a replay into poisoned outputs computes the same
            out.predict.fill_(-5)
            out.commit_dst.fill_(-5)
            graph.replay()
            cases.assert_outputs_equal(out, cases.verify_accept_greedy_ref(*case.args()))

    device_us = device_us_per_call(fn, iters=200, warmup=10)
    print(
        f"\n[{variant} {_id(tree)} bs={bs}] device {device_us:.2f} us/call, "
        f"launches {launches} (expected {expected})"
    )
    benchmark.extra_info.update(device_us=device_us, launches=launches, expected=expected)

    def step():
        fn()
        torch.cuda.synchronize()

    benchmark(step)

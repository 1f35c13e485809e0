"""Greedy SCV acceptance kernel vs its reference vs SGLang's own kernels.

Runs on the CPU through the Triton interpreter (set before triton is imported),
or on CUDA when there is a GPU. SGLang's Triton implementations are the oracle:
``verify_tree_greedy_triton`` (acceptance), the bonus token as the EAGLE worker
computes it (``fill_bonus_tokens_func``, and 0.5.23's fused
``prepare_verify_commit_outputs``) and the KV move NWOR's commit list replaces
(``move_accept_tokens_to_target_kvcache``). Trees come from SGLang's own
builders: the EAGLE topk=1 chain builder, ``sgl_build_tree_kernel_triton`` fed
by a simulated EAGLE draft (topk > 1), and the NGRAM
``reconstruct_indices_from_tree_mask`` fed by BFS tries.

Every SGLang function comes from the installed version through
``tests/sglang_spec_ops.py`` (SGLang 0.5.23 or 0.5.17; the table there says
where each one lives and what stands in where 0.5.17 has none).

The tree generators here are reused by ``tests/gpu/test_verify_accept_gpu.py``
and ``tests/gpu/bench_verify_accept.py``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cpu_shims"))
    import sglang_cpu_test_shims  # noqa: E402

    sglang_cpu_test_shims.install()  # sgl_kernel.speculative stand-in for reconstruct_tree

import pytest  # noqa: E402
import sglang_spec_ops as spec_ops  # noqa: E402  (tests/: SGLang's ops for the installed version)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sglang_nwor_scv.kernels.verify_accept import (  # noqa: E402
    VerifyAcceptOutputs,
    alloc_verify_accept_outputs,
    verify_accept_greedy,
    verify_accept_greedy_ref,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB = 6  # small on purpose: sibling collisions and coincidental matches
REJECT = VOCAB + 100  # a token no candidate ever carries
MODES = ("reject", "accept", "partial", "random")

# ---------------------------------------------------------------------------
# Tree generators (SGLang encodings, built by SGLang's own kernels).
# ---------------------------------------------------------------------------


@dataclass
class VerifyCase:
    candidates: torch.Tensor  # int64 [bs, N]
    retrieve_index: torch.Tensor  # int64 [bs, N]
    retrieve_next_token: torch.Tensor  # int64 [bs, N]
    retrieve_next_sibling: torch.Tensor  # int64 [bs, N]
    target_predict: torch.Tensor  # int64 [bs, N]
    out_cache_loc: torch.Tensor  # int64 [bs*N]
    max_depth: int
    kind: str
    padding: tuple[str, ...]  # per request: "" (tree), "neg" (-1 rows) or "single"

    def args(self):
        return (
            self.candidates,
            self.retrieve_index,
            self.retrieve_next_token,
            self.retrieve_next_sibling,
            self.target_predict,
            self.out_cache_loc,
            self.max_depth,
        )

    @property
    def has_neg_padding(self) -> bool:
        return "neg" in self.padding


def chain_tree(bs: int, n: int, gen: torch.Generator, device=DEVICE):
    """EAGLE topk=1 (N = spec_steps + 1): SGLang's chain builder
    (``spec_ops.build_chain``: 0.5.23's ``build_chain_tree``, 0.5.17's
    ``build_tree_kernel_efficient`` with topk=1)."""
    bonus = torch.randint(0, VOCAB, (bs,), generator=gen).to(device)
    drafts = torch.randint(0, VOCAB, (bs, n - 1), generator=gen).to(device)
    seq_lens = torch.full((bs,), 7, dtype=torch.int64, device=device)
    tokens, ri, nt, ns = spec_ops.build_chain(bonus, drafts, seq_lens)
    return tokens.view(bs, n).clone(), ri.clone(), nt.clone(), ns.clone()


def _distinct_tokens(rows: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``rows`` x ``k`` tokens, distinct within a row (a top-k never repeats)."""
    vocab = max(VOCAB, k)
    return torch.stack([torch.randperm(vocab, generator=gen)[:k] for _ in range(rows)])


def eagle_tree(bs: int, topk: int, steps: int, n: int, gen: torch.Generator, device=DEVICE):
    """EAGLE topk>1: a simulated draft (``select_top_k_tokens`` math on random
    probabilities), ``organize_draft_results``, then SGLang's
    ``sgl_build_tree_kernel_triton``. Probabilities lie in (0, 1), so a child's
    score is below its parent's and the selected set is ancestor-closed, as in
    a real draft."""
    TreeMaskMode = spec_ops.get("TreeMaskMode")
    sgl_build_tree_kernel_triton = spec_ops.get("sgl_build_tree_kernel_triton")

    assert 1 <= n - 1 <= topk + (steps - 1) * topk * topk

    def probs(rows):
        p = torch.rand((rows, topk), generator=gen, dtype=torch.float64) * 0.98 + 0.01
        return p.sort(dim=-1, descending=True).values

    scores = probs(bs)
    score_list = [scores.unsqueeze(1)]
    token_list = [_distinct_tokens(bs, topk, gen)]
    parents_list = [torch.arange(-1, topk).expand(bs, -1)]
    for i in range(1, steps):
        expand = scores.unsqueeze(2) * probs(bs * topk).view(bs, topk, topk)
        scores, cs_index = expand.flatten(1).topk(topk, dim=-1)
        score_list.append(expand)
        token_list.append(_distinct_tokens(bs * topk, topk, gen).view(bs, topk * topk))
        parents_list.append(cs_index + (topk * topk * (i - 1) + topk))
    flat_scores = torch.cat(score_list, dim=1).flatten(1)
    top = flat_scores.topk(n - 1, dim=-1).indices.sort(dim=-1).values
    drafts = torch.gather(torch.cat(token_list, dim=1), 1, top)
    parent_list = torch.cat(parents_list[:-1], dim=1) if steps > 1 else torch.empty((bs, 0), dtype=torch.long)
    bonus = torch.randint(0, VOCAB, (bs, 1), generator=gen)
    candidates = torch.cat([bonus, drafts], dim=1).to(device)

    retrieve = torch.full((3, bs, n), -1, dtype=torch.long, device=device)
    sgl_build_tree_kernel_triton(
        parent_list.contiguous().to(device),
        top.to(device),
        torch.full((bs,), 5, dtype=torch.long, device=device),
        torch.empty((bs * n * n,), dtype=torch.bool, device=device),
        torch.empty((bs * n,), dtype=torch.long, device=device),
        retrieve[0],
        retrieve[1],
        retrieve[2],
        topk,
        steps,
        n,
        TreeMaskMode.QLEN_ONLY,
    )
    return candidates, retrieve[0].clone(), retrieve[1].clone(), retrieve[2].clone()


def ngram_tree(bs: int, n: int, max_branch: int, gen: torch.Generator, device=DEVICE):
    """NGRAM: BFS tries like ``fillResult`` in SGLang's ngram corpus (children get
    distinct tokens; the node budget cuts the BFS; the rest is zero padding:
    token 0 hanging off the root), turned into a tree mask and decoded by
    SGLang's ``reconstruct_indices_from_tree_mask`` (0.5.23: its Triton
    version; 0.5.17: the ``sgl_kernel`` CUDA op its NGRAM worker runs)."""
    reconstruct_indices_from_tree_mask = spec_ops.get("reconstruct_indices_from_tree_mask")

    tokens = torch.zeros((bs, n), dtype=torch.long)
    mask = torch.zeros((bs, n, n), dtype=torch.bool)
    for b in range(bs):
        toks = [int(torch.randint(0, VOCAB, (1,), generator=gen))]
        prevs = [-1]
        frontier = 0
        while frontier < len(toks) and len(toks) < n:
            k = int(torch.randint(0, max_branch + 1, (1,), generator=gen))
            for t in _distinct_tokens(1, k, gen)[0].tolist() if k else []:
                if len(toks) < n:
                    toks.append(t)
                    prevs.append(frontier)
            frontier += 1
        while len(toks) < n:  # zero padding to length, parent 0
            toks.append(0)
            prevs.append(0)
        for i, p in enumerate(prevs):
            if p >= 0:
                mask[b, i] = mask[b, p]
            mask[b, i, i] = True
        tokens[b] = torch.tensor(toks)

    retrieve = torch.full((3, bs, n), -1, dtype=torch.long, device=device)
    reconstruct_indices_from_tree_mask(
        mask.flatten().to(device),
        torch.full((bs,), 5, dtype=torch.long, device=device),
        torch.empty((bs * n,), dtype=torch.long, device=device),
        retrieve[0],
        retrieve[1],
        retrieve[2],
        bs,
        n,
    )
    return tokens.to(device), retrieve[0].clone(), retrieve[1].clone(), retrieve[2].clone()


def _children(nt: list[int], ns: list[int], node: int) -> list[int]:
    out, c = [], nt[node]
    while c != -1 and len(out) < len(nt):
        out.append(c)
        c = ns[c]
    return out


def choose_targets(
    candidates, retrieve_next_token, retrieve_next_sibling, modes, max_depth, gen
) -> torch.Tensor:
    """target_predict giving each request the acceptance its mode asks for:
    "reject" (nothing accepted), "accept" (a root-to-leaf path, capped by
    max_depth), "partial" (a path cut at a random depth) or "random"."""
    bs, n = candidates.shape
    target = torch.randint(0, VOCAB, (bs, n), generator=gen)
    cand = candidates.tolist()
    nt_all, ns_all = retrieve_next_token.tolist(), retrieve_next_sibling.tolist()
    for b, mode in enumerate(modes):
        if mode == "random":
            continue
        if mode == "reject":
            target[b] = REJECT
            continue
        stop = max_depth if mode == "accept" else int(torch.randint(1, max_depth + 1, (1,), generator=gen))
        cur, depth = 0, 1
        while depth < stop:
            kids = _children(nt_all[b], ns_all[b], cur)
            if not kids:
                break
            nxt = kids[int(torch.randint(0, len(kids), (1,), generator=gen))]
            target[b, cur] = cand[b][nxt]
            cur, depth = nxt, depth + 1
        if mode == "partial":
            target[b, cur] = REJECT
    return target.to(candidates.device)


def make_case(
    kind: str,
    bs: int,
    seed: int,
    *,
    n: int = 4,
    topk: int = 2,
    steps: int = 3,
    max_branch: int = 3,
    modes=None,
    padding=None,
    device=DEVICE,
) -> VerifyCase:
    """One verify step. ``kind``: "chain" (N = n, D = N), "eagle" (N = n,
    D = steps + 1) or "ngram" (N = n, D = N). ``padding[b]`` turns request b into
    a "neg" padding row (retrieve rows -1, SGLang's fill value) or a "single"
    1-node tree."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "chain":
        cand, ri, nt, ns = chain_tree(bs, n, gen, device)
        max_depth = n
    elif kind == "eagle":
        cand, ri, nt, ns = eagle_tree(bs, topk, steps, n, gen, device)
        max_depth = steps + 1
    elif kind == "ngram":
        cand, ri, nt, ns = ngram_tree(bs, n, max_branch, gen, device)
        max_depth = n
    else:
        raise ValueError(kind)
    padding = tuple(padding or ("",) * bs)
    for b, pad in enumerate(padding):
        if pad == "neg":
            ri[b], nt[b], ns[b] = -1, -1, -1
        elif pad == "single":
            ri[b] = torch.arange(b * n, (b + 1) * n, device=device)
            nt[b], ns[b] = -1, -1
    if modes is None:
        modes = [MODES[int(torch.randint(0, len(MODES), (1,), generator=gen))] for _ in range(bs)]
    target = choose_targets(cand, nt, ns, modes, max_depth, gen)
    # A verify window: distinct, shuffled KV slots; padded requests get slot 0,
    # SGLang's dummy slot, as a padded graph batch's out_cache_loc does.
    out_cache_loc = (torch.randperm(bs * n * 3, generator=gen)[: bs * n] + 1).to(device)
    for b, pad in enumerate(padding):
        if pad:
            out_cache_loc[b * n : (b + 1) * n] = 0
    return VerifyCase(cand, ri, nt, ns, target, out_cache_loc, max_depth, kind, padding)


# ---------------------------------------------------------------------------
# SGLang oracles.
# ---------------------------------------------------------------------------


def sglang_verify(case: VerifyCase, fn=None):
    """SGLang's greedy verify with eagle_sample's buffer initialisation.

    ``predict`` and ``target_predict`` sit inside guard bands: on a -1 padding
    row SGLang's kernel reads and writes flat index -1, just outside them.
    Returns (predict, accept_index, num_correct_drafts)."""
    if fn is None:
        fn = spec_ops.get("verify_tree_greedy_triton")
    bs, n = case.candidates.shape
    guard, total = 8, bs * n
    dev = case.candidates.device
    predict_buf = torch.zeros(total + 2 * guard, dtype=torch.int32, device=dev)
    target_buf = torch.zeros(total + 2 * guard, dtype=torch.int64, device=dev)
    target_buf[guard : guard + total] = case.target_predict.reshape(-1)
    predict = predict_buf[guard : guard + total]
    accept_index = torch.full((bs, case.max_depth), -1, dtype=torch.int32, device=dev)
    num_correct = torch.full((bs,), -77, dtype=torch.int32, device=dev)  # "empty"
    fn(
        predicts=predict,
        accept_index=accept_index,
        accept_token_num=num_correct,
        candidates=case.candidates,
        retrieve_index=case.retrieve_index,
        retrieve_next_token=case.retrieve_next_token,
        retrieve_next_sibling=case.retrieve_next_sibling,
        target_predict=target_buf[guard : guard + total].view(bs, n),
    )
    return predict.clone(), accept_index, num_correct


def sglang_glue(case: VerifyCase, predict, accept_index, num_correct):
    """What the EAGLE worker's verify computes next, with the installed SGLang's
    ops: the bonus two ways (``fill_bonus_tokens_func``, and the commit outputs:
    0.5.23's fused ``prepare_verify_commit_outputs``, 0.5.17's
    ``seq_lens + accept_lens`` and ``fill_bonus_tokens_func``), and the packed
    (src slot, dst slot) lists of ``move_accept_tokens_to_target_kvcache``."""
    bs, n = case.candidates.shape
    dev = predict.device
    accept_lens = num_correct + 1
    bonus_fill = spec_ops.fill_bonus(predict, accept_index, accept_lens)
    seq_lens = torch.full((bs,), 9, dtype=torch.int64, device=dev)
    new_seq_lens, bonus_commit = spec_ops.commit_outputs(predict, accept_index, accept_lens, seq_lens)
    assert torch.equal(new_seq_lens, seq_lens + accept_lens)
    tgt, src = spec_ops.KVMove(case.out_cache_loc, seq_lens, n)(accept_index, num_correct)
    return bonus_fill, bonus_commit, src, tgt


def assert_outputs_equal(got: VerifyAcceptOutputs, want: VerifyAcceptOutputs, what=""):
    for f in fields(VerifyAcceptOutputs):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}{f.name}: {a.dtype}{list(a.shape)}"
        assert torch.equal(a.cpu(), b.cpu()), f"{what}{f.name}:\n got {a.tolist()}\nwant {b.tolist()}"


def check_case(case: VerifyCase, out: VerifyAcceptOutputs | None = None, sglang_fn=None):
    """kernel == reference == SGLang on every output SGLang has; derived
    outputs == reference; glue outputs == SGLang's glue ops. ``sglang_fn``:
    SGLang's verify (default its Triton ``verify_tree_greedy_triton``)."""
    ref = verify_accept_greedy_ref(*case.args())
    got = verify_accept_greedy(*case.args(), out=out)
    assert_outputs_equal(got, ref, f"[{case.kind} {case.padding}] ")

    predict, accept_index, num_correct = sglang_verify(case, sglang_fn)
    assert torch.equal(got.predict, predict)
    assert torch.equal(got.accept_index, accept_index)
    assert torch.equal(got.num_correct_drafts, num_correct)
    assert torch.equal(got.accept_lens, num_correct + 1)

    bonus_fill, bonus_commit, src_slots, dst_slots = sglang_glue(case, predict, accept_index, num_correct)
    assert torch.equal(got.bonus_tokens, bonus_fill)
    assert torch.equal(got.bonus_tokens, bonus_commit)

    live = got.commit_src >= 0
    assert torch.equal(live, got.commit_dst >= 0)
    assert int(got.num_committed) == int(live.sum())
    if not case.has_neg_padding:
        # The commit list, packed, is SGLang's KV move: same slots, same order.
        m = int(got.num_committed)
        assert m == int((num_correct + 1).sum())
        assert torch.equal(case.out_cache_loc[got.commit_src[live]], src_slots[:m])
        assert torch.equal(got.commit_dst[live], dst_slots[:m])
        assert not src_slots[m:].any() and not dst_slots[m:].any()
    assert not got.workspace.any(), "workspace must return to zero"
    return got


# ---------------------------------------------------------------------------
# Hand-made cases.
# ---------------------------------------------------------------------------


def _manual(cand, ri, nt, ns, tp, max_depth):
    cand, ri, nt, ns, tp = (torch.tensor(x, dtype=torch.int64, device=DEVICE) for x in (cand, ri, nt, ns, tp))
    bs, n = cand.shape
    ocl = torch.arange(1000, 1000 + bs * n, device=DEVICE)
    return VerifyCase(cand, ri, nt, ns, tp, ocl, max_depth, "manual", ("",) * bs)


def test_chain_all_accept_all_reject_partial():
    # chain of 4: root=tok 5, drafts 1 2 3
    ri = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    nt = [[1, 2, 3, -1]] * 3
    ns = [[-1] * 4] * 3
    cand = [[5, 1, 2, 3]] * 3
    tp = [[1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 0, 0]]  # accept all, reject, accept 2
    got = check_case(_manual(cand, ri, nt, ns, tp, 4))
    assert got.num_correct_drafts.tolist() == [3, 0, 2]
    assert got.accept_index.tolist() == [[0, 1, 2, 3], [4, -1, -1, -1], [8, 9, 10, -1]]
    assert got.bonus_tokens.tolist() == [4, 0, 0]
    assert got.predict.tolist() == [1, 2, 3, 4, 0, 0, 0, 0, 1, 2, 0, 0]
    assert got.commit_dst.tolist() == [1000, 1001, 1002, 1003, 1004, -1, -1, -1, 1008, 1009, 1010, -1]
    assert int(got.num_committed) == 4 + 1 + 3


def test_tree_second_sibling_and_duplicate_tokens():
    # root 0 -> children 1 (tok 7), 2 (tok 8), 3 (tok 8); node 3 -> child 4 (tok 9).
    # Target at root is 8: the first 8 in sibling order (node 2) wins, a leaf.
    ri = [[0, 1, 2, 3, 4]]
    nt = [[1, -1, -1, 4, -1]]
    ns = [[-1, 2, 3, -1, -1]]
    cand = [[1, 7, 8, 8, 9]]
    tp = [[8, 0, 9, 9, 0]]
    got = check_case(_manual(cand, ri, nt, ns, tp, 3))
    assert got.accept_index.tolist() == [[0, 2, -1]]
    assert got.bonus_tokens.tolist() == [9]


def test_single_row_no_drafts():
    # speculative_num_steps == 0: draft_token_num == 1, max_depth == 1.
    ri = [[0], [1], [2]]
    nt = ns = [[-1]] * 3
    got = check_case(_manual([[3], [4], [5]], ri, nt, ns, [[11], [12], [13]], 1))
    assert got.accept_lens.tolist() == [1, 1, 1]
    assert got.bonus_tokens.tolist() == [11, 12, 13]


def test_sibling_cycle_stops_after_n_like_sglang_triton():
    # Siblings 1 -> 2 -> 1 -> ... with no match: SGLang's CUDA kernel would spin;
    # its Triton kernel (the oracle here) and ours give up after N nodes.
    ri = [[0, 1, 2], [3, 4, 5]]
    nt = [[1, -1, -1], [1, -1, -1]]
    ns = [[-1, 2, 1], [-1, 2, 1]]
    cand = [[0, 4, 5], [0, 4, 5]]
    got = check_case(_manual(cand, ri, nt, ns, [[9, 0, 0], [5, 1, 2]], 3))
    assert got.accept_index.tolist() == [[0, -1, -1], [3, 5, -1]]


def test_max_depth_caps_acceptance():
    ri = [[0, 1, 2, 3]]
    nt, ns = [[1, 2, 3, -1]], [[-1] * 4]
    got = check_case(_manual([[5, 1, 2, 3]], ri, nt, ns, [[1, 2, 3, 4]], 2))
    assert got.accept_index.tolist() == [[0, 1]]
    assert got.bonus_tokens.tolist() == [2]


@pytest.mark.parametrize("where", ["tail", "middle", "all"])
@pytest.mark.parametrize("style", ["neg", "single"])
def test_padding_rows(style, where):
    bs = 4
    pad = {"tail": (2, 3), "middle": (1,), "all": (0, 1, 2, 3)}[where]
    padding = tuple(style if b in pad else "" for b in range(bs))
    for seed in range(2):
        case = make_case("chain", bs, seed, n=4, modes=["accept"] * bs, padding=padding)
        got = check_case(case)
        for b in pad:
            assert got.num_correct_drafts[b] == 0 and got.accept_lens[b] == 1
            if style == "neg":
                assert (got.accept_index[b] == -1).all()
                assert (got.commit_src[b * 4 : b * 4 + 4] == -1).all()


def test_neg_padding_bonus_reads_last_request():
    # A -1 padding row's bonus is predict[bs*N - 1] (torch's wrap), which here is
    # written by the last request, whose chain is fully accepted.
    case = make_case("chain", 3, 0, n=4, modes=["accept"] * 3, padding=("neg", "", ""))
    case.target_predict[2, 3] = 5  # the last request's bonus, at flat row bs*N - 1
    got = check_case(case)
    assert got.bonus_tokens[0] == got.predict[-1] != 0


def test_empty_batch():
    case = make_case("chain", 1, 0, n=4)
    empty = [x[:0] for x in case.args()[:5]]
    got = verify_accept_greedy(*empty, case.out_cache_loc[:0], 4)
    assert got.accept_index.shape == (0, 4) and int(got.num_committed) == 0


# ---------------------------------------------------------------------------
# Property tests.
# ---------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def verify_cases(draw):
    kind = draw(st.sampled_from(["chain", "eagle", "ngram"]))
    bs = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    modes = draw(st.lists(st.sampled_from(MODES), min_size=bs, max_size=bs))
    pad_style = draw(st.sampled_from(["", "", "neg", "single"]))
    padding = tuple(pad_style if pad_style and draw(st.booleans()) else "" for _ in range(bs))
    kw = dict(modes=modes, padding=padding)
    if kind == "chain":
        return make_case(kind, bs, seed, n=draw(st.integers(2, 8)), **kw)
    if kind == "eagle":
        topk = draw(st.integers(1, 4))
        steps = draw(st.integers(1, 4))
        n = draw(st.integers(2, min(12, topk + (steps - 1) * topk * topk + 1)))
        return make_case(kind, bs, seed, n=n, topk=topk, steps=steps, **kw)
    n, branch = draw(st.integers(1, 9)), draw(st.integers(1, 4))
    return make_case(kind, bs, seed, n=n, max_branch=branch, **kw)


@PROPERTY
@given(verify_cases())
def test_matches_reference_and_sglang(case):
    check_case(case)


def _poisoned(bs, n, d):
    out = alloc_verify_accept_outputs(bs, n, d, DEVICE)
    for f in fields(VerifyAcceptOutputs):
        if f.name != "workspace":
            getattr(out, f.name).fill_(-123456789)
    return out


@PROPERTY
@given(verify_cases())
def test_poisoned_out_is_fully_overwritten(case):
    bs, n = case.candidates.shape
    out = _poisoned(bs, n, case.max_depth)
    got = check_case(case, out=out)
    assert got is out
    # Replaying into the same buffers (what a CUDA graph does) gives the same.
    again = verify_accept_greedy(*case.args(), out=out)
    assert_outputs_equal(again, verify_accept_greedy_ref(*case.args()), "replay ")


def test_block_size_plus_one_shapes():
    # N and D one past a power of two (BLOCK_N = BLOCK_D = 2 * 16).
    check_case(make_case("ngram", 2, 3, n=17, max_branch=2, modes=["accept", "partial"]))
    check_case(make_case("chain", 3, 4, n=17, modes=["accept", "random", "partial"]))


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------


def test_rejects_bad_arguments():
    case = make_case("chain", 2, 0, n=4)
    args = list(case.args())
    with pytest.raises(ValueError, match="retrieve_next_token must be"):
        verify_accept_greedy(*args[:2], args[2][:, :3], *args[3:])
    with pytest.raises(ValueError, match="target_predict must be int64"):
        verify_accept_greedy(*args[:4], args[4].int(), *args[5:])
    with pytest.raises(ValueError, match="out_cache_loc must be"):
        verify_accept_greedy(*args[:5], args[5][:7], args[6])
    with pytest.raises(ValueError, match="max_depth"):
        verify_accept_greedy(*args[:6], 0)
    with pytest.raises(ValueError, match="out.accept_index"):
        verify_accept_greedy(*args, out=alloc_verify_accept_outputs(2, 4, 5, DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        verify_accept_greedy(args[0].t().contiguous().t(), *args[1:])


def test_reference_rejects_out_of_domain():
    case = make_case("chain", 2, 0, n=4)
    ri = case.retrieve_index.clone()
    ri[1, 1] = 0  # node 1 of request 1 claims request 0's row
    tp = case.target_predict.clone()
    tp[1, 0] = case.candidates[1, 1]  # ...and gets accepted
    with pytest.raises(ValueError, match="outside its rows"):
        verify_accept_greedy_ref(
            case.candidates,
            ri,
            case.retrieve_next_token,
            case.retrieve_next_sibling,
            tp,
            case.out_cache_loc,
            case.max_depth,
        )

"""SCV fused acceptance for greedy speculative verification (trees and chains).

One Triton launch does what SGLang 0.5.23 runs as several ops after the verify
forward (argmax not included on either side):

- ``verify_tree_greedy`` (``sglang.kernels.ops.speculative.spec_tree``, called
  from ``eagle_sample`` in ``srt/speculative/eagle_utils.py``): ``predict``,
  ``accept_index``, ``num_correct_drafts``;
- ``accept_lens = num_correct_drafts + 1`` (``eagle_sample``);
- the bonus token (``fill_bonus_tokens`` / ``prepare_verify_commit_outputs`` in
  ``sglang.kernels.ops.speculative.eagle``, run by ``run_eagle_verify`` in
  ``srt/speculative/eagle_worker_common.py``);
- the NWOR commit list: which verify row goes to which KV slot. SGLang copies the
  accepted path to the front of each request's verify window afterwards
  (``move_accept_tokens_to_target_kvcache`` in ``srt/speculative/spec_utils.py``:
  ``fill_front_out_cache_loc_func`` + ``fill_accept_out_cache_loc_func``); NWOR
  writes the staged rows straight to those front slots instead.

Three faces, as everywhere in this package:
``_verify_accept_greedy_kernel`` (Triton), ``verify_accept_greedy`` (wrapper:
check, allocate, launch), ``verify_accept_greedy_ref`` (plain Python; the spec,
the CPU oracle and the fallback).

Tree encoding (SGLang's, shared by EAGLE chains and trees and by NGRAM)
-----------------------------------------------------------------------
Per request ``b`` with ``N`` verify rows, ``[bs, N]`` int64 tensors:
``retrieve_index[b, i]`` is node ``i``'s flat verify row (``b * N + i`` in every
SGLang builder), ``retrieve_next_token[b, i]`` its first child (a node index in
``[0, N)`` or -1), ``retrieve_next_sibling[b, i]`` its next sibling (or -1).
Node 0 is the root (the previous step's bonus token). ``candidates[b, i]`` is
node ``i``'s draft token, ``target_predict[b, i]`` the target's argmax at node
``i``'s verify row. Walk: from the root, at each of at most ``max_depth - 1``
levels, accept the first child (in sibling-list order) whose draft token equals
the target's token at the last accepted node; stop at the first level where none
matches.

Where the result is bit-for-bit SGLang's
----------------------------------------
``predict``, ``accept_index`` and ``num_correct_drafts`` equal what
``verify_tree_greedy_func`` leaves in buffers that ``eagle_sample`` initialises
(``predict`` zeros, ``accept_index`` -1, ``num_correct_drafts`` empty), for every
request that is either

- a **tree row**: the walk only meets nodes whose ``retrieve_index`` lies in the
  request's own rows ``[b*N, (b+1)*N)`` and whose links are -1 or in ``[0, N)``,
  and every sibling list is acyclic (SGLang's CUDA kernel spins forever on a
  cycle; its Triton kernel and this one stop after ``N`` siblings); or
- a **padding row**: ``retrieve_index[b, 0] == -1`` and
  ``retrieve_next_token[b, 0] == -1``, the value SGLang fills unbuilt retrieve
  buffers with (``build_tree_kernel_efficient``'s ``torch.full(..., -1)``,
  ``EagleVerifyInput.create_idle_input``). SGLang's kernel then reads and writes
  ``predict[-1]`` / ``target_predict[-1]`` *outside* the buffers (flat index -1,
  an out-of-bounds access in both its CUDA and Triton kernels); this kernel
  skips that access, so every in-bounds element still matches. A 1-node tree
  (``retrieve_index[b, 0] = b*N``, links -1) is the padding row that needs no
  such care; prefer it when filling CUDA-graph padding.

SGLang itself never verifies padded requests in 0.5.23: the verify logits are
sliced back to the real requests before ``eagle_sample`` (the decode graph
runner keeps ``raw_num_token`` rows; ``ForwardBatch.post_forward_mlp_sync_batch``
drops DP-attention padding), verify inputs are never padded (``pad_batch`` is a
no-op for them), and idle DP ranks run with ``bs == 0``. Padding only appears
once the acceptance itself is replayed from a graph per batch-size bucket, as
SCV does.

Outside those domains the kernel stays memory-safe (out-of-range links end the
walk, out-of-range rows read as "no token") but makes no equality promise.

Derived outputs
---------------
- ``accept_lens = num_correct_drafts + 1``.
- ``bonus_tokens[b] = predict[accept_index[b, accept_lens[b] - 1]]`` with torch's
  negative-index wrap, as both ``predict[accept_index]`` + ``fill_bonus_tokens``
  and ``prepare_verify_commit_outputs`` (``idx + PREDICT_SIZE``) compute it. For a
  tree row that is ``target_predict`` at the last accepted node. For a -1 padding
  row it is ``predict[bs*N - 1]``, another request's element (0 unless the
  batch's last request is a tree row that accepted its node ``N - 1``); the kernel
  re-walks that request's tree to read it without a grid-wide sync.
- NWOR commit list, fixed shape ``[bs * max_depth]`` int64 each: entry
  ``k = b*max_depth + i`` is live when ``i < accept_lens[b]`` and
  ``accept_index[b, i] >= 0``; then ``commit_src[k] = accept_index[b, i]`` (the
  flat verify row holding that node's K/V) and
  ``commit_dst[k] = out_cache_loc[b*N + i]`` (the front of the request's verify
  window, where ``move_accept_tokens_to_target_kvcache`` would have moved it).
  Dead entries are -1 in both. For tree rows the live entries are exactly
  ``i < accept_lens[b]``, and the pairs
  ``(out_cache_loc[commit_src], commit_dst)`` over live entries, in order, are
  SGLang's ``(accept_out_cache_loc, tgt_cache_loc)``. A -1 padding row has no live
  entry (there is no verify row to commit).
- ``num_committed`` int64 ``[1]`` = number of live entries = ``sum(accept_lens)``
  over tree rows; the root/bonus-producing row (node 0, whose K/V the verify pass
  computes) is counted. Computed on device: each program adds its count to an
  accumulator and bumps an arrival counter (both atomics, acq_rel); the last
  program to arrive stores the total and zeroes both, so the two-word
  ``workspace`` must be zero at allocation and stays zero between launches.

CUDA graphs: one launch, no host sync, fixed-shape outputs that are fully
overwritten (pass ``out=`` from ``alloc_verify_accept_outputs`` to keep their
addresses static). ``bs == 0`` launches nothing.

Cost: one program per request walks its tree with scalar loads, like SGLang's
kernels, but in ``while`` loops, so a program visits only the nodes on its path
and their earlier siblings (not ``max_depth * N`` loop steps); the rest is a few
vector ops over ``N`` and ``max_depth``.

Deferred: a sampling variant (target-only tree sampling,
``tree_speculative_sampling_target_only``; chain rejection sampling,
``chain_speculative_sampling_triton``). Sampled steps keep SGLang's path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sglang_nwor_scv.kernels.host_math import next_power_of_2
from sglang_nwor_scv.kernels.launcher import launch as launch_kernel

__all__ = [
    "VerifyAcceptOutputs",
    "alloc_verify_accept_outputs",
    "check_verify_accept_args",
    "launch_verify_accept_greedy",
    "verify_accept_greedy",
    "verify_accept_greedy_ref",
]


@dataclass(frozen=True)
class VerifyAcceptOutputs:
    """Outputs of one greedy acceptance step (``bs`` requests, ``N`` verify rows
    each, ``D = max_depth``).

    Attributes
    ----------
    predict : int32 [bs*N]
        SGLang's ``predict``: target token at accepted nodes' rows, 0 elsewhere.
    accept_index : int32 [bs, D]
        Flat verify rows of the accepted path, root first, -1 padded.
    num_correct_drafts : int32 [bs]
        Accepted draft tokens, root and bonus excluded.
    accept_lens : int32 [bs]
        ``num_correct_drafts + 1``.
    bonus_tokens : int32 [bs]
        ``predict[accept_index[b, accept_lens[b] - 1]]`` (torch index wrap).
    commit_src : int64 [bs*D]
        Verify row to commit, -1 where dead.
    commit_dst : int64 [bs*D]
        KV slot to commit it to, -1 where dead.
    num_committed : int64 [1]
        Number of live commit entries.
    workspace : int64 [2]
        Not an output: accumulator and arrival counter for ``num_committed``.
        Zero at allocation; every completed launch leaves it zero.
    """

    predict: torch.Tensor
    accept_index: torch.Tensor
    num_correct_drafts: torch.Tensor
    accept_lens: torch.Tensor
    bonus_tokens: torch.Tensor
    commit_src: torch.Tensor
    commit_dst: torch.Tensor
    num_committed: torch.Tensor
    workspace: torch.Tensor


_OUTPUT_SPECS = {
    # name: (shape from (bs, N, D), dtype)
    "predict": (lambda bs, n, d: (bs * n,), torch.int32),
    "accept_index": (lambda bs, n, d: (bs, d), torch.int32),
    "num_correct_drafts": (lambda bs, n, d: (bs,), torch.int32),
    "accept_lens": (lambda bs, n, d: (bs,), torch.int32),
    "bonus_tokens": (lambda bs, n, d: (bs,), torch.int32),
    "commit_src": (lambda bs, n, d: (bs * d,), torch.int64),
    "commit_dst": (lambda bs, n, d: (bs * d,), torch.int64),
    "num_committed": (lambda bs, n, d: (1,), torch.int64),
    "workspace": (lambda bs, n, d: (2,), torch.int64),
}


def alloc_verify_accept_outputs(
    batch_size: int, num_draft_tokens: int, max_depth: int, device
) -> VerifyAcceptOutputs:
    """Allocate output buffers for ``verify_accept_greedy(..., out=...)``.

    Outputs are left uninitialised (the kernel overwrites every element); only
    ``workspace`` is zeroed, once, here.
    """
    tensors = {}
    for name, (shape, dtype) in _OUTPUT_SPECS.items():
        size = shape(batch_size, num_draft_tokens, max_depth)
        alloc = torch.zeros if name == "workspace" else torch.empty
        tensors[name] = alloc(size, dtype=dtype, device=device)
    return VerifyAcceptOutputs(**tensors)


# ---------------------------------------------------------------------------
# Reference (plain Python): the spec and the CPU oracle.
# ---------------------------------------------------------------------------


def verify_accept_greedy_ref(
    candidates: torch.Tensor,
    retrieve_index: torch.Tensor,
    retrieve_next_token: torch.Tensor,
    retrieve_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
    out_cache_loc: torch.Tensor,
    max_depth: int,
) -> VerifyAcceptOutputs:
    """Plain-Python reference of :func:`verify_accept_greedy` (same arguments,
    same outputs, on the inputs' device). Loops over requests and levels like
    SGLang's ``VerifyTreeGreedy`` CUDA kernel does.

    Raises
    ------
    ValueError
        On a request outside the domain the module docstring defines (neither a
        tree row nor a padding row), since no SGLang result is defined there.
    """
    _check_inputs(
        candidates,
        retrieve_index,
        retrieve_next_token,
        retrieve_next_sibling,
        target_predict,
        out_cache_loc,
        max_depth,
    )
    bs, n = candidates.shape
    d = max_depth
    total = bs * n
    cand = candidates.tolist()
    ri = retrieve_index.tolist()
    nt = retrieve_next_token.tolist()
    ns = retrieve_next_sibling.tolist()
    tp = target_predict.reshape(-1).tolist()
    ocl = out_cache_loc.tolist()

    def in_row(b: int, flat: int) -> bool:
        return b * n <= flat < (b + 1) * n

    predict = [0] * total
    accept_index = [[-1] * d for _ in range(bs)]
    num_correct = [0] * bs
    for b in range(bs):
        last = ri[b][0]
        accept_index[b][0] = last
        if last == -1:
            if nt[b][0] != -1:
                raise ValueError(f"padding request {b} has retrieve_next_token[b, 0] != -1")
            continue  # padding row: SGLang's predict[-1] write is out of bounds
        if not in_row(b, last):
            raise ValueError(f"request {b}: root row {last} outside its rows")
        cur = 0
        for _level in range(1, d):
            cur = nt[b][cur]
            matched = False
            for _sibling in range(n):  # SGLang's Triton bound; CUDA spins on a cycle
                if cur == -1:
                    break
                if not 0 <= cur < n:
                    raise ValueError(f"request {b}: link {cur} outside [0, {n})")
                if cand[b][cur] == tp[last]:
                    last = ri[b][cur]
                    if not in_row(b, last):
                        raise ValueError(f"request {b}: node {cur} row {last} outside its rows")
                    num_correct[b] += 1
                    accept_index[b][num_correct[b]] = last
                    matched = True
                    break
                cur = ns[b][cur]
            if not matched:
                break
        for flat in accept_index[b][: num_correct[b] + 1]:
            predict[flat] = _to_int32(tp[flat])

    accept_lens = [c + 1 for c in num_correct]
    bonus = []
    for b in range(bs):
        idx = accept_index[b][accept_lens[b] - 1]
        bonus.append(predict[idx + total if idx < 0 else idx])
    commit_src = [-1] * (bs * d)
    commit_dst = [-1] * (bs * d)
    for b in range(bs):
        for i in range(min(accept_lens[b], n)):
            if accept_index[b][i] >= 0:
                commit_src[b * d + i] = accept_index[b][i]
                commit_dst[b * d + i] = ocl[b * n + i]
    num_committed = sum(1 for s in commit_src if s >= 0)

    dev = candidates.device

    def t(x, dtype):
        return torch.tensor(x, dtype=dtype, device=dev)

    return VerifyAcceptOutputs(
        predict=t(predict, torch.int32),
        accept_index=t(accept_index, torch.int32).reshape(bs, d),
        num_correct_drafts=t(num_correct, torch.int32),
        accept_lens=t(accept_lens, torch.int32),
        bonus_tokens=t(bonus, torch.int32),
        commit_src=t(commit_src, torch.int64),
        commit_dst=t(commit_dst, torch.int64),
        num_committed=t([num_committed], torch.int64),
        workspace=torch.zeros(2, dtype=torch.int64, device=dev),
    )


def _to_int32(x: int) -> int:
    """C-style int64 -> int32 truncation (what SGLang's ``predicts[i] = token`` does)."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= (1 << 31) else x


# ---------------------------------------------------------------------------
# Wrapper: check, allocate, launch.
# ---------------------------------------------------------------------------


def verify_accept_greedy(
    candidates: torch.Tensor,
    retrieve_index: torch.Tensor,
    retrieve_next_token: torch.Tensor,
    retrieve_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
    out_cache_loc: torch.Tensor,
    max_depth: int,
    out: VerifyAcceptOutputs | None = None,
) -> VerifyAcceptOutputs:
    """Greedy tree/chain acceptance, bonus token and NWOR commit list in one launch.

    Parameters
    ----------
    candidates : int64 [bs, N]
        Draft token of every verify row (``verify_input.draft_token.reshape(bs, N)``).
    retrieve_index, retrieve_next_token, retrieve_next_sibling : int64 [bs, N]
        SGLang's tree encoding (see the module docstring).
    target_predict : int64 [bs, N]
        Target argmax per verify row.
    out_cache_loc : int32 or int64 [bs*N]
        The verify window's KV slots (``batch.out_cache_loc``).
    max_depth : int
        ``accept_index`` width: ``spec_steps + 1`` for EAGLE, ``N`` for NGRAM
        (``verify_input.max_tree_depth``).
    out : VerifyAcceptOutputs, optional
        Preallocated buffers (``alloc_verify_accept_outputs``); every output is
        overwritten. Keeps addresses static for CUDA-graph replay.

    Returns
    -------
    VerifyAcceptOutputs
        ``out`` if given, else fresh buffers.

    Raises
    ------
    ValueError
        A tensor has the wrong shape, dtype, device or layout.
    """
    _check_inputs(
        candidates,
        retrieve_index,
        retrieve_next_token,
        retrieve_next_sibling,
        target_predict,
        out_cache_loc,
        max_depth,
    )
    bs, n = candidates.shape
    if out is None:
        out = alloc_verify_accept_outputs(bs, n, max_depth, candidates.device)
    else:
        _check_outputs(out, bs, n, max_depth, candidates.device)
    launch_verify_accept_greedy(candidates, retrieve_index, retrieve_next_token,
                                retrieve_next_sibling, target_predict, out_cache_loc, max_depth, out)
    return out


def check_verify_accept_args(candidates, retrieve_index, retrieve_next_token, retrieve_next_sibling,
                             target_predict, out_cache_loc, max_depth, out) -> None:
    """``verify_accept_greedy``'s checks alone (ValueError on a bad argument), for callers
    that validate once per input signature and then call ``launch_verify_accept_greedy``."""
    _check_inputs(candidates, retrieve_index, retrieve_next_token, retrieve_next_sibling,
                  target_predict, out_cache_loc, max_depth)
    bs, n = candidates.shape
    _check_outputs(out, bs, n, max_depth, candidates.device)


def launch_verify_accept_greedy(candidates, retrieve_index, retrieve_next_token, retrieve_next_sibling,
                                target_predict, out_cache_loc, max_depth, out) -> None:
    """The launch alone: arguments as ``verify_accept_greedy``, already checked."""
    bs, n = candidates.shape
    if bs == 0:
        out.num_committed.zero_()
        return
    block_n = next_power_of_2(n)
    block_d = next_power_of_2(max_depth)
    launch_kernel(_verify_accept_greedy_kernel, (bs,), (
        candidates,
        retrieve_index,
        retrieve_next_token,
        retrieve_next_sibling,
        target_predict,
        out_cache_loc,
        out.predict,
        out.accept_index,
        out.num_correct_drafts,
        out.accept_lens,
        out.bonus_tokens,
        out.commit_src,
        out.commit_dst,
        out.num_committed,
        out.workspace,
        bs,
    ), dict(
        N=n,
        D=max_depth,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=1 if block_n * block_d <= 1024 else 4,
    ))


def _check_inputs(
    candidates,
    retrieve_index,
    retrieve_next_token,
    retrieve_next_sibling,
    target_predict,
    out_cache_loc,
    max_depth,
) -> None:
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be [bs, N], got shape {tuple(candidates.shape)}")
    bs, n = candidates.shape
    if n < 1:
        raise ValueError(f"candidates must have N >= 1 verify rows per request, got {n}")
    if not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"max_depth must be an int >= 1, got {max_depth!r}")
    named = {
        "candidates": candidates,
        "retrieve_index": retrieve_index,
        "retrieve_next_token": retrieve_next_token,
        "retrieve_next_sibling": retrieve_next_sibling,
        "target_predict": target_predict,
    }
    for name, x in named.items():
        if tuple(x.shape) != (bs, n):
            raise ValueError(f"{name} must be [bs, N] = [{bs}, {n}], got {tuple(x.shape)}")
        if x.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {x.dtype}")
    if tuple(out_cache_loc.shape) != (bs * n,):
        raise ValueError(f"out_cache_loc must be [bs*N] = [{bs * n}], got {tuple(out_cache_loc.shape)}")
    if out_cache_loc.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"out_cache_loc must be int32 or int64, got {out_cache_loc.dtype}")
    for name, x in {**named, "out_cache_loc": out_cache_loc}.items():
        if x.device != candidates.device:
            raise ValueError(f"{name} is on {x.device}, candidates on {candidates.device}")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _check_outputs(out, bs, n, max_depth, device) -> None:
    if not isinstance(out, VerifyAcceptOutputs):
        raise ValueError(f"out must be a VerifyAcceptOutputs, got {type(out).__name__}")
    for name, (shape, dtype) in _OUTPUT_SPECS.items():
        x = getattr(out, name)
        want = shape(bs, n, max_depth)
        if tuple(x.shape) != want or x.dtype != dtype:
            raise ValueError(f"out.{name} must be {dtype} {list(want)}, got {x.dtype} {list(x.shape)}")
        if x.device != device:
            raise ValueError(f"out.{name} is on {x.device}, inputs on {device}")
        if not x.is_contiguous():
            raise ValueError(f"out.{name} must be contiguous")


# ---------------------------------------------------------------------------
# Triton kernel.
# ---------------------------------------------------------------------------


@triton.jit
def _greedy_walk(
    req,  # int64 scalar: request whose tree to walk
    total,  # int64 scalar: bs * N
    candidates_ptr,  # int64 [bs, N]
    retrieve_index_ptr,  # int64 [bs, N]
    retrieve_next_token_ptr,  # int64 [bs, N]
    retrieve_next_sibling_ptr,  # int64 [bs, N]
    target_predict_ptr,  # int64 [bs, N]
    N: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Walk one request's tree. Returns (num_accepted int32, last accepted flat
    row int64, accepted path int64 [BLOCK_D] root first and -1 padded)."""
    base = req * N
    offs_d = tl.arange(0, BLOCK_D)
    last = tl.load(retrieve_index_ptr + base)
    path = tl.where(offs_d == 0, last, -1)
    num_acc = tl.cast(0, tl.int32)
    cur = tl.cast(0, tl.int64)  # node index (within the request) of the last accepted node
    level = tl.cast(1, tl.int32)
    go = level < D
    while go:  # one tree level per iteration, at most D - 1
        cur = tl.load(retrieve_next_token_ptr + base + cur)
        # Target token at the last accepted row; unread when the walk ends here
        # (a padding row's root is -1) or the row is out of range.
        target = tl.load(
            target_predict_ptr + last,
            mask=(cur != -1) & (last >= 0) & (last < total),
            other=-1,
        )
        state = tl.cast(0, tl.int32)  # 0 searching, 1 matched, -1 no match
        seen = tl.cast(0, tl.int32)
        while state == 0:  # the sibling list, at most N nodes like SGLang's Triton kernel
            valid = (cur >= 0) & (cur < N)
            safe = tl.where(valid, cur, 0)
            draft_row = tl.load(retrieve_index_ptr + base + safe)
            draft_token = tl.load(candidates_ptr + base + safe)
            sibling = tl.load(retrieve_next_sibling_ptr + base + safe)
            match = valid & (draft_token == target)
            num_acc += match.to(tl.int32)
            path = tl.where(match & (offs_d == num_acc), draft_row, path)
            last = tl.where(match, draft_row, last)
            cur = tl.where(match | (~valid), cur, sibling)
            seen += 1
            state = tl.where(match, 1, tl.where(valid & (seen < N), 0, -1))
        level += 1
        go = (state == 1) & (level < D)
    return num_acc, last, path


@triton.jit(do_not_specialize=["bs"])
def _verify_accept_greedy_kernel(
    candidates_ptr,  # int64 [bs, N]
    retrieve_index_ptr,  # int64 [bs, N]
    retrieve_next_token_ptr,  # int64 [bs, N]
    retrieve_next_sibling_ptr,  # int64 [bs, N]
    target_predict_ptr,  # int64 [bs, N]
    out_cache_loc_ptr,  # int32/int64 [bs*N]
    predict_ptr,  # int32 [bs*N]          (out)
    accept_index_ptr,  # int32 [bs, D]        (out)
    num_correct_ptr,  # int32 [bs]           (out)
    accept_lens_ptr,  # int32 [bs]           (out)
    bonus_ptr,  # int32 [bs]           (out)
    commit_src_ptr,  # int64 [bs*D]         (out)
    commit_dst_ptr,  # int64 [bs*D]         (out)
    num_committed_ptr,  # int64 [1]            (out)
    workspace_ptr,  # int64 [2]            (accumulator, arrivals; zero between launches)
    bs,  # int: number of requests (= grid size)
    N: tl.constexpr,  # verify rows per request
    D: tl.constexpr,  # max_depth
    BLOCK_N: tl.constexpr,  # next_power_of_2(N)
    BLOCK_D: tl.constexpr,  # next_power_of_2(D)
):
    pid = tl.program_id(0).to(tl.int64)
    total = bs.to(tl.int64) * N
    num_acc, last, path = _greedy_walk(
        pid,
        total,
        candidates_ptr,
        retrieve_index_ptr,
        retrieve_next_token_ptr,
        retrieve_next_sibling_ptr,
        target_predict_ptr,
        N,
        D,
        BLOCK_D,
    )
    accept_len = num_acc + 1
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    tl.store(accept_index_ptr + pid * D + offs_d, path.to(tl.int32), mask=d_mask)
    tl.store(num_correct_ptr + pid, num_acc)
    tl.store(accept_lens_ptr + pid, accept_len)

    # predict, pulled per row instead of scattered: row j holds the target token
    # iff j is on this request's accepted path, 0 otherwise (SGLang zero-fills it).
    offs_n = tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = pid * N + offs_n
    on_path = tl.max((rows[:, None] == path[None, :]).to(tl.int32), axis=1) > 0
    token = tl.load(target_predict_ptr + rows, mask=n_mask & on_path, other=0)
    tl.store(predict_ptr + rows, token.to(tl.int32), mask=n_mask)

    # bonus = predict[accept_index[b, accept_lens - 1]] with torch's index wrap.
    last_ok = (last >= 0) & (last < total)
    bonus = tl.load(target_predict_ptr + last, mask=last_ok, other=0).to(tl.int32)
    if last < 0:
        # Padding row: torch reads predict[last + bs*N], another request's
        # element. Re-walk that request to know whether it wrote it.
        wrapped = last + total
        owner = tl.where(wrapped >= 0, wrapped // N, 0)
        _o_acc, _o_last, o_path = _greedy_walk(
            owner,
            total,
            candidates_ptr,
            retrieve_index_ptr,
            retrieve_next_token_ptr,
            retrieve_next_sibling_ptr,
            target_predict_ptr,
            N,
            D,
            BLOCK_D,
        )
        written = (tl.max((o_path == wrapped).to(tl.int32), axis=0) > 0) & (wrapped >= 0)
        bonus = tl.load(target_predict_ptr + wrapped, mask=written, other=0).to(tl.int32)
    tl.store(bonus_ptr + pid, bonus)

    # NWOR commit list: accepted node i's row -> slot i of the verify window.
    live = d_mask & (offs_d < accept_len) & (offs_d < N) & (path >= 0)
    dst = tl.load(out_cache_loc_ptr + pid * N + offs_d, mask=live, other=-1).to(tl.int64)
    tl.store(commit_src_ptr + pid * D + offs_d, tl.where(live, path, -1), mask=d_mask)
    tl.store(commit_dst_ptr + pid * D + offs_d, dst, mask=d_mask)

    # num_committed: accumulate, count arrivals; the last arrival publishes the
    # total and returns the workspace to zero for the next launch.
    tl.atomic_add(workspace_ptr, tl.sum(live.to(tl.int64), axis=0))
    arrived = tl.atomic_add(workspace_ptr + 1, 1)
    if arrived == bs - 1:
        tl.store(num_committed_ptr, tl.atomic_xchg(workspace_ptr, 0))
        tl.atomic_xchg(workspace_ptr + 1, 0)

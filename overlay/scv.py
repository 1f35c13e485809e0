"""SCV: upstream's greedy verification replaced by the fused acceptance kernel.

``verify_greedy`` has ``verify_tree_greedy_func``'s contract: it fills upstream's
``predicts`` / ``accept_index`` / ``accept_token_num`` buffers in place, bit for bit
(kernels/verify_accept.py proves it against SGLang's own kernels), and in the same
launch computes the NWOR commit list, which it hangs on the ``accept_index`` tensor
for the commit site of this very step. Anything the kernel does not take (other
dtypes, devices, shapes) goes back to upstream for that step, without a sync.

Graph mode: one fused kernel is already one launch; a CUDA graph around a single
launch saves nothing measurable (see docs/status.md), so ``graph`` currently runs
the same fused launch; capturing it together with the NWOR commit is the next step.
"""

from __future__ import annotations

import logging

import torch

from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")

COMMIT_ATTR = "_nwor_scv_commit"  # (commit_src, commit_window_pos) on accept_index
_positions: dict = {}
_buffers: dict = {}
_counts = {"fused": 0, "fallback": 0}
_CACHE_LIMIT = 64  # shapes (bs buckets x N x depth) kept per process


def _cached(store: dict, key, make):
    """Per-shape buffers, made once; the store is reset past _CACHE_LIMIT shapes."""
    value = store.get(key)
    if value is None:
        if len(store) > _CACHE_LIMIT:
            store.clear()
        value = store[key] = make()
    return value


def _window_positions(n: int, device) -> torch.Tensor:
    """arange(n) on ``device``, cached: the kernel's commit_dst becomes window positions."""
    return _cached(_positions, (n, str(device)),
                   lambda: torch.arange(n, dtype=torch.int64, device=device))


def _extra_outputs(bs: int, n: int, depth: int, device):
    """The kernel's own outputs for this shape, allocated once and reused: the kernel
    overwrites them every launch and leaves its workspace zeroed; the commit list is
    read by this step's commit, which the same stream orders before the next verify."""
    from sglang_nwor_scv.kernels.verify_accept import alloc_verify_accept_outputs

    return _cached(_buffers, (bs, n, depth, str(device)),
                   lambda: alloc_verify_accept_outputs(bs, n, depth, device))


def try_verify_greedy(predicts, accept_index, accept_token_num, candidates,
                      retrieve_index, retrieve_next_token, retrieve_next_sibling,
                      target_predict, topk=-1):
    """Run the fused kernel in place of ``verify_tree_greedy_func``.

    Returns upstream's ``(predicts, accept_index, accept_token_num)`` when it ran,
    None when the caller must run upstream's verify for this step.
    """
    if not modes().scv_on:
        return None
    from sglang_nwor_scv.kernels.verify_accept import VerifyAcceptOutputs, verify_accept_greedy

    try:
        bs, n = candidates.shape
        depth = accept_index.shape[1]
        extra = _extra_outputs(bs, n, depth, candidates.device)
        out = VerifyAcceptOutputs(
            predict=predicts, accept_index=accept_index, num_correct_drafts=accept_token_num,
            accept_lens=extra.accept_lens, bonus_tokens=extra.bonus_tokens,
            commit_src=extra.commit_src, commit_dst=extra.commit_dst,
            num_committed=extra.num_committed, workspace=extra.workspace)
        verify_accept_greedy(candidates, retrieve_index, retrieve_next_token,
                             retrieve_next_sibling, target_predict,
                             _window_positions(bs * n, candidates.device), depth, out=out)
    except ValueError as e:  # shapes/dtypes the kernel does not take: upstream this step
        _counts["fallback"] += 1
        if _counts["fallback"] == 1:
            logger.warning("SCV: falling back to upstream verify (%s)", e)
        return None
    setattr(accept_index, COMMIT_ATTR, (out.commit_src, out.commit_dst))
    _counts["fused"] += 1
    return predicts, accept_index, accept_token_num


def commit_list_from_scv(accept_index, out_cache_loc):
    """The commit list the fused kernel made for this ``accept_index``, with window
    positions mapped to KV slots; None when this step did not run the kernel."""
    made = getattr(accept_index, COMMIT_ATTR, None)
    if made is None:
        return None
    delattr(accept_index, COMMIT_ATTR)
    from sglang_nwor_scv.kernels.commit_list import slots_from_positions

    src, pos = made
    return src, slots_from_positions(pos, out_cache_loc)


def take_counts() -> dict:
    """Fused/fallback steps since the last call (host counters; no device work)."""
    out = dict(_counts)
    _counts["fused"] = _counts["fallback"] = 0
    return out

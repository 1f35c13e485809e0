"""SCV: upstream's greedy verification replaced by the fused acceptance kernel.

``try_verify_greedy`` has ``verify_tree_greedy_func``'s contract: it fills upstream's
``predicts`` / ``accept_index`` / ``accept_token_num`` buffers in place, bit for bit
(kernels/verify_accept.py proves it against SGLang's own kernels), and in the same
launch computes the NWOR commit list (verify rows and window positions). The list is
handed to this very step's commit through ``take_commit_list``, matched by the
``accept_index`` tensor it belongs to (a step that replaced ``accept_index``, e.g.
``SGLANG_SIMULATE_ACC_LEN``, gets no list and the commit builds its own). Anything the
kernel does not take (other dtypes, devices, shapes) goes back to upstream for that
step, without a sync.

Host cost per step: the input checks run once per input signature (shape, dtypes,
layout), the kernel's own outputs are allocated once per shape, and the launch is the
only device work. ``graph`` mode currently runs the same launch (a CUDA graph around
one kernel saves nothing; see docs/status.md).
"""

from __future__ import annotations

import logging
import weakref

import torch

from sglang_nwor_scv import kernel_guard
from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")

_CACHE_LIMIT = 64  # shapes (bs buckets x N x depth) kept per process
_outputs: dict = {}  # (bs, N, depth, device) -> (VerifyAcceptOutputs, window positions)
_checked: set = set()  # input signatures already validated
_counts = {"fused": 0, "fallback": 0}
_handoff = {"accept_index": None, "list": None}  # this step's commit list, for the commit


def _outputs_for(bs: int, n: int, depth: int, device):
    """The kernel's own outputs for this shape, allocated once and reused: the kernel
    overwrites them every launch and leaves its workspace zeroed; the commit list is
    read by this step's commit, which the same stream orders before the next verify.
    ``positions`` (arange) makes the kernel's commit_dst window positions."""
    key = (bs, n, depth, device)
    hit = _outputs.get(key)
    if hit is None:
        from sglang_nwor_scv.kernels.verify_accept import alloc_verify_accept_outputs

        if len(_outputs) > _CACHE_LIMIT:
            _outputs.clear()
        hit = _outputs[key] = (alloc_verify_accept_outputs(bs, n, depth, device),
                               torch.arange(bs * n, dtype=torch.int64, device=device))
    return hit


def try_verify_greedy(predicts, accept_index, accept_token_num, candidates,
                      retrieve_index, retrieve_next_token, retrieve_next_sibling,
                      target_predict, topk=-1):
    """Run the fused kernel in place of ``verify_tree_greedy_func``.

    Returns upstream's ``(predicts, accept_index, accept_token_num)`` when it ran,
    None when the caller must run upstream's verify for this step.
    """
    if not modes().scv_on:
        return None
    if not kernel_guard.usable("SCV acceptance"):
        _counts["fallback"] += 1
        return None
    from sglang_nwor_scv.kernels import verify_accept as va

    try:
        bs, n = candidates.shape
        depth = accept_index.shape[1]
        signature = (bs, n, depth, candidates.device, candidates.dtype, retrieve_index.dtype,
                     retrieve_next_token.dtype, retrieve_next_sibling.dtype, target_predict.dtype,
                     predicts.dtype, accept_index.dtype, accept_token_num.dtype,
                     candidates.is_contiguous(), retrieve_index.is_contiguous(),
                     retrieve_next_token.is_contiguous(), retrieve_next_sibling.is_contiguous(),
                     target_predict.is_contiguous(), predicts.is_contiguous(),
                     accept_index.is_contiguous(), accept_token_num.is_contiguous())
        extra, positions = _outputs_for(bs, n, depth, candidates.device)
        out = va.VerifyAcceptOutputs(
            predict=predicts, accept_index=accept_index, num_correct_drafts=accept_token_num,
            accept_lens=extra.accept_lens, bonus_tokens=extra.bonus_tokens,
            commit_src=extra.commit_src, commit_dst=extra.commit_dst,
            num_committed=extra.num_committed, workspace=extra.workspace)
        if signature not in _checked:  # once per signature: the checks cost host time
            va.check_verify_accept_args(candidates, retrieve_index, retrieve_next_token,
                                        retrieve_next_sibling, target_predict, positions, depth, out)
            _checked.add(signature)
    except ValueError as e:  # shapes/dtypes the kernel does not take: upstream this step
        _counts["fallback"] += 1
        if _counts["fallback"] == 1:
            logger.warning("SCV: falling back to upstream verify (%s)", e)
        return None
    try:
        va.launch_verify_accept_greedy(candidates, retrieve_index, retrieve_next_token,
                                       retrieve_next_sibling, target_predict, positions, depth, out)
    except Exception as e:  # the launch failed before writing anything: upstream verifies
        kernel_guard.record_failure("SCV acceptance", e, "upstream's verify runs")
        _counts["fallback"] += 1
        return None
    _handoff["accept_index"] = weakref.ref(accept_index)
    _handoff["list"] = (out.commit_src, out.commit_dst)
    _counts["fused"] += 1
    return predicts, accept_index, accept_token_num


def take_commit_list(accept_index):
    """``(verify rows, window positions)`` the fused kernel made for this
    ``accept_index``; None when this step did not run the kernel."""
    ref, made = _handoff["accept_index"], _handoff["list"]
    _handoff["accept_index"] = _handoff["list"] = None
    if ref is None or ref() is not accept_index:
        return None
    return made


def take_counts() -> dict:
    """Fused/fallback steps since the last call (host counters; no device work)."""
    out = dict(_counts)
    _counts["fused"] = _counts["fallback"] = 0
    return out

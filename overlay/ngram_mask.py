"""NGRAM's full verify mask built by one kernel instead of upstream's per-request loop.

Upstream's ``NGRAMWorker._prepare_for_speculative_decoding`` builds the "full" custom
mask (prefix ones + draft tree, per request) with about 5 launches and one small
host-to-device copy per request, every verify step (kernels/ngram_mask.py). Around that
method this site turns the module's ``USE_FULL_MASK`` off for the call, so upstream
leaves the device tree mask it already built as ``custom_mask`` and skips both loops,
then puts the full mask, built in one launch from that device tree mask and
``seq_lens``, in its place: the same tensor, bit for bit. Only where upstream itself
builds the full mask (``USE_FULL_MASK`` on, not a CPU build); a grammar batch keeps
upstream's path (its host mask is read later).

Both ways in run the same functions: the plugin's AROUND hook
(``ngram_verify_inputs.prepare_with_full_mask_kernel``) and patch 0007's call site inside
that method (``wanted`` then ``full_mask``). With ``SGLANG_SCV_NGRAM_DRAFT`` (on by default
since H100 runs 49-50) one kernel also writes the tree links and the cache locations with
the mask (``draft_wanted`` then ``draft_inputs``, kernels/ngram_draft.py), inside the step
``ngram_verify_inputs.prepare`` builds. On by default (``SGLANG_SCV_NGRAM_MASK``): the
kernel's engine run under CUDA graphs on an H200 gave identical outputs
(reports/gpu/2026-12-05-h200-run24-engine-kernels), and upstream's loop is most of NGRAM's
draft time at bs >= 32 (run 23).
"""

from __future__ import annotations

import logging

from sglang_nwor_scv import kernel_guard
from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")
_counts = {"kernel": 0, "draft": 0}
# upstream's names for the reconstruct op: 0.5.17 calls sgl_kernel's, 0.5.23 its wrapper
RECONSTRUCT = ("reconstruct_indices_from_tree_mask", "reconstruct_indices_from_tree_mask_func")


def wanted(batch) -> bool:
    """Build this batch's full mask with the kernel? (switched on and no bad switch: a
    patched tree asks here even when the plugin stepped aside; a grammar batch keeps
    upstream's path: its host mask is read later)."""
    m = modes()
    return m.ngram_mask and m.refusal is None and not getattr(batch, "has_grammar", False)


def full_mask(tree_mask, batch, num_draft: int):
    """The full verify mask of ``batch`` from the device draft-tree mask, one launch. If
    the kernel ever fails (a Triton build the CI never saw, say), this step and every later
    one get upstream's loop (``full_tree_mask_ref``, the same tensor), with one log line."""
    from sglang_nwor_scv.kernels.ngram_mask import full_tree_mask, full_tree_mask_ref

    bs = len(batch.reqs)
    if kernel_guard.usable("NGRAM mask"):
        try:
            out = full_tree_mask(tree_mask, batch.seq_lens, batch.seq_lens_cpu, num_draft, bs)
            _counts["kernel"] += 1
            return out
        except Exception as e:  # never take the server down for an optimisation
            kernel_guard.record_failure("NGRAM mask", e, "upstream's loop builds the mask")
    return full_tree_mask_ref(tree_mask[: bs * num_draft * num_draft], batch.seq_lens_cpu[:bs],
                              num_draft)


def draft_wanted(batch) -> bool:
    """Build this batch's tree links, full mask and cache locations with one kernel
    (``SGLANG_SCV_NGRAM_DRAFT``)? Only where the mask kernel is wanted too."""
    return modes().ngram_draft and wanted(batch) and kernel_guard.usable("NGRAM draft")


def draft_inputs(tree_mask, batch, positions, retrieve_index, next_token, next_sibling, bs: int,
                 num_draft: int):
    """In place of upstream's reconstruct op, mask and cache locations, where ``draft_wanted``
    said yes: writes the four tree-link buffers and returns ``(full mask, out_cache_loc)``
    from one launch, or None when the kernel failed (then ``draft_wanted`` says no for good,
    one log line): the caller runs upstream's ops for this step."""
    from sglang_nwor_scv.kernels.ngram_draft import ngram_draft

    try:
        out = ngram_draft(tree_mask, batch.seq_lens, batch.seq_lens_cpu, batch.req_pool_indices,
                          batch.req_to_token_pool.req_to_token, positions, retrieve_index, next_token,
                          next_sibling, bs, num_draft)
    except Exception as e:  # never take the server down for an optimisation
        kernel_guard.record_failure("NGRAM draft", e, "upstream's ops build the verify inputs")
        return None
    _counts["draft"] += 1
    _counts["kernel"] += 1  # the full mask came from a kernel too
    return out


def take_count(kind: str = "kernel") -> int:
    n, _counts[kind] = _counts[kind], 0
    return n

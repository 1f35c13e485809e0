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

Both ways in run the same two functions: the plugin's AROUND hook below, and patch 0007's
call site inside that method (``wanted`` then ``full_mask``). On by default
(``SGLANG_SCV_NGRAM_MASK``): the kernel's engine run under CUDA graphs on an H200 gave
identical outputs (reports/gpu/2026-12-05-h200-run24-engine-kernels), and upstream's loop
is most of NGRAM's draft time at bs >= 32 (run 23).
"""

from __future__ import annotations

import logging
import sys

from sglang_nwor_scv import kernel_guard
from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")
_counts = {"kernel": 0}


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
            out = full_tree_mask(tree_mask, batch.seq_lens, batch.seq_lens_cpu[:bs], num_draft)
            _counts["kernel"] += 1
            return out
        except Exception as e:  # never take the server down for an optimisation
            kernel_guard.record_failure("NGRAM mask", e, "upstream's loop builds the mask")
    return full_tree_mask_ref(tree_mask[: bs * num_draft * num_draft], batch.seq_lens_cpu[:bs],
                              num_draft)


def prepare_with_full_mask_kernel(original, worker, batch, *args, **kwargs):
    """AROUND ``NGRAMWorker._prepare_for_speculative_decoding``."""
    module = sys.modules[type(worker).__module__]
    if not (getattr(module, "USE_FULL_MASK", False) and not getattr(module, "_is_cpu", True)
            and batch.forward_mode.is_decode() and wanted(batch)):  # upstream converts decode only
        return original(worker, batch, *args, **kwargs)
    module.USE_FULL_MASK = False  # one scheduler thread: restored before anyone else reads it
    try:
        out = original(worker, batch, *args, **kwargs)
    finally:
        module.USE_FULL_MASK = True
    if batch.forward_mode.is_target_verify():
        spec = batch.spec_info
        spec.custom_mask = full_mask(spec.custom_mask, batch, spec.draft_token_num)
    return out


def take_count() -> int:
    n, _counts["kernel"] = _counts["kernel"], 0
    return n

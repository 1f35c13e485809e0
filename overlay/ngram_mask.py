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

Hooked only with ``SGLANG_SCV_NGRAM_MASK=1`` (sglang_nwor_scv.hooks), until a GPU run
has checked it against upstream in the engine (the kernel is checked against upstream's
loop on the CPU).
"""

from __future__ import annotations

import sys

_counts = {"kernel": 0}


def prepare_with_full_mask_kernel(original, worker, batch, *args, **kwargs):
    """AROUND ``NGRAMWorker._prepare_for_speculative_decoding``."""
    module = sys.modules[type(worker).__module__]
    wanted = (getattr(module, "USE_FULL_MASK", False)
              and not getattr(module, "_is_cpu", True) and not getattr(batch, "has_grammar", False))
    if not wanted:
        return original(worker, batch, *args, **kwargs)
    module.USE_FULL_MASK = False  # one scheduler thread: restored before anyone else reads it
    try:
        out = original(worker, batch, *args, **kwargs)
    finally:
        module.USE_FULL_MASK = True
    if batch.forward_mode.is_target_verify():
        from sglang_nwor_scv.kernels.ngram_mask import full_tree_mask

        spec = batch.spec_info
        bs = len(batch.reqs)
        spec.custom_mask = full_tree_mask(spec.custom_mask, batch.seq_lens, batch.seq_lens_cpu[:bs],
                                          spec.draft_token_num)
        _counts["kernel"] += 1
    return out


def take_count() -> int:
    n, _counts["kernel"] = _counts["kernel"], 0
    return n

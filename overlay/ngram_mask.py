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

Both ways in run the same functions: the plugin's AROUND hook below, and patch 0007's
call site inside that method (``wanted`` then ``full_mask``). With ``SGLANG_SCV_NGRAM_DRAFT``
(on by default since H100 runs 49-50) one kernel also writes the tree links and the cache
locations with the mask (``draft_wanted`` then ``draft_inputs``, kernels/ngram_draft.py):
the patch calls them in place of upstream's reconstruct op, the hook through ``_FusedDraft``. On by default
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
_counts = {"kernel": 0, "draft": 0}
# upstream's names for the reconstruct op: 0.5.17 calls sgl_kernel's, 0.5.23 its wrapper
_RECONSTRUCT = ("reconstruct_indices_from_tree_mask", "reconstruct_indices_from_tree_mask_func")


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
    """In place of upstream's reconstruct op, where ``draft_wanted`` said yes: writes the four
    tree-link buffers and returns ``(full mask, out_cache_loc)`` from one launch, or None when
    the kernel failed (then ``draft_wanted`` says no for good, one log line): the caller runs
    upstream's ops for this step and every later one."""
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


def prepare_with_full_mask_kernel(original, worker, batch, *args, **kwargs):
    """AROUND ``NGRAMWorker._prepare_for_speculative_decoding``."""
    module = sys.modules[type(worker).__module__]
    if not (getattr(module, "USE_FULL_MASK", False) and not getattr(module, "_is_cpu", True)
            and batch.forward_mode.is_decode() and wanted(batch)):  # upstream converts decode only
        return original(worker, batch, *args, **kwargs)
    fused = _FusedDraft(module, batch) if draft_wanted(batch) else None
    module.USE_FULL_MASK = False  # one scheduler thread: restored before anyone else reads it
    try:
        if fused is not None:
            fused.bind()
        out = original(worker, batch, *args, **kwargs)
    finally:
        module.USE_FULL_MASK = True
        if fused is not None:
            fused.unbind()
    if batch.forward_mode.is_target_verify():
        spec = batch.spec_info
        if fused is not None and fused.mask is not None:
            spec.custom_mask = fused.mask
        else:
            spec.custom_mask = full_mask(spec.custom_mask, batch, spec.draft_token_num)
    return out


class _FusedDraft:
    """``SGLANG_SCV_NGRAM_DRAFT``: for one call of upstream's method, its reconstruct op and
    ``assign_extend_cache_locs_func`` (module-level names) are rebound. The first launches
    kernels/ngram_draft.py, which also writes the full mask and the cache locations; the
    second hands those locations back when asked for this batch's. Anything else, or a
    kernel that fails (then for good, one log line), runs upstream's functions."""

    def __init__(self, module, batch):
        self.module, self.batch = module, batch
        name = next((n for n in _RECONSTRUCT if hasattr(module, n)), None)
        self.name = name if hasattr(module, "assign_extend_cache_locs_func") else None
        self.mask = self.locs = None

    def bind(self) -> None:
        if self.name is not None:
            self.reconstruct = getattr(self.module, self.name)
            self.cache_locs = self.module.assign_extend_cache_locs_func
            setattr(self.module, self.name, self._reconstruct)
            self.module.assign_extend_cache_locs_func = self._cache_locs

    def unbind(self) -> None:
        if self.name is not None and getattr(self.module, self.name) == self._reconstruct:
            setattr(self.module, self.name, self.reconstruct)
            self.module.assign_extend_cache_locs_func = self.cache_locs

    def _reconstruct(self, *args, **kwargs):
        # upstream's call: (tree_mask, seq_lens, positions, retrieve_index, next_token,
        # next_sibling, bs, num_draft), positional in 0.5.17 and 0.5.23
        batch = self.batch
        if not kwargs and len(args) == 8 and args[1] is batch.seq_lens and args[6] == len(batch.reqs):
            tree_mask, _, positions, index, next_token, next_sibling, bs, num_draft = args
            drafted = draft_inputs(tree_mask, batch, positions, index, next_token, next_sibling, bs,
                                   num_draft)
            if drafted is not None:
                self.mask, self.locs = drafted
                return None
        return self.reconstruct(*args, **kwargs)

    def _cache_locs(self, *args, **kwargs):
        batch = self.batch
        if (self.locs is not None and not args and kwargs.get("req_pool_indices") is batch.req_pool_indices
                and kwargs.get("start_offset") is batch.seq_lens
                and kwargs.get("req_to_token") is batch.req_to_token_pool.req_to_token
                and kwargs.get("batch_size") == len(batch.reqs)):
            return self.locs
        return self.cache_locs(*args, **kwargs)


def take_count(kind: str = "kernel") -> int:
    n, _counts[kind] = _counts[kind], 0
    return n

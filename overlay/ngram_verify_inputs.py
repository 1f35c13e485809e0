"""NGRAM's verify inputs for one step: drafts and tree mask in one upload, the rest in one launch.

After the corpus lookup, upstream's ``NGRAMWorker._prepare_for_speculative_decoding``
dispatches, every verify step and before the verify launch: two pageable host-to-device
copies (the tree mask, int64 from 0.5.23's corpus, then takes PyTorch's cross-dtype path:
a device temporary, a copy eight times larger and a cast kernel; then the drafts), the
reconstruct op, the full mask and ``assign_extend_cache_locs`` after a ``seq_lens + N`` add.
In the engine each dispatch costs about 50 µs of host time while the GPU waits (H100 run
70: any dispatch that follows scheduler Python costs about 4x a back-to-back one). The
draft kernel (``ngram_mask.draft_inputs``) already folds the reconstruct, the mask and the
cache locations into one launch; the plugin used to reach it by rebinding upstream's
module functions for one call, so both copies and, on the plugin's way in, the add still ran.

Where the draft kernel is wanted, ``prepare`` builds the step's inputs itself, the same
tensors upstream's method leaves on the batch:

- ``DraftUpload``: the drafts (int64) and the tree mask (bool; cast on the host, nonzero
  is True both ways) are written into one pinned staging tensor and land in one per-worker
  device buffer with one copy. The staging tensor comes from PyTorch's pinned-memory cache,
  which hands a block out again only after the copy that read it has run.
- the draft kernel: tree links into the worker's buffers, the full mask, the cache
  locations (no add).

A grammar batch, a switch off, a bad switch or an upstream module without the names used
here keep upstream's method; a draft kernel that fails runs upstream's three ops for that
step (the draft kernel is then off for good, one log line). Both ways in call ``prepare``:
the plugin's hook on that method (``ngram_mask.prepare_with_full_mask_kernel``) and patch
0007's early return.
"""

from __future__ import annotations

import logging
import sys
import weakref

import numpy as np
import torch

from sglang_nwor_scv import ngram_mask

logger = logging.getLogger("sglang_nwor_scv")

# what prepare reads from upstream's ngram_worker module (0.5.17 and 0.5.23 alike)
_NAMES = ("ForwardMode", "NgramVerifyInput", "prepare_mamba_track_for_verify",
          "assign_extend_cache_locs_func")
_usable_modules: dict[str, bool] = {}
_uploads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # worker -> DraftUpload


class DraftUpload:
    """One device byte buffer per worker: ``bs * n`` int64 drafts, then the ``bs * n * n``
    bool tree mask, filled from pinned host memory by one copy."""

    def __init__(self, max_bs: int, n: int, device):
        self.n = n
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.buffer = torch.empty(max_bs * n * (8 + n), dtype=torch.uint8, device=self.device)
        self._views: dict[int, tuple] = {}

    def _layout(self, bs: int):
        """(drafts view, mask view, drafts bytes, total bytes) of batch size ``bs``."""
        hit = self._views.get(bs)
        if hit is None:
            tokens = bs * self.n
            d, total = 8 * tokens, 8 * tokens + tokens * self.n
            hit = self._views[bs] = (self.buffer[:d].view(torch.int64), self.buffer[d:total].view(torch.bool),
                                     d, total)
        return hit

    def upload(self, bs: int, drafts: np.ndarray, mask: np.ndarray):
        """``(drafts, tree_mask)`` on the device, as upstream's two ``copy_`` calls leave them."""
        drafts_dev, mask_dev, d, total = self._layout(bs)
        staging = torch.empty(total, dtype=torch.uint8, pin_memory=self.pinned)
        host = staging.numpy()
        np.copyto(host[:d].view(np.int64), drafts.reshape(-1), casting="unsafe")
        np.copyto(host[d:].view(np.bool_), mask.reshape(-1), casting="unsafe")
        self.buffer[:total].copy_(staging, non_blocking=True)
        return drafts_dev, mask_dev


def _upload_for(worker) -> DraftUpload:
    up = _uploads.get(worker)
    if up is None:
        up = _uploads[worker] = DraftUpload(len(worker.draft_tokens_batch) - 1, worker.draft_token_num,
                                            worker.tree_mask.device)
    return up


def _module_usable(module) -> bool:
    ok = _usable_modules.get(module.__name__)
    if ok is None:
        ok = _usable_modules[module.__name__] = (
            all(hasattr(module, n) for n in _NAMES)
            and any(hasattr(module, n) for n in ngram_mask.RECONSTRUCT))
        if not ok:
            logger.warning("NGRAM draft: %s lacks the names it uses; upstream's method runs", module.__name__)
    return ok


def prepare(worker, batch) -> bool:
    """Upstream's ``_prepare_for_speculative_decoding`` for a decode batch, with one upload and
    one launch. False (nothing done): the caller runs upstream's method."""
    if not (batch.forward_mode.is_decode() and ngram_mask.draft_wanted(batch)):
        return False
    module = sys.modules[type(worker).__module__]
    if not _module_usable(module):
        return False
    bs, n = len(batch.reqs), worker.draft_token_num
    positions = worker.positions_batch[bs]
    retrieve_index = worker.retrieve_indexes_batch[bs]
    next_token = worker.retrieve_next_token_batch[bs]
    next_sibling = worker.retrieve_next_sibling_batch[bs]

    req_drafts, mask = worker._prepare_draft_tokens(batch)
    draft_tokens, tree_mask = _upload_for(worker).upload(bs, req_drafts, mask)
    worker.grammar_tree_host = None  # draft_wanted said no to grammar batches

    drafted = ngram_mask.draft_inputs(tree_mask, batch, positions, retrieve_index, next_token,
                                      next_sibling, bs, n)
    if drafted is not None:
        full, locs = drafted
    else:  # the kernel failed: upstream's ops, this step only
        reconstruct = next(getattr(module, k) for k in ngram_mask.RECONSTRUCT if hasattr(module, k))
        reconstruct(tree_mask, batch.seq_lens, positions, retrieve_index, next_token, next_sibling, bs, n)
        full = ngram_mask.full_mask(tree_mask, batch, n)
        locs = module.assign_extend_cache_locs_func(
            req_pool_indices=batch.req_pool_indices, req_to_token=batch.req_to_token_pool.req_to_token,
            start_offset=batch.seq_lens, end_offset=batch.seq_lens + n, batch_size=bs,
            draft_token_num=n, device=worker.device)

    batch.forward_mode = module.ForwardMode.TARGET_VERIFY
    batch.input_ids = draft_tokens
    batch.out_cache_loc = locs
    module.prepare_mamba_track_for_verify(batch)
    batch.spec_info = module.NgramVerifyInput(
        draft_token=draft_tokens, custom_mask=full, positions=positions, retrieve_index=retrieve_index,
        retrieve_next_token=next_token, retrieve_next_sibling=next_sibling, draft_token_num=n)
    return True


def prepare_with_full_mask_kernel(original, worker, batch, *args, **kwargs):
    """AROUND ``NGRAMWorker._prepare_for_speculative_decoding`` (site "ngram_mask"): the whole
    step from ``prepare`` where the draft kernel is wanted; else upstream's method with its
    mask loops off for the call and the full mask from the mask kernel."""
    module = sys.modules[type(worker).__module__]
    if not (getattr(module, "USE_FULL_MASK", False) and not getattr(module, "_is_cpu", True)
            and batch.forward_mode.is_decode() and ngram_mask.wanted(batch)):  # upstream converts decode only
        return original(worker, batch, *args, **kwargs)
    if not args and not kwargs and prepare(worker, batch):
        return None
    module.USE_FULL_MASK = False  # one scheduler thread: restored before anyone else reads it
    try:
        out = original(worker, batch, *args, **kwargs)
    finally:
        module.USE_FULL_MASK = True
    if batch.forward_mode.is_target_verify():
        spec = batch.spec_info
        spec.custom_mask = ngram_mask.full_mask(spec.custom_mask, batch, spec.draft_token_num)
    return out

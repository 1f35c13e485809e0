"""A replayed verify graph's attention metadata filled by one kernel (Triton backend).

Before each replay of a target-verify CUDA graph, SGLang's Triton backend refills the
graph's metadata buffers (``TritonAttnBackend._update_target_verify_buffers``) with about
nine torch dispatches and a Triton gather: host work the GPU waits for at small batch
sizes (issue 14; the graph runner's whole input preparation took 338-627 µs per step at
bs 1 on H100 hosts, runs 34 and 39). Around that method this site writes the same bytes
to the same buffers with one launch (kernels/verify_metadata.py) and returns what
upstream returns.

Only the configuration that kernel reproduces: no sliding window, the class's own
``_fill_kv_indptr_and_indices``, a 1-byte custom mask that fits the graph's mask buffer,
and a contiguous ``seq_lens`` of length ``bs``. Anything else, a bad switch, or a kernel
that fails to launch (then for good, with one log line) runs upstream's method.
Both ways in run ``try_fill``: the plugin's AROUND hook and patch 0010's call site.
SGLang 0.5.17 only (its adapter): 0.5.23 gathers through a KV-location plan.
On by default since runs 42-47 (H100): identical outputs under graphs, byte-identical
buffers at real shapes, about 120 µs less host time a step; ``SGLANG_SCV_VERIFY_METADATA=0``
turns it off.
"""

from __future__ import annotations

import torch

from sglang_nwor_scv import kernel_guard
from sglang_nwor_scv.config import modes

_ONE_BYTE = (torch.bool, torch.uint8)
_counts = {"kernel": 0}


def _reproducible(backend, bs, seq_lens, req_pool_indices, custom_mask, mask_buffer) -> bool:
    """The kernel writes exactly what upstream's method writes for these inputs."""
    if getattr(backend, "sliding_window_size", None):  # None or 0: no window
        return False
    if any(getattr(backend, name, None) is None for name in
           ("qo_indptr", "kv_indptr", "mask_indptr", "cuda_graph_kv_indices", "req_to_token")):
        return False  # a backend without graph buffers (skip_prefill): upstream's error, if any
    fill = getattr(type(backend), "_fill_kv_indptr_and_indices", None)
    if getattr(fill, "__qualname__", "") != "TritonAttnBackend._fill_kv_indptr_and_indices":
        return False  # a subclass fills the KV indices its own way
    if seq_lens.dim() != 1 or seq_lens.shape[0] != bs or not seq_lens.is_contiguous():
        return False  # upstream raises on a length mismatch: let it
    if req_pool_indices.shape[0] < bs or not req_pool_indices.is_contiguous():
        return False
    if backend.req_to_token.stride(1) != 1 or backend.kv_indptr.shape[0] < bs + 1:
        return False
    if custom_mask is None:
        return True
    return (mask_buffer is not None and custom_mask.dtype in _ONE_BYTE
            and mask_buffer.dtype in _ONE_BYTE and custom_mask.dim() == 1
            and custom_mask.is_contiguous() and custom_mask.shape[0] <= mask_buffer.shape[0])


def try_fill(backend, bs, seq_lens, req_pool_indices, spec_info):
    """What ``_update_target_verify_buffers`` returns, its buffers filled by one launch;
    None when upstream's method must run (switched off, a configuration the kernel does
    not reproduce, or a kernel that cannot launch). Both ways in call this: the AROUND
    hook below and patch 0010's call site."""
    if not modes().verify_metadata:  # off, or a bad switch (STEP_ASIDE)
        return None
    num_draft = backend.num_draft_tokens
    if spec_info is not None and getattr(spec_info, "draft_token_num", None) is not None:
        num_draft = int(spec_info.draft_token_num)
    custom_mask = getattr(spec_info, "custom_mask", None) if spec_info is not None else None
    mask_buffer = backend._verify_mask.buffer if backend._verify_mask is not None else None
    if not (kernel_guard.usable("verify metadata")
            and _reproducible(backend, bs, seq_lens, req_pool_indices, custom_mask, mask_buffer)):
        return None
    from sglang_nwor_scv.kernels.verify_metadata import target_verify_buffers

    try:
        target_verify_buffers(backend.qo_indptr, backend.kv_indptr, backend.cuda_graph_kv_indices,
                              backend.mask_indptr, mask_buffer, backend.req_to_token,
                              req_pool_indices, seq_lens, custom_mask, bs, num_draft)
    except Exception as e:  # never take the server down for an optimisation
        kernel_guard.record_failure("verify metadata", e,
                                    "upstream's ops fill the verify graph's metadata")
        return None
    _counts["kernel"] += 1
    return (backend.qo_indptr[: bs + 1], backend.kv_indptr[: bs + 1],
            mask_buffer if custom_mask is not None else None, backend.mask_indptr[: bs + 1],
            backend.window_kv_indptr, None, None, None)


def update_target_verify_buffers(original, backend, bs, seq_lens, req_pool_indices, spec_info):
    """AROUND ``TritonAttnBackend._update_target_verify_buffers`` (SGLang 0.5.17)."""
    filled = try_fill(backend, bs, seq_lens, req_pool_indices, spec_info)
    if filled is None:
        return original(backend, bs, seq_lens, req_pool_indices, spec_info)
    return filled


def take_count() -> int:
    n, _counts["kernel"] = _counts["kernel"], 0
    return n

"""NGRAM's draft lookup reads the previous step's accepted tokens from the scheduler's own copy.

Every verify step, SGLang 0.5.17's ``NGRAMWorker._prepare_draft_tokens`` needs the previous
step's accepted tokens and lengths on the host and takes them with ``accept_tokens.cpu()``
and ``accept_lens.cpu()``: two synchronous device-to-host copies, each a dispatch and a
wait, before the verify launch (docs/host-path.md #11 and R6; a dispatch between lines of
scheduler Python costs about 50 µs there, H100 run 70). Right after that previous step's
launch the scheduler already copied exactly those two tensors to pinned memory: for a
verify step ``GenerationBatchResult.next_token_ids`` and ``.accept_lens`` are the very
tensors the next draft input (``next_draft_input.accept_tokens`` / ``.accept_lens``)
holds, and ``copy_to_cpu`` copies them on the copy stream after the step's forward and
records ``copy_done``.

``remember`` (after ``copy_to_cpu``) keeps the latest result's host copies with the device
tensors they were made from; ``host_copies`` hands them to the lookup after waiting on
``copy_done`` (the copy ran after the forward that wrote them, so the bytes equal what
``.cpu()`` would read) when the draft input still holds those same tensors. Anything else
(a prefill's result, a batch filtered or merged since, which replaces both tensors, no
copy made, switched off) reads with ``.cpu()`` as upstream does.

Hooked on 0.5.17 (its adapter: ``copy_to_cpu`` and the lookup the prompt-tail adapter
already runs); patch 0012 calls the same functions. ``SGLANG_SCV_ACCEPT_READBACK=0`` turns
it off.
"""

from __future__ import annotations

import torch

from sglang_nwor_scv.config import modes

# the latest copy_to_cpu: (draft input, device tokens, device lengths, host tokens, host
# lengths, copy_done). One entry: a lookup reads the result of the step right before it.
_latest: list = [None]
_counts = {"copies": 0}  # lookups served from the copies since the last take_count


def remember(result, device_tokens, device_lens) -> None:
    """After ``result.copy_to_cpu``: keep its host copies of the next draft input's accepted
    tokens and lengths, if that is what it copied (``device_*``: the result's tensors
    before the copy replaced them)."""
    _latest[0] = None
    if not modes().accept_readback:  # a patched tree calls this whatever the switch says
        return
    draft = getattr(result, "next_draft_input", None)
    done = getattr(result, "copy_done", None)
    host_tokens, host_lens = result.next_token_ids, getattr(result, "accept_lens", None)
    if (draft is None or done is None or not isinstance(host_tokens, torch.Tensor)
            or not isinstance(host_lens, torch.Tensor)):
        return
    if (getattr(draft, "accept_tokens", None) is device_tokens
            and getattr(draft, "accept_lens", None) is device_lens
            and host_tokens.is_cpu and host_lens.is_cpu
            and host_tokens.shape == device_tokens.shape and host_lens.shape == device_lens.shape):
        _latest[0] = (draft, device_tokens, device_lens, host_tokens, host_lens, done)


def host_copies(spec_info):
    """``(accept_tokens, accept_lens)`` of ``spec_info`` on the host, as ``.cpu()`` gives them."""
    tokens, lens = spec_info.accept_tokens, spec_info.accept_lens
    entry = _latest[0]
    if (entry is not None and entry[0] is spec_info and entry[1] is tokens and entry[2] is lens
            and modes().accept_readback):
        entry[5].synchronize()
        _counts["copies"] += 1
        return entry[3], entry[4]
    if tokens.is_cpu:
        return tokens, lens
    return tokens.cpu(), lens.cpu()


def take_count() -> int:
    n, _counts["copies"] = _counts["copies"], 0
    return n


def after_copy_to_cpu(original, result, *args, **kwargs):
    """AROUND ``GenerationBatchResult.copy_to_cpu``."""
    device_tokens, device_lens = result.next_token_ids, getattr(result, "accept_lens", None)
    out = original(result, *args, **kwargs)
    remember(result, device_tokens, device_lens)
    return out

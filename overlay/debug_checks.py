"""Debug mode (``SGLANG_NWOR_SCV_DEBUG=1``): prove, per step, that rejected rows never
reach the KV pool.

Before the verify forward every verify-window row is filled with ``POISON_BYTE``
(and, for pools up to 256 MB, the whole pool is snapshotted). After the commit:
rejected rows still hold the poison, committed rows equal the staged K/V, and no
row outside the commit list changed. Outputs identical with the plugin on and off
while rejected rows hold poison is the strongest evidence that they are never read.
These checks sync on purpose; they never run in production mode.
"""

from __future__ import annotations

import torch

POISON_BYTE = 0xA5
_SNAPSHOT_LIMIT = 256 << 20  # bytes: larger pools are checked on the window only


def poison_window(pool, out_cache_loc):
    """Poison the window's rows in every buffer; returns (snapshot or None, window)."""
    loc = out_cache_loc.to(torch.int64)
    bufs = list(pool.k_buffer) + list(pool.v_buffer)
    for buf in bufs:
        buf.view(torch.uint8).view(buf.shape[0], -1)[loc] = POISON_BYTE
    total = sum(b.numel() * b.element_size() for b in bufs)
    snapshot = [b.clone() for b in bufs] if total <= _SNAPSHOT_LIMIT else None
    return snapshot, loc


def check_pool(stage, debug, src, dst) -> dict:
    """The three checks for one committed stage; ``src`` are staged rows, ``dst`` slots."""
    snapshot, window = debug
    pool = stage.pool
    start = getattr(pool, "start_layer", 0) or 0
    valid = (src >= 0) & (dst >= 0)
    dst_v, src_v = dst[valid], src[valid]
    rejected = window[~torch.isin(window, dst_v)]
    poison_ok = outside_ok = commit_ok = True
    for i, staged in stage.layers.items():
        for buf, srcs in ((pool.k_buffer[i - start], staged.k), (pool.v_buffer[i - start], staged.v)):
            rows = buf.view(torch.uint8).view(buf.shape[0], -1)
            poison_ok &= bool((rows[rejected] == POISON_BYTE).all())
            if buf.dtype == srcs.dtype and staged.k_scale is None:
                want = srcs.reshape(srcs.shape[0], -1)[src_v]
                commit_ok &= torch.equal(buf.view(buf.shape[0], -1)[dst_v].view(torch.uint8),
                                         want.contiguous().view(torch.uint8))
    if snapshot is not None:
        touched = torch.zeros(pool.k_buffer[0].shape[0], dtype=torch.bool, device=window.device)
        touched[dst_v] = True
        bufs = list(pool.k_buffer) + list(pool.v_buffer)
        for before, after in zip(snapshot, bufs, strict=True):
            b = before.view(torch.uint8).view(before.shape[0], -1)[~touched]
            a = after.view(torch.uint8).view(after.shape[0], -1)[~touched]
            outside_ok &= torch.equal(a, b)
    return {"poison_ok": bool(poison_ok), "outside_ok": bool(outside_ok),
            "commit_ok": bool(commit_ok), "rejected_rows": int(rejected.numel())}

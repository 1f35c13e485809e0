"""NWOR commit list, as torch references: which staged verify rows go to which KV slots.

The commit kernel (``commit_kv.py``) takes the list in one of two forms, and builds
neither with a launch of its own:

- SCV's fused acceptance kernel emits ``(verify row, window position)`` pairs; the
  commit maps positions to slots (``slots_from_positions_ref``).
- Without SCV's list (SCV off, or a step whose ``accept_index`` was replaced, e.g. by
  ``SGLANG_SIMULATE_ACC_LEN``) the commit reads upstream's ``accept_index`` and
  ``accept_lens`` itself (``KVCommitPlan.launch_from_acceptance``): entry ``b*D+i``
  for ``i < accept_lens[b]`` is ``(accept_index[b, i], out_cache_loc[b*N + i])``, the
  accepted path written straight to the front of the request's window, where
  upstream's ``move_accept_tokens_to_target_kvcache`` would have moved it
  (``commit_list_from_acceptance_ref``). Until 2026-12-06 a separate Triton launch
  built that list; folding it into the commit saves a launch and two allocations per
  step.

The references are the spec for the kernel's tests and what debug mode's per-step
record uses (it syncs anyway).
"""

from __future__ import annotations

import torch


def commit_list_from_acceptance_ref(accept_index: torch.Tensor, accept_lens: torch.Tensor,
                                    out_cache_loc: torch.Tensor, draft_token_num: int):
    """``(src, dst)``, int64 ``[bs * D]`` each: verify rows and KV slots, ``-1`` padded."""
    bs, depth = accept_index.shape
    window = out_cache_loc.view(bs, draft_token_num)[:, :depth].to(torch.int64)
    step = torch.arange(depth, device=accept_index.device)
    valid = step.unsqueeze(0) < accept_lens.unsqueeze(1).to(step.dtype)
    src = torch.where(valid, accept_index.to(torch.int64), -1)
    dst = torch.where(valid, window, -1)
    return src.flatten(), dst.flatten()


def slots_from_positions_ref(pos: torch.Tensor, out_cache_loc: torch.Tensor) -> torch.Tensor:
    """``dst[j] = out_cache_loc[pos[j]]`` where ``pos[j] >= 0``, else ``-1`` (int64)."""
    return torch.where(pos >= 0, out_cache_loc.to(torch.int64)[pos.clamp(min=0)], -1)

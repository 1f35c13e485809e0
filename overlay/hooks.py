"""HookRegistry glue: wraps the adapter's upstream targets with the call sites.

Hook bodies are version-agnostic and thin: each forwards to sglang_nwor_scv.sites,
which the versioned patches call too. What / Why for every target is in the
adapter table (sglang_nwor_scv.adapters.v0_5_*).
"""

from __future__ import annotations

import importlib
import logging

from sglang_nwor_scv import (accept_readback, batch_snapshot, ngram_verify_inputs, profiling, scv, sites,
                             sync_check, verify_metadata)
from sglang_nwor_scv.adapters import v0_5_17_ngram
from sglang_nwor_scv.config import modes

logger = logging.getLogger("sglang_nwor_scv")


def around_model_forward(original, self, forward_batch, *args, **kwargs):
    profiling.on_forward(forward_batch)
    if not forward_batch.forward_mode.is_target_verify():
        return original(self, forward_batch, *args, **kwargs)
    with sync_check.watch():
        sites.begin_verify_forward(self, forward_batch)
    ok, out = False, None
    try:
        out = original(self, forward_batch, *args, **kwargs)
        ok = True
        return out
    finally:
        with sync_check.watch():
            sites.end_verify_forward(self, forward_batch, ok,
                                     graph_replayed=bool(getattr(out, "can_run_graph", False)))


def around_stage_kv(original, self, forward_batch, layer, loc_info, k, v,
                    k_scale=None, v_scale=None, *args, **kwargs):
    if sites.stage_kv(self, forward_batch, layer, k, v, k_scale, v_scale):
        return None
    return original(self, forward_batch, layer, loc_info, k, v, k_scale, v_scale,
                    *args, **kwargs)


def around_after_accept(original, target_worker, batch, accept_lens, accept_index,
                        draft_token_num, *args, **kwargs):
    with profiling.span("nwor_commit"):
        with sync_check.watch():
            sites.commit_after_accept(target_worker, batch, accept_lens, accept_index,
                                      draft_token_num)
        return original(target_worker, batch, accept_lens, accept_index, draft_token_num,
                        *args, **kwargs)


def around_accept_move(original, batch, accept_index, num_correct_drafts,
                       token_to_kv_pool_allocator, *args, **kwargs):
    with profiling.span("kv_move"):
        with sync_check.watch():
            done = sites.accept_move(batch, accept_index, num_correct_drafts,
                                     token_to_kv_pool_allocator)
        if done:
            return None
        return original(batch, accept_index, num_correct_drafts, token_to_kv_pool_allocator,
                        *args, **kwargs)


def around_fused_kv_gate(original, forward_batch, *args, **kwargs):
    if not sites.fused_kv_write_allowed(forward_batch):
        return False
    return original(forward_batch, *args, **kwargs)


def around_graph_capture(original, self, size, *args, **kwargs):
    with sites.graph_capture(self, size):
        return original(self, size, *args, **kwargs)


def around_verify_greedy(original, *args, **kwargs):
    with profiling.span("scv_compute_mask"):
        with sync_check.watch():
            done = scv.try_verify_greedy(*args, **kwargs)
        return done if done is not None else original(*args, **kwargs)


def after_scheduler_idle(original, self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    # only when fully idle (not a stall with requests parked): nothing left on the GPU
    sites.flush_when_idle(fully_idle=self.is_fully_idle)
    return out


def around_forward_isolation(original, self, batch, *, overlap):
    return batch_snapshot.isolated_batch(self, batch, overlap)


def around_batch_record(original, self, batch):
    batch_snapshot.record_batch(self, batch)


def around_sampling_copy(original, self):
    copy = batch_snapshot.sampling_copy(self)
    return copy if copy is not None else original(self)


HOOKS = {
    "model_forward": around_model_forward,
    "stage_kv": around_stage_kv,
    "after_accept": around_after_accept,
    "accept_move": around_accept_move,
    "fused_kv_gate": around_fused_kv_gate,
    "verify_greedy": around_verify_greedy,
    "graph_capture": around_graph_capture,
    "scheduler_idle": after_scheduler_idle,
    "ngram_mask": ngram_verify_inputs.prepare_with_full_mask_kernel,
    "ngram_draft_tokens": v0_5_17_ngram.prepare_draft_tokens,  # 0.5.17 only (its adapter)
    "ngram_corpus_update": v0_5_17_ngram.update_ngram_corpus,
    "verify_metadata": verify_metadata.update_target_verify_buffers,  # 0.5.17 only
    "forward_isolation": around_forward_isolation,
    "batch_record": around_batch_record,
    "sampling_copy": around_sampling_copy,
    "accept_readback": accept_readback.after_copy_to_cpu,  # 0.5.17 only (its adapter)
}


_SWITCHED_SITES = {  # site -> the Modes field that switches it
    "ngram_mask": "ngram_mask",
    "verify_metadata": "verify_metadata",
    "forward_isolation": "batch_snapshot",
    "batch_record": "batch_snapshot",
    "sampling_copy": "batch_snapshot",
    "accept_readback": "accept_readback",
}


def _wanted(name: str) -> bool:
    """A site switched off is not hooked at all: no wrapper on the step's path."""
    return name not in _SWITCHED_SITES or getattr(modes(), _SWITCHED_SITES[name])


def register_all(adapter) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for name, target in adapter.TARGETS.items():
        if _wanted(name):
            HookRegistry.register(target, HOOKS[name], HookType.AROUND)
    sites.set_wiring_check(lambda: applied(adapter))


def resolve(target: str):
    """Import ``a.b.c.Class.attr`` (longest importable module prefix) and return it."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import any module prefix of {target}")


def wraps_hook(obj, hook) -> bool:
    """True when ``obj`` is (a chain of) HookRegistry wrappers containing ``hook``."""
    while obj is not None:
        cells = getattr(obj, "__closure__", None) or ()
        if any(getattr(c, "cell_contents", None) is hook for c in cells):
            return True
        obj = getattr(obj, "__wrapped__", None)
    return False


def applied(adapter) -> set[str]:
    """Names of the adapter's sites whose upstream target really carries our hook."""
    out = set()
    for name, target in adapter.TARGETS.items():
        try:
            if wraps_hook(resolve(target), HOOKS[name]):
                out.add(name)
        except Exception:  # a missing target is reported by the caller
            logger.debug("NWOR/SCV: cannot resolve %s", target, exc_info=True)
    return out

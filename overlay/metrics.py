"""Prometheus counters for NWOR/SCV, in SGLang's registry, created lazily.

Counters count raw events once, where they happen; ratios (writes avoided %) are
derived when read (PromQL or ``summary()``). The root row of each request's
verify window (the bonus token of the previous step, whose K/V verify computes)
is counted in both staged and committed. Values are accumulated on the device
and copied to the host once per log interval, so the step itself never syncs.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

_NAMES = {
    "staged": ("sglang:nwor_tokens_staged", "Verify tokens whose K/V NWOR staged"),
    "committed": ("sglang:nwor_tokens_committed", "Staged tokens written to the KV pool"),
    "accepted": ("sglang:nwor_tokens_accepted", "Tokens verify accepted in NWOR-staged steps"),
    "bytes_saved": ("sglang:nwor_kv_bytes_not_written", "KV bytes of rejected rows never written"),
    "flushed": ("sglang:nwor_stages_flushed", "Stages written whole (upstream behaviour) as a fallback"),
    "violations": ("sglang:nwor_invariant_violations", "Failed invariant checks (committed != accepted)"),
    "moves_fused": ("sglang:nwor_kv_moves_fused", "Post-verify KV moves done in one launch "
                    "(upstream's move not run)"),
    "moves_upstream": ("sglang:nwor_kv_moves_upstream", "Post-verify KV moves left to upstream"),
    "scv_kernel": ("sglang:scv_fused_verify_steps", "Verify steps accepted by the fused SCV kernel"),
    "scv_fallback": ("sglang:scv_fallbacks", "Verify steps SCV handed back to upstream"),
    "ngram_mask_kernel": ("sglang:scv_ngram_mask_kernel_steps", "NGRAM verify steps whose full "
                          "mask one kernel built (upstream's per-request loop not run)"),
    "ngram_draft_kernel": ("sglang:scv_ngram_draft_kernel_steps", "NGRAM verify steps whose tree "
                           "links, full mask and cache locations one kernel wrote"),
    "verify_metadata_kernel": ("sglang:scv_verify_metadata_kernel_steps", "Replayed verify "
                               "graphs whose attention metadata one kernel filled"),
    "accept_readback": ("sglang:scv_ngram_lookups_from_copies", "NGRAM draft lookups that read "
                        "the previous step's accepted tokens from the scheduler's pinned copies "
                        "(no .cpu())"),
    "launches_kept": ("sglang:scv_kernel_launches_cached", "Plugin kernel launches through the "
                      "compiled kernel kept for their specialisation (SGLANG_SCV_CACHED_LAUNCH)"),
    "launches_triton": ("sglang:scv_kernel_launches_triton", "Plugin kernel launches through "
                        "Triton's kernel[grid] (first of a specialisation, interpreter, switch off)"),
    "host_syncs": ("sglang:nwor_scv_host_syncs", "Host syncs inside the plugin's sites (sync check on)"),
}


class Metrics:
    """Totals for one process; exported to Prometheus when SGLang runs with metrics."""

    def __init__(self) -> None:
        self.totals = {k: 0 for k in _NAMES}
        self._counters = None

    def _prom(self):
        if self._counters is None:
            self._counters = {}
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                try:
                    from prometheus_client import Counter

                    self._counters = {k: Counter(n, d) for k, (n, d) in _NAMES.items()}
                except Exception:  # never let metrics break serving
                    logger.exception("NWOR/SCV: could not create Prometheus counters")
        return self._counters

    def add(self, **deltas: int) -> None:
        prom = self._prom()
        for k, d in deltas.items():
            if d:
                self.totals[k] += int(d)
                if k in prom:
                    prom[k].inc(int(d))

    def summary(self) -> str:
        t = self.totals
        pct = 100.0 * (t["staged"] - t["committed"]) / t["staged"] if t["staged"] else 0.0
        return (f"NWOR: staged {t['staged']}, committed {t['committed']}, rejected writes "
                f"avoided {pct:.1f}%, KV bytes not written {t['bytes_saved']}, "
                f"flushed {t['flushed']}, violations {t['violations']}; KV moves: one-launch "
                f"{t['moves_fused']}, upstream {t['moves_upstream']}; SCV: fused "
                f"{t['scv_kernel']}, fallbacks {t['scv_fallback']}")

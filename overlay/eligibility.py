"""Decide once per model runner whether NWOR may stage its verify K/V.

Ineligible configurations run upstream code untouched; the reason is logged once.
Each rule says why it exists (see docs/design.md for the full list).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Workers whose verify path calls the commit site (commit_mamba_states_after_verify):
# eagle_worker_v2 / standalone_worker_v2 through run_eagle_verify, and ngram_worker.
COMMITTING_ALGORITHMS = frozenset({"EAGLE", "EAGLE3", "STANDALONE", "NGRAM"})


def nwor_refusal(model_runner) -> str | None:
    """None when NWOR can run on this runner, else the reason it cannot."""
    try:
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    except ImportError as e:  # a release that moved them: step aside, never crash
        return f"cannot import the supported backend/pool classes ({e})"

    args = getattr(model_runner, "server_args", None)
    algo = str(getattr(args, "speculative_algorithm", None) or "").upper()
    if algo not in COMMITTING_ALGORITHMS:
        # Only these workers reach the commit site after every verify; staging under
        # any other worker would leave accepted rows unwritten.
        return (f"speculative algorithm {algo or 'NONE'} (NWOR supports "
                f"{', '.join(sorted(COMMITTING_ALGORITHMS))})")
    if getattr(args, "enable_multi_layer_eagle", False):
        return "multi-layer EAGLE (its worker has its own verify path)"
    backend = getattr(model_runner, "attn_backend", None)
    pool = getattr(model_runner, "token_to_kv_pool", None)
    if getattr(model_runner, "is_draft_worker", False):
        return "draft model runner (only the target model's verify is staged)"
    if type(backend) is not TritonAttnBackend:
        # FlashInfer/FA3 read the draft rows back from the pool during verify.
        return (f"attention backend {type(backend).__name__} reads verify rows from the "
                "KV pool; NWOR supports attention_backend='triton' only")
    if type(pool) is not MHATokenToKVPool:
        return f"KV pool {type(pool).__name__} (only MHATokenToKVPool is supported)"
    if getattr(pool, "is_quantized_kv_cache", False):
        return "FP4-quantized KV cache (block scales are written beside the rows)"
    if getattr(backend, "enable_deterministic", False):
        return "deterministic inference (its unified kernel reads verify rows from the pool)"
    if getattr(backend, "dcp_size", 1) != 1:
        return "decode context parallelism (masked per-rank KV writes)"
    return None


def move_refusal(pool) -> str | None:
    """None when the one-launch KV move may replace upstream's move on ``pool``."""
    try:
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    except ImportError as e:
        return f"cannot import MHATokenToKVPool ({e})"
    if type(pool) is not MHATokenToKVPool:
        # Subclasses move differently (hybrid/SWA pools split the move, page-major
        # pools use the native move, FP4 pools move scale blocks too).
        return f"KV pool {type(pool).__name__} (only MHATokenToKVPool)"
    if getattr(pool, "use_hnd", False) or getattr(pool, "kv_cache_layout", "nhd") != "nhd":
        return f"KV cache layout {getattr(pool, 'kv_cache_layout', '?')!r} (the move needs 'nhd')"
    if getattr(pool, "is_quantized_kv_cache", False) or getattr(pool, "k_scale_buffer", None) is not None:
        return "quantized KV cache (scale blocks move beside the rows)"
    bufs = [*getattr(pool, "k_buffer", []), *getattr(pool, "v_buffer", [])]
    if not bufs or not all(b.is_contiguous() for b in bufs):
        return "KV buffers are not contiguous per-layer [slots, ...] tensors"
    return None

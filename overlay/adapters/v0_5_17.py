"""Hook sites in SGLang 0.5.17: 0.5.23's table (adapters/v0_5_23.py, What/Why per
entry) except what moved between the releases, listed here. Every target is checked
against the 0.5.17 source tree by tests/test_patches.py.
"""

from sglang_nwor_scv.adapters import v0_5_23

VERSION = "0.5.17"

TARGETS = {
    **v0_5_23.TARGETS,
    # Moved: 0.5.17 defines verify_tree_greedy_func in eagle_utils, its only caller
    # (0.5.23 moved it to sglang.kernels.ops.speculative.spec_tree).
    "verify_greedy": "sglang.srt.speculative.eagle_utils.verify_tree_greedy_func",
    # What: NGRAM's draft lookup and corpus update (every verify step, every request).
    # Why: 0.5.17 copies each request's whole prompt into a list twice per step to use
    # its last max_trie_depth tokens; these run 0.5.17's bodies with the copy cut to the
    # tail (adapters/v0_5_17_ngram.py). 0.5.23 slices first on its own.
    "ngram_draft_tokens": ("sglang.srt.speculative.ngram_worker.NGRAMWorker."
                           "_prepare_draft_tokens"),
    "ngram_corpus_update": "sglang.srt.speculative.ngram_worker.NGRAMWorker._update_ngram_corpus",
    # What: the Triton backend's refill of a replayed target-verify graph's attention
    # metadata (qo/kv/mask indptr, kv_indices, the custom mask), before every replay.
    # Why: about 9 dispatches of host work the GPU waits for at small bs; with
    # SGLANG_SCV_VERIFY_METADATA=1 one kernel writes the same bytes (verify_metadata.py).
    # 0.5.23 gathers through a KV-location plan and is not hooked.
    "verify_metadata": ("sglang.srt.layers.attention.triton_backend.TritonAttnBackend."
                        "_update_target_verify_buffers"),
    # What: the scheduler's copy of a step's result to pinned host memory (overlap and sync).
    # Why: the next NGRAM draft lookup reads the same accepted tokens and lengths with two
    # synchronous .cpu() copies before the verify launch; with SGLANG_SCV_ACCEPT_READBACK=1
    # it takes these copies instead (accept_readback.py). 0.5.23's lookup is not the plugin's.
    "accept_readback": "sglang.srt.managers.utils.GenerationBatchResult.copy_to_cpu",
}

PHASES = v0_5_23.PHASES  # the same names and places in 0.5.17


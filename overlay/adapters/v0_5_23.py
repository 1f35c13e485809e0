"""Hook sites in SGLang 0.5.23 (wheel == upstream python/sglang).

Every upstream target string lives here; the hook bodies (sglang_nwor_scv.hooks)
are version-agnostic. Each entry: What / Why, in the comment beside it.
"""

VERSION = "0.5.23"

TARGETS = {
    # What: bracket every TARGET_VERIFY forward of the target model.
    # Why: opens a fresh stage (a stage from an aborted step can never be committed)
    # and closes it when the forward returns, checking every layer was staged.
    "model_forward": "sglang.srt.model_executor.model_runner.ModelRunner.forward",
    # What: the Triton backend's single KV write site (forward_extend, ~l.1722/1735).
    # Why: in TARGET_VERIFY the rows are staged instead of written; attention reads
    # draft rows from the dense k/v, the prefix from the pool, so skipping is safe.
    "stage_kv": "sglang.srt.layers.attention.triton_backend.TritonAttnBackend._set_kv_buffer",
    # What: called right after acceptance by EAGLE/STANDALONE (eagle_worker_common
    # ~l.736) and NGRAM (ngram_worker ~l.487) with accept_lens and accept_index.
    # Why: the natural commit site: acceptance is known, nothing has read the pool yet.
    "after_accept": "sglang.srt.speculative.spec_utils.commit_mamba_states_after_verify",
    # What: copies the accepted tree path to the front of the verify window.
    # Why: NWOR commits straight to the final slots, so this copy must not run
    # (it would copy rows that were never written).
    "accept_move": "sglang.srt.speculative.spec_utils.move_accept_tokens_to_target_kvcache",
    # What: the gate models with a fused rope+KV write (qwen3_moe, gpt_oss, ...) ask.
    # Why: a fused write would put verify rows in the pool behind the stage's back;
    # while a stage is open the gate says no and the rows come to _set_kv_buffer.
    "fused_kv_gate": "sglang.srt.models.utils.enable_fused_set_kv_buffer",
    # What: greedy tree/chain verification (called from eagle_sample, EAGLE and NGRAM).
    # Why: SCV runs the fused acceptance kernel instead: same outputs bit for bit, plus
    # the NWOR commit list in the same launch (kernels/verify_accept.py).
    # What: captures one batch-size bucket of the decode/verify CUDA graph.
    # Why: with SGLANG_NWOR_GRAPH=1 the verify rows are staged at capture, so the
    # graph holds no verify KV write; the replayed bucket's stage is committed after
    # acceptance like an eager one.
    "graph_capture": ("sglang.srt.model_executor.runner.decode_cuda_graph_runner."
                      "DecodeCudaGraphRunner.capture_one_shape"),
    "verify_greedy": "sglang.kernels.ops.speculative.spec_tree.verify_tree_greedy_func",
    # What: the scheduler's idle housekeeping (runs when no batch is queued or running).
    # Why: NWOR's counters are read from the device without waiting, once per log
    # interval, so between bursts /metrics and the totals lag by up to one interval; at
    # idle the GPU has nothing left, so one wait makes them exact (commit.flush_when_idle).
    "scheduler_idle": "sglang.srt.managers.scheduler.Scheduler.on_idle",
    # What: NGRAM's verify-input preparation (draft lookup, tree mask, positions, indices).
    # Why: with SGLANG_SCV_NGRAM_MASK=1 its per-request full-mask loop (5 launches and a
    # copy per request, every step) is skipped and one kernel builds the same mask.
    "ngram_mask": ("sglang.srt.speculative.ngram_worker.NGRAMWorker."
                   "_prepare_for_speculative_decoding"),
    # What: the scheduler's isolation of a batch around its forward, every step: a snapshot
    # of every ScheduleBatch field (speculative batches), a forward-only copy of the sampling
    # info, and the batch pinned for two iterations (overlap). The same bodies in 0.5.17.
    # Why: each walks dataclasses.fields or runs dataclasses.replace, before the verify
    # launch; with SGLANG_SCV_BATCH_SNAPSHOT=1 the field names are read once and the same
    # values taken in one call (batch_snapshot.py).
    "forward_isolation": "sglang.srt.managers.scheduler.Scheduler._forward_isolation",
    "batch_record": "sglang.srt.managers.scheduler.Scheduler.record_batch_in_overlap",
    "sampling_copy": "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.copy_for_forward",
}

# Phase clocks (sglang_nwor_scv.phases, entry point nwor_scv_phases): name -> target. Host
# time only; nested phases are subtracted from their parent's self time. loop.* are the
# scheduler loop's parts (loop.recv starts an iteration); spec.* the speculative
# worker's, NGRAM and the EAGLE v2 worker (EAGLE, EAGLE3, STANDALONE).
_spec = "sglang.srt.speculative."
PHASES = {
    "loop.recv": ("sglang.srt.managers.scheduler_components.request_receiver."
                  "SchedulerRequestReceiver.recv_requests"),
    "loop.input": "sglang.srt.managers.scheduler.Scheduler.process_input_requests",
    "loop.schedule": "sglang.srt.managers.scheduler.Scheduler.get_next_batch_to_run",
    "loop.run_batch": "sglang.srt.managers.scheduler.Scheduler.run_batch",
    "loop.output": "sglang.srt.managers.scheduler.Scheduler.process_batch_result",
    "spec.ngram.worker": _spec + "ngram_worker.NGRAMWorker.forward_batch_generation",
    "spec.ngram.draft": _spec + "ngram_worker.NGRAMWorker._prepare_for_speculative_decoding",
    "spec.ngram.corpus": _spec + "ngram_worker.NGRAMWorker._update_ngram_corpus",
    "spec.eagle.worker": _spec + "eagle_worker_v2.EAGLEWorkerV2.forward_batch_generation",
    "spec.eagle.draft": _spec + "eagle_worker_v2.EagleDraftWorker.draft",
    "spec.eagle.draft_extend": _spec + "eagle_worker_v2.EagleDraftWorker._draft_extend_for_decode",
    "spec.eagle.verify": _spec + "eagle_worker_v2.EAGLEWorkerV2.verify",
    # upstream's host work before a verify launch, which bs 1 waits for (runs 26-29: the GPU
    # idles 1.4-2.2 ms a step). Under the overlap loop run_batch starts by waiting for the
    # previous step's accepted lengths (the D2H of seq_lens, which NGRAM's mask needs on the
    # host); from then on the GPU idles through the draft lookup, the verify window's
    # slots, the forward batch, the graph runner's input copies and attention metadata, and
    # the replay launch
    "loop.wait_prev": "sglang.srt.managers.overlap_utils.FutureMap.resolve_seq_lens_cpu",
    # run_batch's own code around the worker (about 0.3 ms of self time at bs 1, runs 34/36):
    # before it, the forward-only copy of the sampling info and the batch pinned for two
    # iterations (inside _forward_isolation, whose field snapshot stays unclocked; the
    # plugin's versions of all three with SGLANG_SCV_BATCH_SNAPSHOT=1); after
    # it, the result's relay to the next step and its non-blocking D2H
    "loop.sampling_copy": TARGETS["sampling_copy"],
    "loop.record_batch": TARGETS["batch_record"],
    "loop.relay": "sglang.srt.managers.scheduler.Scheduler._relay_forward_payload",
    "loop.copy_to_cpu": "sglang.srt.managers.utils.GenerationBatchResult.copy_to_cpu",
    "spec.ngram.lookup": _spec + "ngram_worker.NGRAMWorker._prepare_draft_tokens",
    # inside the lookup: the wait for the corpus's background insert thread, and the trie
    # lookup itself (the rest is the per-request loop and reading the previous step's
    # tokens, which have landed by then: loop.wait_prev waited for them)
    "spec.ngram.corpus_sync": _spec + "cpp_ngram.ngram_corpus.NgramCorpus.synchronize",
    "spec.ngram.corpus_get": _spec + "cpp_ngram.ngram_corpus.NgramCorpus.batch_get",
    "spec.cache_locs": "sglang.kernels.ops.speculative.cache_locs.assign_extend_cache_locs_func",
    "forward.worker": "sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation",
    "forward.batch_init": "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
    "forward.model": TARGETS["model_forward"],
    "graph.execute": ("sglang.srt.model_executor.runner.decode_cuda_graph_runner."
                      "DecodeCudaGraphRunner.execute"),
    "graph.load_batch": ("sglang.srt.model_executor.runner.decode_cuda_graph_runner."
                         "DecodeCudaGraphRunner.load_batch"),
    "spec.accept": _spec + "eagle_utils.eagle_sample",
    # inside spec.accept, latency runs only: SGLANG_SIMULATE_ACC_LEN's stand-in acceptance
    # (about six dispatches a step, every mode alike; production never runs it), so a report
    # can give the post-verify host time without it (issue 14's criterion)
    "spec.simulate": _spec + "spec_utils.generate_simulated_accept_index",
    "spec.commit": TARGETS["after_accept"],
    "spec.kv_move": TARGETS["accept_move"],
    # the plugin's own work inside those phases (runs 27/29: spec.commit took 160-230 µs more
    # host time than upstream's at bs 1, after the launch; these say where)
    "nwor.verify_begin": "sglang_nwor_scv.sites.begin_verify_forward",
    "nwor.verify_end": "sglang_nwor_scv.sites.end_verify_forward",
    "nwor.commit": "sglang_nwor_scv.commit.commit_after_accept",
    "nwor.move": "sglang_nwor_scv.move.accept_move",
    "scv.verify": "sglang_nwor_scv.scv.try_verify_greedy",
    # each of the plugin's kernel launches alone (Triton's dispatch; on the CPU the
    # interpreter runs the kernel inside it), so a site's time splits into launch and glue
    "kernel.verify_accept": "sglang_nwor_scv.kernels.verify_accept.launch_verify_accept_greedy",
    "kernel.commit": "sglang_nwor_scv.kernels.commit_kv.KVCommitPlan._launch",
    "kernel.move": "sglang_nwor_scv.kernels.move_kv.KVMovePlan.launch",
    "kernel.ngram_mask": "sglang_nwor_scv.kernels.ngram_mask.full_tree_mask",
    # the NGRAM draft kernel (default): mask, tree links and cache locations in one launch, so
    # upstream's spec.cache_locs and the mask kernel's launch do not run
    "kernel.ngram_draft": "sglang_nwor_scv.kernels.ngram_draft.ngram_draft",
    "kernel.ngram_draft.launch": "sglang_nwor_scv.kernels.ngram_draft._launch",
    # the drafts and tree mask to the device in one copy (ngram_verify_inputs.py): the pinned
    # staging tensor, the host writes and the copy's dispatch
    "kernel.ngram_upload": "sglang_nwor_scv.ngram_verify_inputs.DraftUpload.upload",
    # inside spec.ngram.lookup on 0.5.17: the previous step's accepted tokens and lengths on
    # the host (the scheduler's pinned copies after a wait on their event, or .cpu())
    "spec.ngram.readback": "sglang_nwor_scv.accept_readback.host_copies",
    "kernel.verify_metadata": "sglang_nwor_scv.kernels.verify_metadata.target_verify_buffers",
}

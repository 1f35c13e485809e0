"""SGLang 0.5.17's NGRAM worker, two methods with two host costs cut: prompt copy, mask cast.

On every verify step, 0.5.17's ``NGRAMWorker._prepare_draft_tokens`` and
``_update_ngram_corpus`` turn each request's whole prompt into a Python list:
``list(req.origin_input_ids)``. ``origin_input_ids`` is an ``array``, so every element
becomes a Python int, and the only use of the list is its last ``max_trie_depth``
tokens (``_efficient_concat_last_n``). On this project's CPU, a 2,048-token prompt costs
19 µs and an 8,192-token prompt 75 µs, per request and per method. At bs 64 with 8k
prompts that is about 9.6 ms of host work per step, and NGRAM's GPU waits for the draft.
Upstream slices before it copies since 0.5.2x (0.5.23:
``list(req.origin_input_ids_unpadded[-self.max_trie_depth :])``).

These are 0.5.17's own method bodies with that change, so the corpus sees the same
tokens, and two more. The previous step's accepted tokens and lengths come from
``accept_readback.host_copies`` (the scheduler's pinned copies when they are of the same
tensors, else upstream's ``.cpu()``; ``SGLANG_SCV_ACCEPT_READBACK``). And the draft tree
mask comes back as booleans. 0.5.17's corpus wrapper
(``kernels/ops/speculative/ngram_corpus.py``) widens the C++ uint8 mask to int64, and the
caller's ``tree_mask.copy_(torch.from_numpy(mask), non_blocking=True)`` into its bool device
buffer then takes PyTorch's cross-dtype path: a device temporary, an eight-times larger
host-to-device copy and a conversion kernel, every verify step before the verify launch.
A bool array makes it one same-dtype copy of the same bytes (nonzero is True both ways);
``_derive_tree_links`` and upstream's mask loop read it alike.
``_efficient_concat_last_n(seq1, seq2, n)`` reads at most the last ``n`` elements of
``seq1``. 0.5.17 semantics are kept: ``origin_input_ids``, not the unpadded ids 0.5.23
uses. ``tests/test_ngram_prompt_tail.py`` runs upstream's methods, taken from the 0.5.17
source, and the patched tree's against these on the same inputs. Patch 0008 makes the same
two changes in patched trees. Hooked on 0.5.17 only (adapters/v0_5_17.py); with
``SGLANG_SCV_NGRAM_PROMPT_TAIL=0``, or a bad switch value anywhere, upstream's methods run.
"""

from __future__ import annotations

import numpy as np

from sglang_nwor_scv import accept_readback
from sglang_nwor_scv.config import modes


def prepare_draft_tokens(original, self, batch):
    """AROUND ``NGRAMWorker._prepare_draft_tokens`` (replaces it; 0.5.17's body)."""
    if not modes().ngram_prompt_tail:  # off, or a bad switch (every feature off then)
        return original(self, batch)
    bs = len(batch.reqs)
    stride = self.draft_token_num
    depth = self.max_trie_depth

    # 0.5.17: the two tensors' .cpu(); the same values from the scheduler's pinned copies
    prev_token_ids, prev_accept_lens = accept_readback.host_copies(batch.spec_info)
    self.prev_token_ids = prev_token_ids.tolist()
    self.prev_accept_lens = prev_accept_lens.tolist()

    self.ngram_corpus.synchronize()
    req_ids = []
    batch_tokens = []
    total_lens = []
    assert len(batch.reqs) == len(self.prev_accept_lens)
    use_prev_tokens = self.enable_overlap and not batch.grammar_needs_sync()
    for i, req in enumerate(batch.reqs):
        prev_tokens = (
            self.prev_token_ids[i * stride : i * stride + self.prev_accept_lens[i]]
            if use_prev_tokens
            else []
        )
        check_token = self._efficient_concat_last_n(
            list(req.origin_input_ids[-depth:]),  # 0.5.17: list(req.origin_input_ids)
            list(req.output_ids[-depth:]) + prev_tokens,
            depth,
        )
        req_ids.append(req.rid)
        batch_tokens.append(check_token)
        total_lens.append(len(req.origin_input_ids) + len(req.output_ids) + len(prev_tokens))
    req_drafts, mask = self.ngram_corpus.batch_get(req_ids, batch_tokens, total_lens)
    total_draft_token_num = len(req_drafts)
    assert (
        total_draft_token_num == bs * self.draft_token_num
    ), f"{total_draft_token_num=}, {bs=}, {self.draft_token_num=}"
    # bool, the device tree mask's dtype (0.5.17 hands over int64): one copy, no cast;
    # the same expression as patch 0008's
    return req_drafts, mask.astype(np.bool_, copy=False)


def update_ngram_corpus(original, self, batch):
    """AROUND ``NGRAMWorker._update_ngram_corpus`` (replaces it; 0.5.17's body)."""
    if not modes().ngram_prompt_tail:
        return original(self, batch)
    batch_tokens = []
    stride = self.draft_token_num
    depth = self.max_trie_depth
    use_prev_tokens = self.enable_overlap and not batch.grammar_needs_sync()
    for i, req in enumerate(batch.reqs):
        prev_tokens = (
            self.prev_token_ids[i * stride : i * stride + self.prev_accept_lens[i]]
            if use_prev_tokens
            else []
        )
        put_ids = self._efficient_concat_last_n(
            list(req.origin_input_ids[-depth:]),  # 0.5.17: list(req.origin_input_ids)
            list(req.output_ids[-depth:]) + prev_tokens,
            depth,
        )
        batch_tokens.append(put_ids)
    self.ngram_corpus.batch_put(batch_tokens)

"""The NGRAM lookup's accepted tokens from the scheduler's copies (``overlay/accept_readback.py``).

SGLang's own ``GenerationBatchResult.copy_to_cpu`` (the installed release's) runs through the
plugin's hook on a result built as NGRAM's verify step builds it: its ``next_token_ids`` and
``accept_lens`` are the very tensors its ``next_draft_input`` holds. The lookup's
``host_copies`` must then give what ``.cpu()`` gives, value for value, and take the copies
only while the draft input still holds those tensors. On the CPU SGLang's copy is a plain
one and ``copy_done`` a CPU event; on a GPU machine the same test runs CUDA tensors, pinned
copies and a CUDA event. 0.5.17's lookup (``adapters/v0_5_17_ngram.py``, patch 0012) is the
caller: ``tests/test_ngram_prompt_tail.py`` and ``tests/test_patches.py`` cover it.
"""

from __future__ import annotations

import pytest
import torch

from sglang_nwor_scv import accept_readback, config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _CountingEvent:
    """``copy_done`` with its waits counted: the scheduler's own event, wrapped."""

    def __init__(self):
        self.event, self.waits = torch.get_device_module(DEVICE).Event(), 0

    def record(self):
        self.event.record()

    def synchronize(self):
        self.waits += 1
        self.event.synchronize()


def _verify_result(bs=3, n=4, seed=0):
    """A verify step's result and the next draft input, as NGRAM's worker returns them."""
    from sglang.srt.managers.utils import GenerationBatchResult
    from sglang.srt.speculative.ngram_info import NgramVerifyInput

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 150000, (bs * n,), generator=g).to(DEVICE)
    lens = torch.randint(1, n + 1, (bs,), generator=g, dtype=torch.int32).to(DEVICE)
    seq_lens = torch.randint(5, 50, (bs,), generator=g).to(DEVICE) + lens
    draft = NgramVerifyInput(draft_token_num=n, new_seq_lens=seq_lens, accept_tokens=tokens, accept_lens=lens)
    result = GenerationBatchResult(logits_output=None, next_token_ids=tokens, accept_lens=lens,
                                   next_draft_input=draft)
    result.copy_done = _CountingEvent()
    return result, draft


def _copy(result):
    from sglang.srt.managers.utils import GenerationBatchResult

    accept_readback.after_copy_to_cpu(GenerationBatchResult.copy_to_cpu, result,
                                      return_logprob=False, return_hidden_states=False)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(accept_readback, "_latest", [None])
    accept_readback.take_count()
    config.modes.cache_clear()
    yield
    config.modes.cache_clear()


def test_the_lookup_reads_the_copies_of_the_same_tensors():
    result, draft = _verify_result()
    want = (draft.accept_tokens.cpu(), draft.accept_lens.cpu())
    _copy(result)
    got = accept_readback.host_copies(draft)
    assert got[0] is result.next_token_ids and got[1] is result.accept_lens  # the scheduler's copies
    assert all(t.device.type == "cpu" for t in got)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    assert result.copy_done.waits == 1 and accept_readback.take_count() == 1


@pytest.mark.parametrize("case", ["filtered", "merged", "another result", "prefill", "switched off",
                                  "bad switch", "no copy made"])
def test_anything_else_reads_with_cpu(monkeypatch, case):
    """A batch filtered or merged since (both replace the tensors), a later result, a prefill's
    result (its draft input holds other tensors), the switch off or bad, no copy made: the
    lookup reads the draft input's own tensors with ``.cpu()``, as upstream does."""
    result, draft = _verify_result()
    if case == "switched off":
        monkeypatch.setenv("SGLANG_SCV_ACCEPT_READBACK", "0")
    if case == "bad switch":
        monkeypatch.setenv("SGLANG_NWOR_MODE", "bogus")
    config.modes.cache_clear()
    if case == "prefill":  # the extend branch: accept_tokens built apart from next_token_ids
        draft.accept_tokens = draft.accept_tokens.clone()
    if case != "no copy made":
        _copy(result)
    if case == "filtered":
        draft.filter_batch(torch.tensor([0, 2], device=DEVICE))
    if case == "merged":
        draft.merge_batch(_verify_result(bs=2, seed=1)[1])
    if case == "another result":
        _copy(_verify_result(seed=2)[0])
    want = (draft.accept_tokens.cpu(), draft.accept_lens.cpu())
    got = accept_readback.host_copies(draft)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert result.copy_done.waits == 0 and accept_readback.take_count() == 0


def test_the_hook_returns_what_copy_to_cpu_returns_and_keeps_one_result():
    from sglang.srt.managers.utils import GenerationBatchResult

    first, first_draft = _verify_result(seed=3)
    assert accept_readback.after_copy_to_cpu(GenerationBatchResult.copy_to_cpu, first,
                                             return_logprob=False, return_hidden_states=False) is None
    second, second_draft = _verify_result(seed=4)
    _copy(second)
    accept_readback.host_copies(first_draft)  # only the latest result is kept
    assert first.copy_done.waits == 0
    accept_readback.host_copies(second_draft)
    assert second.copy_done.waits == 1

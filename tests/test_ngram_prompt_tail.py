"""0.5.17's NGRAM draft lookup and corpus update, with the prompt copy cut to its tail
(``overlay/adapters/v0_5_17_ngram.py``, patch 0008), against upstream's own methods.

SGLang 0.5.17 is not importable next to the 0.5.23 this CPU runs, so upstream's three
methods (``_prepare_draft_tokens``, ``_update_ngram_corpus``, ``_efficient_concat_last_n``)
are compiled from the 0.5.17 source (``ci/fetch_upstream_sources.sh``) and run on the
same worker and batch as the plugin's versions. ``_Corpus`` stands in for the C++ n-gram
corpus (``NgramCorpus``) and records what each version hands it: the check is that the
corpus sees the same request ids, tokens and lengths. On the GPU (0.5.17) the engine
tests run the real methods through the plugin's hooks.

    pytest tests/test_ngram_prompt_tail.py -k host_us --benchmark-enable
"""

from __future__ import annotations

import __future__
import ast
import random
import shutil
import statistics
import subprocess
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sglang_nwor_scv import accept_readback, sites
from sglang_nwor_scv.adapters import v0_5_17_ngram
from tools.measure_latency import bootstrap_ci

_NAMES = ("_prepare_draft_tokens", "_update_ngram_corpus", "_efficient_concat_last_n")


_WORKER = "python/sglang/srt/speculative/ngram_worker.py"


@pytest.fixture(scope="module")
def upstream_methods(upstream) -> dict:
    """0.5.17's ``NGRAMWorker`` methods, compiled from its source."""
    return _compiled(upstream["0.5.17"] / _WORKER)


@pytest.fixture(scope="module")
def patched_methods(upstream, tmp_path_factory) -> dict:
    """The same methods after patches 0007, 0008 and 0012's lookup hunk (the patch series' way
    in; 0012's other file, managers/utils.py, is tests/test_accept_readback.py's)."""
    root = tmp_path_factory.mktemp("sglang-0.5.17-patched")
    (root / _WORKER).parent.mkdir(parents=True)
    shutil.copy(upstream["0.5.17"] / _WORKER, root / _WORKER)
    series = Path(__file__).resolve().parents[1] / "patches/sglang-0.5.17"
    texts = [(series / name).read_text() for name in ("0007-ngram-worker-full-mask-kernel.patch",
                                                      "0008-ngram-worker-prompt-tail.patch")]
    readback = (series / "0012-ngram-lookup-accept-readback.patch").read_text()
    texts.append(readback[readback.index(f"--- a/{_WORKER}"):])
    for text in texts:
        subprocess.run(["patch", "-d", str(root), "-p1", "-s", "--fuzz=0"], input=text, text=True, check=True)
    return _compiled(root / _WORKER)


def _compiled(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NGRAMWorker")
    defs = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in _NAMES]
    assert sorted(d.name for d in defs) == sorted(_NAMES), "0.5.17's NGRAMWorker changed"
    module = ast.Module(body=defs, type_ignores=[])
    code = compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag,
                   dont_inherit=True)
    namespace = {"np": np, "torch": torch, "List": list, "_nwor_sites": sites}
    exec(code, namespace)
    return {name: namespace[name] for name in _NAMES}


class _Corpus:
    """Stands in for the C++ ``NgramCorpus``: records the calls, returns fixed drafts."""

    def __init__(self, draft_token_num: int):
        self.n, self.calls = draft_token_num, []

    def synchronize(self):
        self.calls.append(("synchronize",))

    def batch_get(self, req_ids, batch_tokens, total_lens):
        self.calls.append(("batch_get", list(req_ids), [list(t) for t in batch_tokens], list(total_lens)))
        bs = len(req_ids)
        # 0.5.17's wrapper hands both over as int64 (kernels/ops/speculative/ngram_corpus.py)
        mask = np.random.default_rng(bs).integers(0, 2, bs * self.n * self.n, dtype=np.int64)
        return np.arange(bs * self.n, dtype=np.int64), mask

    def batch_put(self, batch_tokens):
        self.calls.append(("batch_put", [list(t) for t in batch_tokens]))


def _worker(methods, draft_token_num, depth, overlap):
    worker = SimpleNamespace(draft_token_num=draft_token_num, max_trie_depth=depth,
                             enable_overlap=overlap, ngram_corpus=_Corpus(draft_token_num))
    worker._efficient_concat_last_n = methods["_efficient_concat_last_n"].__get__(worker)
    return worker


def _batch(bs, n, prompt_lens, output_lens, rng):
    reqs = [SimpleNamespace(rid=f"r{i}",
                            origin_input_ids=array("q", (rng.randrange(1, 50000) for _ in range(p))),
                            output_ids=[rng.randrange(1, 50000) for _ in range(o)])
            for i, (p, o) in enumerate(zip(prompt_lens, output_lens, strict=True))]
    accept_tokens = torch.tensor([rng.randrange(1, 50000) for _ in range(bs * n)])
    accept_lens = torch.tensor([rng.randrange(1, n + 1) for _ in range(bs)], dtype=torch.int32)
    return SimpleNamespace(reqs=reqs, grammar_needs_sync=lambda: False,
                           spec_info=SimpleNamespace(accept_tokens=accept_tokens, accept_lens=accept_lens))


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("depth", [18, 4, 1])
@pytest.mark.parametrize("seed", range(4))
def test_the_corpus_sees_what_upstream_hands_it(upstream_methods, patched_methods, overlap, depth,
                                                seed):
    """Prompts shorter and longer than the trie depth, outputs empty to long, with and
    without the overlap scheduler's spliced tokens: the same calls, in the same order, from
    upstream's methods, the plugin's and the patched tree's. The tree mask the two ways in
    return is bool, and upstream's copy into the bool device buffer gets the same bytes."""
    rng = random.Random(seed)
    bs, n = rng.choice([1, 3, 8]), 8
    prompt_lens = [rng.choice([1, 2, depth - 1 or 1, depth, depth + 1, 300]) for _ in range(bs)]
    output_lens = [rng.choice([0, 1, depth, 2 * depth + 3]) for _ in range(bs)]
    batch = _batch(bs, n, prompt_lens, output_lens, rng)
    # the scheduler's copies of the previous step's accepted tokens (accept_readback.py): the
    # plugin's and the patched lookup read these, upstream's reads the draft input's own
    spec = batch.spec_info
    done = torch.cpu.Event()
    done.record()
    accept_readback.take_count()
    accept_readback.remember(SimpleNamespace(next_draft_input=spec, copy_done=done,
                                             next_token_ids=spec.accept_tokens.clone(),
                                             accept_lens=spec.accept_lens.clone()),
                             spec.accept_tokens, spec.accept_lens)
    results, copied = [], []
    for prepare, update in ((upstream_methods["_prepare_draft_tokens"],
                             upstream_methods["_update_ngram_corpus"]),
                            (lambda w, b: v0_5_17_ngram.prepare_draft_tokens(None, w, b),
                             lambda w, b: v0_5_17_ngram.update_ngram_corpus(None, w, b)),
                            (patched_methods["_prepare_draft_tokens"],
                             patched_methods["_update_ngram_corpus"])):
        worker = _worker(upstream_methods, n, depth, overlap)
        drafts, mask = prepare(worker, batch)
        update(worker, batch)
        results.append((worker.ngram_corpus.calls, worker.prev_token_ids, worker.prev_accept_lens,
                        drafts.tolist(), mask.astype(np.int64).tolist()))
        tree_mask = torch.empty(mask.size, dtype=torch.bool)  # the worker's device buffer's dtype
        tree_mask.copy_(torch.from_numpy(mask), non_blocking=True)  # upstream's copy
        copied.append((mask.dtype, tree_mask))
    assert results[0] == results[1] == results[2]
    assert accept_readback.take_count() == 2  # the plugin's lookup and the patched one
    assert copied[0][0] == np.int64 and copied[1][0] == copied[2][0] == np.bool_
    assert torch.equal(copied[0][1], copied[1][1]) and torch.equal(copied[0][1], copied[2][1])
    assert 0 < int(copied[0][1].sum()) < copied[0][1].numel()  # both values occur
    get = results[0][0][1]
    assert any(len(t) > 0 for t in get[2])  # the lookup got tokens to check


@pytest.mark.parametrize("value", ["0", "bad"])
def test_switched_off_or_a_bad_switch_runs_upstreams_methods(upstream_methods, monkeypatch, value):
    """``SGLANG_SCV_NGRAM_PROMPT_TAIL=0`` (and a bad value of any switch) hands both sites to
    upstream's own methods: the int64 mask comes back, as 0.5.17 makes it."""
    from sglang_nwor_scv import config

    if value == "bad":
        monkeypatch.setenv("SGLANG_NWOR_MODE", "sideways")
    else:
        monkeypatch.setenv("SGLANG_SCV_NGRAM_PROMPT_TAIL", value)
    config.reload()
    try:
        batch = _batch(2, 8, [300, 3], [5, 0], random.Random(0))
        ran = []

        def original(name):
            def run(worker, b):
                ran.append(name)
                return upstream_methods[name](worker, b)
            return run

        worker = _worker(upstream_methods, 8, 4, True)
        _, mask = v0_5_17_ngram.prepare_draft_tokens(original("_prepare_draft_tokens"), worker, batch)
        v0_5_17_ngram.update_ngram_corpus(original("_update_ngram_corpus"), worker, batch)
        assert ran == ["_prepare_draft_tokens", "_update_ngram_corpus"] and mask.dtype == np.int64
    finally:
        monkeypatch.undo()
        config.reload()
    worker = _worker(upstream_methods, 8, 4, True)
    _, mask = v0_5_17_ngram.prepare_draft_tokens(None, worker, batch)  # on again: the plugin's
    assert mask.dtype == np.bool_


@pytest.mark.parametrize("bs,prompt_len", [(32, 2048), (64, 8192)])
def test_draft_prep_host_us(benchmark, upstream_methods, bs, prompt_len, rounds=9, steps=20):
    """Host µs per verify step of both versions (draft prep + corpus update; the corpus
    calls are the stand-in's and cost almost nothing), interleaved: rounds of ``steps``
    steps per version, order swapped every round. Per version the median over rounds of
    the mean µs per step with a bootstrap 95% CI, and the paired difference, go to
    ``extra_info``."""
    from tools.measure_latency import paired_difference

    rng = random.Random(7)
    n = 8
    batch = _batch(bs, n, [prompt_len] * bs, [40] * bs, rng)
    versions = {
        "upstream 0.5.17": (upstream_methods["_prepare_draft_tokens"],
                            upstream_methods["_update_ngram_corpus"]),
        "prompt tail": (lambda w, b: v0_5_17_ngram.prepare_draft_tokens(None, w, b),
                        lambda w, b: v0_5_17_ngram.update_ngram_corpus(None, w, b)),
    }
    worker = _worker(upstream_methods, n, 18, False)

    def measure():
        per_round = {name: {} for name in versions}
        for r in range(rounds):
            for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                prepare, update = versions[name]
                t0 = time.perf_counter_ns()
                for _ in range(steps):
                    worker.ngram_corpus.calls.clear()
                    prepare(worker, batch)
                    update(worker, batch)
                per_round[name][r] = (time.perf_counter_ns() - t0) / steps / 1e3
        return per_round

    per_round = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.group = "NGRAM draft prep + corpus update, 0.5.17 vs prompt tail"
    stats = {name: {"median_us": statistics.median(v.values()),
                    "ci95_us": list(bootstrap_ci(list(v.values())))} for name, v in per_round.items()}
    diff = paired_difference(per_round["prompt tail"], per_round["upstream 0.5.17"])
    benchmark.extra_info.update(bs=bs, prompt_len=prompt_len, rounds=rounds, steps_per_round=steps,
                                per_version=stats, tail_vs_upstream=diff)
    assert diff is not None and diff["n"] == rounds

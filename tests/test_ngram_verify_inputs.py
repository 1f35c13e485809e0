"""NGRAM's verify inputs from one upload and one launch (``overlay/ngram_verify_inputs.py``)
against upstream's ``NGRAMWorker._prepare_for_speculative_decoding``, both releases.

SGLang's ``ngram_worker`` module imports ``sgl_kernel`` at the top, and 0.5.17 is not
importable next to the 0.5.23 this CPU runs, so each release's ``NGRAMWorker`` methods
``_init_preallocated_tensors`` and ``_prepare_for_speculative_decoding`` are compiled from
its source, unpatched and with patch 0007, into a module of their own that holds what the
real module imports: SGLang's ``ForwardMode``, ``NgramVerifyInput``,
``assign_extend_cache_locs_func`` (installed 0.5.23), the reconstruct op (the
``upstream_reconstruct`` fixture: ``sgl_kernel``'s on a GPU machine, 0.5.23's Triton port
here). Two inputs are the test's: the draft lookup's result (``_prepare_draft_tokens``,
the C++ corpus; int64 mask as the corpus wrappers give it, bool as 0.5.17's adapter does)
and ``prepare_mamba_track_for_verify``, which reads the server's global configuration;
both record their calls. On a GPU machine the installed release's file is compiled, with
``sgl_kernel``'s op, pinned staging and CUDA tensors. The engine tests
(tests/test_ngram_mask.py, test_faults.py, test_engine_patched.py, test_phases.py) run the
real module.
"""

from __future__ import annotations

import __future__
import ast
import shutil
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sglang_nwor_scv import config, kernel_guard, ngram_mask, ngram_verify_inputs, sites
from sglang_nwor_scv.kernels import ngram_draft as nd
from tests.stand_ins import LaunchFails, Obj

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WORKER = "python/sglang/srt/speculative/ngram_worker.py"
_METHODS = ("_init_preallocated_tensors", "_prepare_for_speculative_decoding")
_RECONSTRUCT = {"0.5.17": "reconstruct_indices_from_tree_mask",
                "0.5.23": "reconstruct_indices_from_tree_mask_func"}
MAX_BS = 20


@pytest.fixture(scope="module")
def worker_sources(request) -> dict:
    """version -> that release's ``ngram_worker.py``: both releases' from
    ci/fetch_upstream_sources.sh on the CPU; on a GPU machine (no network) the installed
    release's own file."""
    if torch.cuda.is_available():
        import sglang

        from sglang_nwor_scv.versions import installed_sglang_version

        return {installed_sglang_version(): Path(sglang.__file__).parent / "srt/speculative/ngram_worker.py"}
    return {v: request.getfixturevalue("upstream")[v] / _WORKER for v in ("0.5.17", "0.5.23")}


@pytest.fixture(scope="module")
def worker_modules(worker_sources, upstream_reconstruct, tmp_path_factory):
    """(version, "upstream" | "patched") -> a module holding that release's NGRAMWorker."""
    from sglang.kernels.ops.speculative import cache_locs
    from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.speculative.ngram_info import NgramVerifyInput

    patcher = pytest.MonkeyPatch()
    if DEVICE == "cpu":  # as tests/cpu_shims does for the engine: SGLang's Triton path, not None
        patcher.setattr(cache_locs, "_is_xpu", True)
    out = {}
    for version, source in worker_sources.items():
        root = tmp_path_factory.mktemp(f"sglang-{version}-0007")
        (root / _WORKER).parent.mkdir(parents=True)
        shutil.copy(source, root / _WORKER)
        patch = (Path(__file__).resolve().parents[1] / f"patches/sglang-{version}"
                 / "0007-ngram-worker-full-mask-kernel.patch")
        subprocess.run(["patch", "-d", str(root), "-p1", "-s", "--fuzz=0", "-i", str(patch)], check=True)
        for kind, path in (("upstream", source), ("patched", root / _WORKER)):
            name = f"_ngram_worker_{version.replace('.', '_')}_{kind}"
            module = types.ModuleType(name)
            module.__dict__.update(
                torch=torch, np=np, USE_FULL_MASK=True, _is_cpu=False, ForwardMode=ForwardMode,
                NgramVerifyInput=NgramVerifyInput,
                assign_extend_cache_locs_func=assign_extend_cache_locs_func,
                prepare_mamba_track_for_verify=_mamba_track,
                **{_RECONSTRUCT[version]: upstream_reconstruct},
                **({"_nwor_sites": sites} if kind == "patched" else {}))
            tree = ast.parse(path.read_text())
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NGRAMWorker")
            defs = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in _METHODS]
            assert sorted(d.name for d in defs) == sorted(_METHODS), f"{version}'s NGRAMWorker changed"
            exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec",
                         flags=__future__.annotations.compiler_flag, dont_inherit=True), module.__dict__)
            module.NGRAMWorker = type("NGRAMWorker", (Obj,), {
                "__module__": name, **{m: module.__dict__[m] for m in _METHODS}})
            sys.modules[name] = module
            out[version, kind] = module
    yield out
    patcher.undo()
    for module in out.values():
        sys.modules.pop(module.__name__, None)


def _mamba_track(batch):
    batch.calls.append("mamba_track")


def _worker(module, n, lookup):
    worker = module.NGRAMWorker(draft_token_num=n, max_batch_size=MAX_BS, device=DEVICE)
    worker._init_preallocated_tensors()
    for t in (worker.positions, worker.retrieve_indexes, worker.retrieve_next_token,
              worker.retrieve_next_sibling):
        t.fill_(-77)  # what a previous step left

    def prepare_draft_tokens(batch):
        batch.calls.append("lookup")
        return lookup

    worker._prepare_draft_tokens = prepare_draft_tokens
    return worker


def _batch(lens, pool_rows, seed, grammar=False):
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    g = torch.Generator().manual_seed(seed)
    bs = len(lens)
    width = max(lens) + 20
    return SimpleNamespace(
        reqs=list(range(bs)), forward_mode=ForwardMode.DECODE, has_grammar=grammar, calls=[],
        seq_lens=torch.tensor(lens, dtype=torch.int64, device=DEVICE),
        seq_lens_cpu=torch.tensor(lens, dtype=torch.int64),
        req_pool_indices=torch.randperm(pool_rows, generator=g)[:bs].to(DEVICE),
        req_to_token_pool=SimpleNamespace(req_to_token=torch.randint(
            0, 1 << 30, (pool_rows, width), dtype=torch.int32, generator=g).to(DEVICE)),
        input_ids=None, out_cache_loc=None, spec_info=None)


def _lookup(bs, n, seed, mask_dtype):
    """A draft lookup's result: random BFS-ordered trees (each node's parent earlier)."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(bs):
        m = np.eye(n, dtype=bool)
        for t in range(1, n):
            m[t] |= m[rng.integers(0, t)]
        masks.append(m.reshape(-1))
    drafts = rng.integers(0, 150000, bs * n, dtype=np.int64)
    return drafts, np.concatenate(masks).astype(mask_dtype)


def _state(worker, batch):
    """Everything the step leaves behind, as plain values."""
    spec = batch.spec_info
    bs, n = len(batch.reqs), worker.draft_token_num
    got = {"forward_mode": batch.forward_mode.name, "calls": list(batch.calls),
           "grammar_tree_host": worker.grammar_tree_host, "draft_token_num": spec.draft_token_num}
    for key, t in (("input_ids", batch.input_ids), ("out_cache_loc", batch.out_cache_loc),
                   ("draft_token", spec.draft_token), ("custom_mask", spec.custom_mask),
                   ("positions", spec.positions), ("retrieve_index", spec.retrieve_index),
                   ("retrieve_next_token", spec.retrieve_next_token),
                   ("retrieve_next_sibling", spec.retrieve_next_sibling)):
        got[key] = (t.dtype, tuple(t.shape), t.cpu().tolist())
    got["worker_links"] = [t[: bs * n].tolist() for t in (worker.positions, worker.retrieve_indexes.view(-1),
                                                          worker.retrieve_next_token.view(-1),
                                                          worker.retrieve_next_sibling.view(-1))]
    return got


def _run(modules, version, kind, lens, n, seed, mask_dtype, call=None):
    if (version, kind) not in modules:
        pytest.skip(f"SGLang {version}'s source is not on this machine "
                    "(a GPU machine has its installed release only)")
    bs = len(lens)
    module = modules[version, kind]
    worker = _worker(module, n, _lookup(bs, n, seed, mask_dtype))
    batch = _batch(lens, pool_rows=bs + 4, seed=seed)
    (call or module.NGRAMWorker._prepare_for_speculative_decoding)(worker, batch)
    return worker, batch


def _upstream_state(modules, version, lens, n, seed, mask_dtype):
    """Upstream's unpatched method, no plugin anywhere."""
    return _state(*_run(modules, version, "upstream", lens, n, seed, mask_dtype))


@pytest.fixture
def counts():
    ngram_mask.take_count()
    ngram_mask.take_count("draft")
    yield lambda: (ngram_mask.take_count(), ngram_mask.take_count("draft"))


CASES = [([5], 8), ([7, 1, 12], 4), (list(range(1, 18)), 8), ([600, 3], 16)]


@pytest.mark.parametrize("version", ["0.5.17", "0.5.23"])
@pytest.mark.parametrize("lens,n", CASES)
@pytest.mark.parametrize("mask_dtype", [np.int64, np.bool_])
def test_both_ways_in_leave_what_upstream_leaves(worker_modules, counts, version, lens, n, mask_dtype):
    """The plugin's hook and patch 0007's early return: the same batch, spec_info and worker
    buffers as upstream's method, value for value and dtype for dtype, from one launch."""
    seed = len(lens) * 7 + n
    want = _upstream_state(worker_modules, version, lens, n, seed, mask_dtype)
    original = worker_modules[version, "upstream"].NGRAMWorker._prepare_for_speculative_decoding

    def hooked(worker, batch):
        return ngram_verify_inputs.prepare_with_full_mask_kernel(original, worker, batch)

    for kind, call in (("upstream", hooked), ("patched", None)):
        got = _state(*_run(worker_modules, version, kind, lens, n, seed, mask_dtype, call))
        assert got == want, kind
        assert counts() == (1, 1), kind  # the draft kernel built this step
    assert want["calls"] == ["lookup", "mamba_track"]


def test_one_copy_lands_drafts_and_mask(worker_modules):
    """The upload: one device buffer per worker, drafts then mask; the per-bs views are the
    worker's shapes and dtypes, and a smaller batch after a larger one reads only its own."""
    worker = _worker(next(iter(worker_modules.values())), 4, None)
    up = ngram_verify_inputs.DraftUpload(MAX_BS, 4, DEVICE)
    for bs, seed in ((5, 1), (2, 2)):
        drafts, mask = _lookup(bs, 4, seed, np.int64)
        got_drafts, got_mask = up.upload(bs, drafts, mask)
        want_drafts, want_mask = worker.draft_tokens_batch[bs], worker.tree_mask_batch[bs]
        want_drafts.copy_(torch.from_numpy(drafts))
        want_mask.copy_(torch.from_numpy(mask))  # upstream's cast: nonzero is True
        for g, w in ((got_drafts, want_drafts), (got_mask, want_mask)):
            assert (g.dtype, g.shape, g.device.type) == (w.dtype, w.shape, w.device.type)
            assert torch.equal(g, w)
        assert got_drafts.data_ptr() == up.buffer.data_ptr()
        assert got_mask.data_ptr() == up.buffer.data_ptr() + 8 * bs * 4


@pytest.mark.parametrize("case", ["draft off", "mask off", "bad switch", "grammar", "extend"])
def test_upstreams_method_runs_where_the_draft_kernel_is_not_wanted(worker_modules, counts, monkeypatch,
                                                                    case):
    """Switched off, a bad switch anywhere, a grammar batch (its host mask is read later) or a
    batch that is not a decode: ``prepare`` does nothing and says so."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    env = {"draft off": {"SGLANG_SCV_NGRAM_DRAFT": "0"}, "mask off": {"SGLANG_SCV_NGRAM_MASK": "0"},
           "bad switch": {"SGLANG_NWOR_MODE": "bogus"}}.get(case, {})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config.modes.cache_clear()
    try:
        module = next(iter(worker_modules.values()))
        worker = _worker(module, 4, _lookup(3, 4, 5, np.int64))
        batch = _batch([7, 1, 12], pool_rows=7, seed=5, grammar=case == "grammar")
        if case == "extend":
            batch.forward_mode = ForwardMode.EXTEND
        assert ngram_verify_inputs.prepare(worker, batch) is False
        assert batch.calls == [] and batch.spec_info is None
        assert counts()[1] == 0
    finally:
        config.modes.cache_clear()


@pytest.mark.parametrize("version", ["0.5.17", "0.5.23"])
def test_a_failing_draft_kernel_runs_upstreams_ops_for_the_step(worker_modules, counts, monkeypatch, caplog,
                                                                version):
    """The lookup has run when the draft kernel launches, so a failed launch cannot hand the
    step back: upstream's reconstruct op, the mask and the cache locations build it instead
    (the same tensors), with one log line; later steps take upstream's method."""
    lens, n, seed = [7, 1, 12], 4, 3
    want = _upstream_state(worker_modules, version, lens, n, seed, np.int64)
    failing = LaunchFails("no kernel image")
    monkeypatch.setattr(nd, "_ngram_draft_kernel", failing)
    monkeypatch.setattr(kernel_guard, "_failed", {})
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        got = _state(*_run(worker_modules, version, "patched", lens, n, seed, np.int64))
        again = _state(*_run(worker_modules, version, "patched", lens, n, seed, np.int64))
    assert got == want and again == want
    assert failing.calls == 1
    assert counts() == (2, 0)  # the mask kernel built both steps' masks
    assert [r.getMessage() for r in caplog.records].count(next(
        r.getMessage() for r in caplog.records if "NGRAM draft kernel failed" in r.getMessage())) == 1


def test_a_module_without_the_names_steps_aside(worker_modules, caplog):
    module = types.ModuleType("_ngram_worker_renamed")
    module.NGRAMWorker = type("NGRAMWorker", (Obj,), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        worker = module.NGRAMWorker(draft_token_num=4)
        with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
            assert ngram_verify_inputs.prepare(worker, _batch([3], pool_rows=2, seed=1)) is False
        assert any("lacks the names" in r.getMessage() for r in caplog.records)
    finally:
        sys.modules.pop(module.__name__)

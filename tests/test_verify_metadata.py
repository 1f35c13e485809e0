"""A replayed verify graph's Triton attention metadata in one kernel
(kernels/verify_metadata.py, overlay/verify_metadata.py), byte for byte against
upstream's own method.

SGLang 0.5.17 (the version the site hooks) is not importable next to the 0.5.23 this CPU
runs, so ``TritonAttnBackend._update_target_verify_buffers`` and
``_fill_kv_indptr_and_indices`` are compiled from the 0.5.17 source
(``ci/fetch_upstream_sources.sh``), with 0.5.17's own ``create_flashinfer_kv_indices_triton``
loaded from its file, into a class holding just those two methods (on a GPU machine, where
0.5.17 is installed, the real class), and given the buffers ``init_cuda_graph_state``
allocates. Every buffer starts filled with a sentinel, so a
write upstream does not make (or one it makes that the kernel skips) shows. Tensors live
on the GPU when there is one (Triton's interpreter on the CPU).
"""

from __future__ import annotations

import __future__
import ast
import importlib.util
import logging

import pytest
import torch

from sglang_nwor_scv import config, kernel_guard
from sglang_nwor_scv import verify_metadata as site
from sglang_nwor_scv.kernels import verify_metadata as vm
from sglang_nwor_scv.versions import installed_sglang_version
from tests.stand_ins import LaunchFails

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_METHODS = ("_update_target_verify_buffers", "_fill_kv_indptr_and_indices")


@pytest.fixture(scope="module")
def upstream_backend_class(request):
    """0.5.17's ``TritonAttnBackend``: the installed class where 0.5.17 is installed (the GPU
    machines), else compiled from its source, reduced to the two methods this site replaces."""
    if installed_sglang_version() == "0.5.17":
        from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

        return TritonAttnBackend
    root = request.getfixturevalue("upstream")["0.5.17"] / "python/sglang"
    spec = importlib.util.spec_from_file_location(
        "_sglang_0517_kv_indices", root / "kernels/ops/kvcache/kv_indices.py")
    kv_indices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kv_indices)
    path = root / "srt/layers/attention/triton_backend.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TritonAttnBackend")
    cls.body = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in _METHODS]
    assert sorted(n.name for n in cls.body) == sorted(_METHODS), "0.5.17's backend changed"
    cls.bases, cls.keywords, cls.decorator_list = [], [], []
    code = compile(ast.Module(body=[cls], type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace = {"torch": torch, "update_sliding_window_buffer": None,
                 "create_flashinfer_kv_indices_triton": kv_indices.create_flashinfer_kv_indices_triton}
    exec(code, namespace)
    return namespace["TritonAttnBackend"]


class _Mask:
    def __init__(self, buffer):
        self.buffer = buffer


def _backend(cls, max_bs, n, max_context, seed, mask_dtype=torch.bool):
    """An instance with ``init_cuda_graph_state``'s buffers (dtypes of 0.5.17), each filled
    with a sentinel, and a random ``req_to_token``."""
    g = torch.Generator().manual_seed(seed)
    b = cls.__new__(cls)
    b.device, b.num_draft_tokens, b.sliding_window_size = DEVICE, n, None
    b.window_kv_indptr = None
    b.qo_indptr = torch.full((max_bs + 1,), -3, dtype=torch.int64, device=DEVICE)
    b.kv_indptr = torch.full((max_bs + 1,), -5, dtype=torch.int32, device=DEVICE)
    b.kv_indptr[0] = 0  # zeros at allocation; nothing writes entry 0
    b.mask_indptr = torch.full((max_bs + 1,), -7, dtype=torch.int64, device=DEVICE)
    b.mask_indptr[0] = 0
    b.cuda_graph_kv_indices = torch.full((max_bs * n * max_context,), -9, dtype=torch.int64,
                                         device=DEVICE)
    b._verify_mask = None if mask_dtype is None else _Mask(
        torch.full((max_bs * n * (max_context + n),), 1, dtype=mask_dtype, device=DEVICE))
    b.req_to_token = torch.randint(0, 1 << 30, (max_bs + 3, max_context), dtype=torch.int32,
                                   generator=g).to(DEVICE)
    return b


class _Spec:
    def __init__(self, n, custom_mask):
        self.draft_token_num, self.custom_mask = n, custom_mask


def _inputs(bs, n, lens, max_bs, seed, with_mask=True):
    g = torch.Generator().manual_seed(seed)
    seq_lens = torch.tensor(lens, dtype=torch.int64, device=DEVICE)
    rpi = torch.randperm(max_bs + 3, generator=g)[:bs].to(torch.int64).to(DEVICE)
    total = n * (sum(lens) + bs * n)
    mask = (torch.randint(0, 2, (total,), generator=g).to(torch.bool).to(DEVICE)
            if with_mask else None)
    return seq_lens, rpi, _Spec(n, mask)


def _buffers(b):
    return {k: getattr(b, k).clone() for k in
            ("qo_indptr", "kv_indptr", "mask_indptr", "cuda_graph_kv_indices")} | (
        {"mask": b._verify_mask.buffer.clone()} if b._verify_mask is not None else {})


def _same_result(want, got, got_b):
    """The same tuple as upstream's, its tensors views of the backend's own buffers."""
    assert len(want) == len(got) == 8
    for w, g in zip(want, got, strict=True):
        if w is None or g is None:
            assert w is None and g is None
        else:
            assert torch.equal(w, g) and w.dtype == g.dtype
    owners = (got_b.qo_indptr, got_b.kv_indptr,
              got_b._verify_mask.buffer if got_b._verify_mask is not None else None,
              got_b.mask_indptr)
    for g, owner in zip(got[:4], owners, strict=True):
        assert g is None or g.data_ptr() == owner.data_ptr()


@pytest.fixture
def switched_on(monkeypatch):
    monkeypatch.setenv("SGLANG_SCV_VERIFY_METADATA", "1")
    config.modes.cache_clear()
    yield
    config.modes.cache_clear()


CASES = [  # bs, N, seq_lens (bs 17 and 33 cross the kernel's 16-length summing step)
    (1, 1, [1]), (1, 8, [5]), (1, 8, [2049]), (3, 4, [1, 1030, 2]), (2, 16, [511, 513]),
    (17, 8, [(i * 37) % 300 + 1 for i in range(17)]), (33, 2, [(i * 13) % 41 + 1 for i in range(33)]),
]


if DEVICE == "cuda":  # real shapes: Llama-3-8B NGRAM buckets with long prompts
    CASES += [(1, 8, [8191]), (32, 8, [(i * 997) % 4000 + 64 for i in range(32)]),
              (128, 8, [(i * 331) % 2000 + 1 for i in range(128)])]


@pytest.mark.parametrize("bs,n,lens", CASES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8])
def test_site_writes_what_upstreams_method_writes(upstream_backend_class, switched_on,
                                                  bs, n, lens, mask_dtype):
    max_bs, max_context = bs + 2, max(lens) + 4
    want_b = _backend(upstream_backend_class, max_bs, n, max_context, bs, mask_dtype)
    got_b = _backend(upstream_backend_class, max_bs, n, max_context, bs, mask_dtype)
    seq_lens, rpi, spec = _inputs(bs, n, lens, max_bs, seed=bs * 7 + n)
    want = upstream_backend_class._update_target_verify_buffers(want_b, bs, seq_lens, rpi, spec)
    before = site._counts["kernel"]
    got = site.try_fill(got_b, bs, seq_lens, rpi, spec)
    assert got is not None and site._counts["kernel"] == before + 1
    _same_result(want, got, got_b)
    w, g = _buffers(want_b), _buffers(got_b)
    for k in w:
        assert torch.equal(w[k], g[k]), k


@pytest.mark.parametrize("mask_dtype", [torch.bool, None])
def test_no_custom_mask_leaves_the_mask_buffer_alone(upstream_backend_class, switched_on,
                                                     mask_dtype):
    want_b = _backend(upstream_backend_class, 4, 4, 64, 1, mask_dtype)
    got_b = _backend(upstream_backend_class, 4, 4, 64, 1, mask_dtype)
    before = site._counts["kernel"]
    seq_lens, rpi, spec = _inputs(3, 4, [5, 60, 1], 4, seed=3, with_mask=False)
    want = upstream_backend_class._update_target_verify_buffers(want_b, 3, seq_lens, rpi, spec)
    got = site.try_fill(got_b, 3, seq_lens, rpi, spec)
    _same_result(want, got, got_b)
    assert got[2] is None and site._counts["kernel"] == before + 1
    w, g = _buffers(want_b), _buffers(got_b)
    assert all(torch.equal(w[k], g[k]) for k in w)


def test_kernel_equals_its_reference_with_a_nonzero_first_kv_offset():
    """Upstream's gather starts request 0 at whatever kv_indptr[0] holds; so does the kernel.
    One request: with more, a nonzero kv_indptr[0] shifts request 0's run onto request 1's
    (which starts at the cumsum, without the offset), and upstream's gather, one program per
    request like the kernel, races there too; SGLang keeps kv_indptr[0] at 0. The 3-request
    form of this test passed on the CPU (programs run in order) and failed on an H100 under
    compute-sanitizer (run 49), where the overlapping writes landed in another order."""
    bs, n, lens = 1, 4, [700]
    a = dict(qo_indptr=torch.zeros(6, dtype=torch.int64), kv_indptr=torch.full((6,), 11, dtype=torch.int32),
             kv_indices=torch.full((2000,), -1, dtype=torch.int64),
             mask_indptr=torch.full((6,), 5, dtype=torch.int64),
             mask_buffer=torch.zeros(4000, dtype=torch.bool))
    b = {k: v.clone().to(DEVICE) for k, v in a.items()}
    a = {k: v.to(DEVICE) for k, v in a.items()}
    r2t = torch.randint(0, 1000, (8, 800), dtype=torch.int32).to(DEVICE)
    seq_lens, rpi, spec = _inputs(bs, n, lens, 5, seed=5)
    vm.target_verify_buffers_ref(**a, req_to_token=r2t, req_pool_indices=rpi, seq_lens=seq_lens,
                                 custom_mask=spec.custom_mask, bs=bs, num_draft=n)
    vm.target_verify_buffers(**b, req_to_token=r2t, req_pool_indices=rpi, seq_lens=seq_lens,
                             custom_mask=spec.custom_mask, bs=bs, num_draft=n)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["switch_off", "window", "own_fill", "short_seq_lens",
                                  "mask_too_long", "no_mask_buffer", "no_graph_buffers"])
def test_configurations_the_kernel_does_not_reproduce_run_upstream(upstream_backend_class,
                                                                   monkeypatch, case):
    monkeypatch.setenv("SGLANG_SCV_VERIFY_METADATA", "0" if case == "switch_off" else "1")
    config.modes.cache_clear()
    try:
        cls = upstream_backend_class
        if case == "own_fill":  # a subclass with its own KV-index fill
            cls = type("DcpBackend", (cls,), {"_fill_kv_indptr_and_indices": lambda *a: None})
        b = _backend(cls, 4, 4, 64, 2, mask_dtype=None if case == "no_mask_buffer" else torch.bool)
        seq_lens, rpi, spec = _inputs(3, 4, [5, 60, 1], 4, seed=3)
        if case == "window":
            b.sliding_window_size = 32
        if case == "no_graph_buffers":  # a skip_prefill backend has no qo/mask indptr
            b.qo_indptr = None
        if case == "short_seq_lens":
            seq_lens = seq_lens[:2]
        if case == "mask_too_long":
            spec.custom_mask = torch.ones(b._verify_mask.buffer.shape[0] + 1, dtype=torch.bool,
                                          device=DEVICE)
        before = _buffers(b) if case != "no_graph_buffers" else {}
        assert site.try_fill(b, 3, seq_lens, rpi, spec) is None
        after = _buffers(b) if case != "no_graph_buffers" else {}
        assert all(torch.equal(before[k], after[k]) for k in before)  # nothing written
    finally:
        config.modes.cache_clear()


def test_a_kernel_that_cannot_launch_hands_every_later_step_to_upstream(
        upstream_backend_class, switched_on, monkeypatch, caplog):
    failing = LaunchFails("injected: no kernel image for this GPU")
    monkeypatch.setattr(vm, "_target_verify_buffers_kernel", failing)
    monkeypatch.setattr(kernel_guard, "_failed", {})
    want_b = _backend(upstream_backend_class, 4, 4, 64, 4)
    got_b = _backend(upstream_backend_class, 4, 4, 64, 4)
    seq_lens, rpi, spec = _inputs(3, 4, [5, 60, 1], 4, seed=4)
    upstream = upstream_backend_class._update_target_verify_buffers
    want = upstream(want_b, 3, seq_lens, rpi, spec)
    with caplog.at_level(logging.WARNING, logger="sglang_nwor_scv"):
        for _ in range(3):
            got = site.update_target_verify_buffers(upstream, got_b, 3, seq_lens, rpi, spec)
    assert failing.calls == 1  # never launched again
    assert sum("verify metadata kernel failed" in r.message for r in caplog.records) == 1
    _same_result(want, got, got_b)
    w, g = _buffers(want_b), _buffers(got_b)
    assert all(torch.equal(w[k], g[k]) for k in w)


@pytest.mark.skipif(DEVICE != "cuda", reason="host time of GPU launches (the interpreter runs "
                    "the kernel inside its launch on the CPU)")
@pytest.mark.parametrize("bs", [1, 32, 128])
def test_host_us_per_replay_interleaved(benchmark, upstream_backend_class, switched_on, bs,
                                        rounds=30, calls=200):
    """Host µs per replay's metadata fill, upstream's method against the site, interleaved
    (tests/host_timing.py): per-variant medians, the paired relative difference and its 95%
    CI in ``extra_info`` (the kernels step's bench.json)."""
    from tests.host_timing import interleaved_host_us

    n, lens = 8, [(i * 331) % 2000 + 64 for i in range(bs)]
    benchmark.group = f"verify metadata host us, N {n}, {DEVICE}"
    backend = _backend(upstream_backend_class, bs, n, max(lens) + 4, bs)
    seq_lens, rpi, spec = _inputs(bs, n, lens, bs, seed=bs)
    upstream = upstream_backend_class._update_target_verify_buffers
    result = interleaved_host_us(benchmark, {
        "upstream": lambda: upstream(backend, bs, seq_lens, rpi, spec),
        "one launch": lambda: site.try_fill(backend, bs, seq_lens, rpi, spec)}, rounds, calls)
    diff = result["second_vs_first"]
    benchmark.extra_info.update(bs=bs, n=n, one_launch_vs_upstream=diff, **result)
    print(f"verify metadata bs {bs}: {result}", flush=True)
    assert diff is not None and diff["n"] == rounds

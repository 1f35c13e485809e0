"""NGRAM's verify inputs in one launch (kernels/ngram_draft.py): the kernel against its torch
reference, and the reference against upstream's own three steps.

Upstream's steps: the tree-link reconstruction (on a GPU machine ``sgl_kernel``'s CUDA op,
the one 0.5.17 calls; on the CPU SGLang 0.5.23's Triton port of it, compiled from its
source because the module imports ``sgl_kernel`` at the top), the full mask
(``full_tree_mask_ref``, upstream's loop) and ``assign_extend_cache_locs`` (SGLang's Triton
kernel, installed). Trees come from random draft trees (each node's parent earlier in
order, as NGRAM's BFS trees are) and from raw random masks (the contract holds for any
mask). Every output buffer starts filled with a sentinel.
"""

from __future__ import annotations

import pytest
import torch
import triton

from sglang_nwor_scv.kernels import ngram_draft as nd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SENTINEL = -77


def _tree_mask(bs: int, n: int, g: torch.Generator, raw: bool) -> torch.Tensor:
    if raw:
        return torch.randint(0, 2, (bs * n * n,), generator=g).to(torch.bool)
    masks = []
    for _ in range(bs):
        m = torch.eye(n, dtype=torch.bool)
        for t in range(1, n):
            parent = int(torch.randint(0, t, (1,), generator=g))
            m[t] |= m[parent]
        masks.append(m.reshape(-1))
    return torch.cat(masks)


def _case(bs, n, lens, seed, raw=False):
    g = torch.Generator().manual_seed(seed)
    pool_rows, width = bs + 3, max(lens) + n + 2
    return dict(
        tree_mask=_tree_mask(bs, n, g, raw).to(DEVICE),
        seq_lens=torch.tensor(lens, dtype=torch.int64, device=DEVICE),
        seq_lens_cpu=torch.tensor(lens, dtype=torch.int64),
        req_pool_indices=torch.randperm(pool_rows, generator=g)[:bs].to(torch.int64).to(DEVICE),
        req_to_token=torch.randint(0, 1 << 30, (pool_rows, width), dtype=torch.int32,
                                   generator=g).to(DEVICE))


def _links(bs, n, spare=3):
    return [torch.full((bs * n + spare,), SENTINEL, dtype=torch.int64, device=DEVICE)[: bs * n]
            for _ in range(4)]


CASES = [(1, 2, [1]), (1, 8, [5]), (3, 4, [7, 1, 12]), (2, 16, [600, 3]), (17, 8, list(range(1, 18))),
         (33, 6, [4] * 33), (1, 8, [1030])]


@pytest.mark.parametrize("raw", [False, True], ids=["tree", "raw"])
@pytest.mark.parametrize("bs,n,lens", CASES)
def test_kernel_equals_its_reference(bs, n, lens, raw):
    c = _case(bs, n, lens, seed=bs * 13 + n, raw=raw)
    want_links, got_links = _links(bs, n), _links(bs, n)
    want = nd.ngram_draft_ref(**c, positions=want_links[0], retrieve_index=want_links[1],
                              retrieve_next_token=want_links[2], retrieve_next_sibling=want_links[3],
                              bs=bs, n=n)
    got = nd.ngram_draft(**c, positions=got_links[0], retrieve_index=got_links[1],
                         retrieve_next_token=got_links[2], retrieve_next_sibling=got_links[3], bs=bs, n=n)
    for w, g in zip((*want, *want_links), (*got, *got_links), strict=True):
        assert w.dtype == g.dtype and torch.equal(w, g)


def test_the_links_of_a_chain_and_of_a_star():
    """Two trees worked by hand: a chain 0-1-2-3 and a star (1, 2, 3 children of 0)."""
    chain = torch.tril(torch.ones(4, 4, dtype=torch.bool)).reshape(-1)
    star = torch.eye(4, dtype=torch.bool)
    star[1:, 0] = True
    pos, ri, nxt, sib = nd.reconstruct_ref(torch.cat([chain, star.reshape(-1)]), torch.tensor([10, 20]), 2, 4)
    assert pos.tolist() == [10, 11, 12, 13, 20, 21, 21, 21]
    assert ri.tolist() == list(range(8))
    assert nxt.tolist() == [1, 2, 3, -1, 1, -1, -1, -1]
    assert sib.tolist() == [-1, -1, -1, -1, -1, 2, 3, -1]


@pytest.mark.parametrize("bs,n,lens", CASES[:5])
def test_reference_equals_upstreams_steps(upstream_reconstruct, bs, n, lens):
    """Tree links and cache locations (the full mask's reference is upstream's loop itself,
    tests/test_ngram_mask.py); draft trees only: the CUDA op promises nothing for other masks."""
    from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs

    c = _case(bs, n, lens, seed=bs * 5 + n)
    links = _links(bs, n)
    upstream_reconstruct(c["tree_mask"], c["seq_lens"], *links, bs, n)
    locs = torch.empty(bs * n, dtype=torch.int64, device=DEVICE)
    assign_extend_cache_locs[(bs,)](c["req_pool_indices"], c["req_to_token"], c["seq_lens"],
                                    c["seq_lens"] + n, locs, c["req_to_token"].shape[1],
                                    triton.next_power_of_2(bs))
    mine = _links(bs, n)
    _, my_locs = nd.ngram_draft_ref(**c, positions=mine[0], retrieve_index=mine[1],
                                       retrieve_next_token=mine[2], retrieve_next_sibling=mine[3],
                                       bs=bs, n=n)
    for w, g in zip(links, mine, strict=True):
        assert torch.equal(w, g)
    assert torch.equal(locs, my_locs)


@pytest.mark.skipif(DEVICE != "cuda", reason="host time of GPU launches (the interpreter runs "
                    "the kernel inside its launch on the CPU)")
@pytest.mark.parametrize("bs", [1, 32, 128])
def test_host_us_per_step_interleaved(benchmark, upstream_reconstruct, bs, rounds=30, calls=200):
    """Host µs per verify step's draft inputs: upstream's three launches (the reconstruct op,
    the plugin's full-mask kernel that replaced upstream's loop, ``seq_lens + N`` and
    ``assign_extend_cache_locs_func``) against the one launch, interleaved
    (tests/host_timing.py); the paired difference and its 95% CI in ``extra_info``."""
    from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func

    from sglang_nwor_scv.kernels.ngram_mask import full_tree_mask
    from tests.host_timing import interleaved_host_us

    n, lens = 8, [(i * 331) % 2000 + 64 for i in range(bs)]
    benchmark.group = f"NGRAM draft inputs host us, N {n}, {DEVICE}"
    c = _case(bs, n, lens, seed=bs)
    links = _links(bs, n)

    def upstream():
        upstream_reconstruct(c["tree_mask"], c["seq_lens"], *links, bs, n)
        full_tree_mask(c["tree_mask"], c["seq_lens"], c["seq_lens_cpu"], n)
        assign_extend_cache_locs_func(req_pool_indices=c["req_pool_indices"],
                                      req_to_token=c["req_to_token"], start_offset=c["seq_lens"],
                                      end_offset=c["seq_lens"] + n, batch_size=bs,
                                      draft_token_num=n, device=DEVICE)

    result = interleaved_host_us(benchmark, {
        "upstream": upstream,
        "one launch": lambda: nd.ngram_draft(**c, positions=links[0], retrieve_index=links[1],
                                             retrieve_next_token=links[2],
                                             retrieve_next_sibling=links[3], bs=bs, n=n)},
        rounds, calls)
    benchmark.extra_info.update(bs=bs, n=n, **result)
    print(f"NGRAM draft bs {bs}: {result}", flush=True)


@pytest.mark.skipif(DEVICE != "cuda", reason="host time of GPU launches")
def test_launch_host_us_decomposed(benchmark, monkeypatch, rounds=30, calls=300, bs=1, n=8):
    """Where a plugin launch's host time goes (issue 14: "launchers cached"): the wrapper
    (host-side sizes, output allocation, launch), Triton's ``kernel[grid](...)`` alone (its
    binder, cache key, globals check, launch), the plugin's launch (kernels/launcher.py: its
    own key, then the kept kernel's ``run``) and that ``run`` alone, interleaved. Both kept
    launches must write what Triton's launch writes."""
    from sglang_nwor_scv.kernels import launcher
    from sglang_nwor_scv.kernels.launcher import launch
    from tests.host_timing import interleaved_host_us

    monkeypatch.setattr(launcher, "_enabled", [True])  # whatever the switch's default
    monkeypatch.setattr(launcher, "_kept", {})

    c = _case(bs, n, [700], seed=5)
    links = _links(bs, n)
    full = torch.empty(n * 700 + bs * n * n, dtype=torch.bool, device=DEVICE)
    locs = torch.empty(bs * n, dtype=torch.int64, device=DEVICE)
    grid, args, consts = nd.launch_args(c["tree_mask"], c["seq_lens"], c["req_pool_indices"],
                                        c["req_to_token"], full, locs, links, bs, n, 700)
    compiled = nd._ngram_draft_kernel[grid](*args, **consts)
    want = [t.clone() for t in (full, locs, *links)]
    values = [*args, *(consts[k] for k in nd._ngram_draft_kernel.arg_names[len(args):])]
    stream = torch.cuda.current_stream().cuda_stream

    def cached():
        compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *values)

    for t in (full, locs, *links):
        t.fill_(0)
    cached()
    torch.cuda.synchronize()
    assert all(torch.equal(w, g) for w, g in zip(want, (full, locs, *links), strict=True))
    for t in (full, locs, *links):
        t.fill_(0)
    launch(nd._ngram_draft_kernel, grid, args, consts)  # kernels/launcher.py: first keeps, then runs kept
    launch(nd._ngram_draft_kernel, grid, args, consts)
    torch.cuda.synchronize()
    assert all(torch.equal(w, g) for w, g in zip(want, (full, locs, *links), strict=True))
    result = interleaved_host_us(benchmark, {  # second against first: the plugin's launch against Triton's
        "triton launch": lambda: nd._ngram_draft_kernel[grid](*args, **consts),
        "plugin launch": lambda: launch(nd._ngram_draft_kernel, grid, args, consts),
        "cached run": cached,
        "wrapper": lambda: nd.ngram_draft(**c, positions=links[0], retrieve_index=links[1],
                                          retrieve_next_token=links[2], retrieve_next_sibling=links[3],
                                          bs=bs, n=n)}, rounds, calls)
    benchmark.extra_info.update(bs=bs, n=n, **result)
    print(f"launch decomposition bs {bs}: {result}", flush=True)

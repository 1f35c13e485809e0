"""NGRAM's full verify mask in one kernel (kernels/ngram_mask.py), bit for bit against
upstream's per-request loop, and in the real engine (CPU): SGLang's NGRAM worker builds
the full mask on any non-CPU-engine build, the CPU test engine included, so the engine
test swaps the real loop for the kernel and compares outputs with upstream's. The kernel
cases put their device tensors on the GPU when there is one (Triton's interpreter on the CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_nwor_scv.kernels.ngram_mask import full_tree_mask, full_tree_mask_ref
from tools.engine_run import run_engine
from tools.make_tiny_models import encode
from tests.upstream_memo import upstream_run


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(bs: int, n: int, lens: list[int], seed: int):
    """(tree mask, seq_lens) on the host, as upstream's loop reads them."""
    g = torch.Generator().manual_seed(seed)
    tree = torch.randint(0, 2, (bs * n * n,), generator=g).to(torch.bool)
    seq_lens = torch.tensor(lens, dtype=torch.int64)
    return tree, seq_lens


@pytest.mark.parametrize("bs,n,lens", [
    (1, 1, [1]), (1, 8, [5]), (3, 4, [1, 7, 2]), (2, 8, [511, 513]), (4, 6, [1030, 3, 600, 1]),
    (5, 2, [17, 17, 17, 17, 17]), (37, 3, [(i * 13) % 41 + 1 for i in range(37)]),
    (16, 2, [3] * 16), (17, 2, [2] * 17)])
def test_full_mask_equals_upstreams_loop(bs, n, lens):
    tree, seq_lens = _case(bs, n, lens, seed=bs * 31 + n)
    want = full_tree_mask_ref(tree, seq_lens, n, device=DEVICE)
    got = full_tree_mask(tree.to(DEVICE), seq_lens.to(DEVICE), seq_lens, n)
    assert got.dtype == torch.bool and got.shape == want.shape
    assert torch.equal(got, want)


def test_full_mask_reads_only_the_first_bs_rows_of_a_preallocated_buffer():
    tree, seq_lens = _case(3, 4, [9, 2, 4], seed=7)
    big = torch.cat([tree, torch.ones(4 * 16, dtype=torch.bool)])  # upstream's buffer is max-bs long
    lens_dev = torch.cat([seq_lens, torch.tensor([99])])  # a padded seq_lens view
    want = full_tree_mask_ref(tree, seq_lens, 4, device=DEVICE)
    assert torch.equal(full_tree_mask(big.to(DEVICE), lens_dev.to(DEVICE), seq_lens, 4), want)
    # the engine's path: upstream's whole host seq_lens buffer and the batch size, no slice
    lens_cpu = torch.cat([seq_lens, torch.tensor([99, 7])])
    assert torch.equal(full_tree_mask(big.to(DEVICE), lens_dev.to(DEVICE), lens_cpu, 4, bs=3), want)


@pytest.mark.engine
@pytest.mark.parametrize("spec", ["ngram-tree", "ngram-chain", "ngram-tree+no-draft"])
def test_engine_outputs_identical_with_the_mask_kernel(spec, tiny_models, tmp_path):
    """Defaults: the mask (and the tree links and cache locations) from the draft kernel;
    +no-draft: the mask kernel alone, upstream's reconstruct op and cache locations."""
    spec, _, no_draft = spec.partition("+")
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]
    totals = tmp_path / "totals.json"
    off = upstream_run(spec, tiny_models, prompts)
    on = run_engine(spec, tiny_models, prompts, plugin_on=True,  # the kernels are defaults
                    extra_env={"SGLANG_NWOR_SCV_TOTALS": str(totals), "SGLANG_NWOR_SCV_LOG_INTERVAL": "1",
                               **({"SGLANG_SCV_NGRAM_DRAFT": "0"} if no_draft else {})})
    assert on.outputs == off.outputs
    t = json.loads(totals.read_text())
    assert t["ngram_mask_kernel"] > 0 and t["violations"] == 0, t
    assert t["ngram_draft_kernel"] == (0 if no_draft else t["ngram_mask_kernel"]), t


@pytest.mark.engine
def test_engine_outputs_identical_with_the_draft_kernel(tiny_models, tmp_path):
    """SGLANG_SCV_NGRAM_DRAFT=1: tree links, full mask and cache locations of every NGRAM
    verify step from one launch (kernels/ngram_draft.py) in the real engine; outputs equal
    upstream's and the invariants hold (the cache locations decide where the KV goes)."""
    prompts = [encode(p) for p in ("The old miller watched", "Seven stones", "The village bell")]
    totals = tmp_path / "totals.json"
    off = upstream_run("ngram-tree", tiny_models, prompts)
    on = run_engine("ngram-tree", tiny_models, prompts, plugin_on=True,
                    extra_env={"SGLANG_SCV_NGRAM_DRAFT": "1", "SGLANG_NWOR_SCV_TOTALS": str(totals),
                               "SGLANG_NWOR_SCV_LOG_INTERVAL": "1", "SGLANG_NWOR_SCV_DEBUG": "1"})
    assert on.outputs == off.outputs
    t = json.loads(totals.read_text())
    assert t["ngram_draft_kernel"] == t["ngram_mask_kernel"] == t["verify_steps"] > 0, t
    assert t["violations"] == 0, t


@pytest.mark.parametrize("switch,hooked", [("0", False), ("1", True)])
def test_the_mask_site_is_hooked_only_when_switched_on(monkeypatch, switch, hooked):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_nwor_scv import config, hooks
    from sglang_nwor_scv.adapters import v0_5_23

    monkeypatch.setenv("SGLANG_SCV_NGRAM_MASK", switch)
    config.modes.cache_clear()
    targets = []
    monkeypatch.setattr(HookRegistry, "register", classmethod(lambda cls, target, *a: targets.append(target)))
    try:
        hooks.register_all(v0_5_23)
    finally:
        config.modes.cache_clear()
    assert (v0_5_23.TARGETS["ngram_mask"] in targets) is hooked
    assert v0_5_23.TARGETS["model_forward"] in targets


@pytest.mark.parametrize("env,want", [({}, True), ({"SGLANG_SCV_NGRAM_MASK": "0"}, False),
                                      ({"SGLANG_NWOR_MODE": "bogus"}, False)])
def test_the_patched_call_site_asks_the_same_switches(monkeypatch, env, want):
    """Patch 0007 asks ``wanted`` directly (no hook in between): off when switched off, and
    off when any switch is bad (the plugin steps aside, so must the patched tree)."""
    from types import SimpleNamespace

    from sglang_nwor_scv import config, ngram_mask

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config.modes.cache_clear()
    try:
        assert ngram_mask.wanted(SimpleNamespace(has_grammar=False)) is want
        assert ngram_mask.wanted(SimpleNamespace(has_grammar=True)) is False
    finally:
        for k in env:
            monkeypatch.delenv(k)
        config.modes.cache_clear()


def test_a_failing_kernel_steps_aside_to_upstreams_loop(monkeypatch, caplog):
    """The mask runs before every NGRAM verify launch: if the kernel ever raises (a Triton
    build CI never saw), that step and the later ones get upstream's loop, the same tensor,
    with one log line, and the server keeps serving."""
    from types import SimpleNamespace

    from sglang_nwor_scv import kernel_guard, ngram_mask
    from sglang_nwor_scv.kernels import ngram_mask as kernel
    from tests.stand_ins import LaunchFails

    tree, seq_lens = _case(3, 4, [9, 2, 4], seed=11)
    big = torch.cat([tree, torch.zeros(4 * 16, dtype=torch.bool)]).to(DEVICE)  # max-bs buffer
    batch = SimpleNamespace(reqs=[0, 1, 2], seq_lens=seq_lens.to(DEVICE), seq_lens_cpu=seq_lens)
    want = full_tree_mask_ref(tree, seq_lens, 4, device=DEVICE)
    assert torch.equal(ngram_mask.full_mask(big, batch, 4), want)  # the kernel

    failing = LaunchFails("no kernel image")
    monkeypatch.setattr(kernel, "_full_tree_mask_kernel", failing)
    monkeypatch.setattr(kernel_guard, "_failed", {})
    with caplog.at_level("WARNING", logger="sglang_nwor_scv"):
        first = ngram_mask.full_mask(big, batch, 4)
        second = ngram_mask.full_mask(big, batch, 4)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert failing.calls == 1, "the kernel is not retried after a failure"
    lines = [r.getMessage() for r in caplog.records if "NGRAM mask kernel failed" in r.getMessage()]
    assert len(lines) == 1 and "no kernel image" in lines[0]

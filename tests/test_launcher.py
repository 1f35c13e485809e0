"""kernels/launcher.py: the kept compiled kernel is always the one Triton would launch.

On the CPU: the key is finer than Triton's own specialisation (checked against Triton's
``native_specialize_impl`` over tensors at every byte offset and integers at every boundary),
and under the interpreter, with a launch hook set or with an argument the key cannot describe,
Triton's own launch runs. On a GPU: a kept launch writes what Triton's writes, a second
specialisation (a misaligned view) gets its own kept kernel, and a kept launch does not
touch ``JITFunction.run`` at all."""

from __future__ import annotations

import itertools

import pytest
import torch

from sglang_nwor_scv.kernels import launcher
from sglang_nwor_scv.kernels.ngram_mask import _full_tree_mask_kernel, full_tree_mask, full_tree_mask_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton_specialisation(a):
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    return native_specialize_impl(BaseBackend, a, False, True, True)


def _sample_args():
    base = torch.zeros(256, dtype=torch.uint8)
    tensors = [base[o:o + 32].view(dtype) for o in range(0, 32, 1)
               for dtype in (torch.uint8, torch.bool)]
    tensors += [base[o:o + 64].view(dtype) for o in range(0, 32, 4) for dtype in (torch.int32, torch.float32)]
    tensors += [base[o:o + 64].view(torch.int64) for o in range(0, 32, 8)]
    ints = [v + d for v in (0, 1, 16, 2**31, 2**32, 2**63, -(2**31), -16) for d in (-2, -1, 0, 1, 2)]
    ints = [v for v in ints if -(2**63) <= v < 2**64]
    return tensors + ints + [True, False, 0.0, 1.5, None]


def test_the_key_is_finer_than_tritons_specialisation():
    """Two arguments with the same key must get the same Triton specialisation; otherwise a
    kept kernel could be launched with an argument Triton would have compiled differently
    (a misaligned pointer under an aligned kernel's vector loads)."""
    groups: dict = {}
    for a in _sample_args():
        groups.setdefault(launcher._args_key([a]), set()).add(_triton_specialisation(a))
    mixed = {k: v for k, v in groups.items() if len(v) > 1}
    assert not mixed, mixed
    # ...and the key does tell apart what Triton tells apart
    assert len(groups) >= len({_triton_specialisation(a) for a in _sample_args()})


def test_arguments_the_key_cannot_describe_are_refused():
    for a in ((1, 2), "x", object()):
        with pytest.raises(TypeError, match="no cached-launch key"):
            launcher._args_key([a])


def test_a_launch_hook_means_tritons_path():
    from triton import knobs

    def hook(metadata):
        pass

    assert not launcher._hooks_set()
    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):  # Triton >= 3.7: a chain of hooks
        chain.add(hook)
        try:
            assert launcher._hooks_set()
        finally:
            chain.remove(hook)
    else:  # Triton 3.6: one hook or None
        knobs.runtime.launch_enter_hook = hook
        try:
            assert launcher._hooks_set()
        finally:
            knobs.runtime.launch_enter_hook = chain
    assert not launcher._hooks_set()


def test_the_switch_turns_it_off(monkeypatch):
    from sglang_nwor_scv import config

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for raw, want in (("0", False), ("1", True), ("", True)):  # on by default since run 58
        monkeypatch.setenv("SGLANG_SCV_CACHED_LAUNCH", raw)
        config.modes.cache_clear()
        assert launcher._wanted() is want
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launcher._wanted() is False  # the interpreter compiles nothing to keep
    config.modes.cache_clear()


def _mask_case(bs, n, seed, offset=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 200, (bs,), generator=g)
    tree = torch.rand(bs * n * n + offset, generator=g) < 0.5
    return tree, lens


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs on the CPU only")
def test_under_the_interpreter_nothing_is_kept(monkeypatch):
    monkeypatch.setattr(launcher, "_kept", {})
    monkeypatch.setattr(launcher, "_enabled", [])
    tree, lens = _mask_case(3, 4, seed=1)
    launcher.take_counts()
    got = full_tree_mask(tree, lens, lens, 4)
    assert torch.equal(got, full_tree_mask_ref(tree, lens, 4))
    assert launcher._enabled == [False] and launcher._kept == {}
    assert launcher.take_counts() == {"kept": 0, "triton": 1}
    assert launcher.take_counts() == {"kept": 0, "triton": 0}  # taken: zeroed


@pytest.mark.gpu
def test_a_kept_launch_writes_what_tritons_launch_writes(monkeypatch):
    """The mask kernel at real sizes: the first launch of a specialisation goes through
    Triton and is kept, later ones run the kept kernel (``JITFunction.run`` then raises, so a
    pass proves it was not called), and a view 1 byte off gets its own kernel."""
    from triton.runtime.jit import JITFunction

    monkeypatch.setattr(launcher, "_kept", {})
    monkeypatch.setattr(launcher, "_enabled", [True])
    n = 8
    tree, lens = _mask_case(32, n, seed=2, offset=1)
    dev_tree, dev_lens = tree.to(DEVICE), lens.to(DEVICE)
    first = full_tree_mask(dev_tree[: 32 * n * n], dev_lens, lens, n)
    assert len(launcher._kept) == 1
    real_run = JITFunction.run

    def no_triton(self, *a, **k):
        raise AssertionError("a kept specialisation went through JITFunction.run")

    monkeypatch.setattr(JITFunction, "run", no_triton)
    launcher.take_counts()
    for seed in range(3, 8):  # same specialisation, other values
        t, ln = _mask_case(32, n, seed=seed)
        got = full_tree_mask(t.to(DEVICE), ln.to(DEVICE), ln, n)
        assert torch.equal(got.cpu(), full_tree_mask_ref(t, ln, n))
    assert len(launcher._kept) == 1
    assert launcher.take_counts() == {"kept": 5, "triton": 0}
    assert torch.equal(first.cpu(), full_tree_mask_ref(tree[: 32 * n * n], lens, n))
    monkeypatch.setattr(JITFunction, "run", real_run)
    shifted = dev_tree[1:]  # 1 byte off: Triton drops the pointer's alignment
    got = full_tree_mask(shifted, dev_lens, lens, n)
    assert len(launcher._kept) == 2
    assert torch.equal(got.cpu(), full_tree_mask_ref(tree[1:], lens, n))
    keys = [k for k in launcher._kept if k[0] is _full_tree_mask_kernel]
    assert {k[1][1] for k in keys} == {True, False}  # the tree pointer's alignment told apart


@pytest.mark.gpu
def test_every_batch_size_shares_one_kept_kernel(monkeypatch):
    """The mask kernel's batch size is its grid, not an argument: over a serving run's batch
    sizes the cache holds one kernel (fresh allocations are all 16-byte aligned)."""
    monkeypatch.setattr(launcher, "_kept", {})
    monkeypatch.setattr(launcher, "_enabled", [True])
    n = 4
    for bs, seed in itertools.product((1, 2, 3, 5, 16, 32, 33), (0, 1)):
        tree, lens = _mask_case(bs, n, seed=seed)
        got = full_tree_mask(tree.to(DEVICE), lens.to(DEVICE), lens, n)
        assert torch.equal(got.cpu(), full_tree_mask_ref(tree, lens, n)), bs
    assert len(launcher._kept) == 1

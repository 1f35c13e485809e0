"""Eligibility: NWOR refuses, with a reason, every configuration where staging is
not known to be safe. Real SGLang classes; instances made without their heavy
constructors (only their type and a few flags are read)."""

from __future__ import annotations

from types import SimpleNamespace

from tests.stand_ins import Obj

import pytest
import torch

from sglang_nwor_scv.eligibility import nwor_refusal


def _new(cls, **attrs):
    obj = object.__new__(cls)
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


def _runner(backend=None, pool=None, algo="NGRAM", **args):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    if backend is None:
        backend = _new(TritonAttnBackend, enable_deterministic=False, dcp_size=1)
    if pool is None:
        pool = MHATokenToKVPool(size=16, page_size=1, dtype=torch.float32, head_num=1,
                                head_dim=4, layer_num=1, device="cpu", enable_memory_saver=False)
    server_args = SimpleNamespace(speculative_algorithm=algo, enable_multi_layer_eagle=False, **args)
    return Obj(attn_backend=backend, token_to_kv_pool=pool, server_args=server_args,
               is_draft_worker=False)


def test_supported_configuration_is_accepted():
    for algo in ("NGRAM", "EAGLE", "EAGLE3", "STANDALONE"):
        assert nwor_refusal(_runner(algo=algo)) is None


def test_other_attention_backends_are_refused():
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    reason = nwor_refusal(_runner(backend=_new(TorchNativeAttnBackend)))
    assert "TorchNativeAttnBackend" in reason and "attention_backend='triton'" in reason


@pytest.mark.parametrize("flags,needle", [
    ({"enable_deterministic": True}, "deterministic"),
    ({"dcp_size": 2}, "context parallelism"),
])
def test_backend_modes_that_read_the_pool_are_refused(flags, needle):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    backend = _new(TritonAttnBackend, **{"enable_deterministic": False, "dcp_size": 1, **flags})
    assert needle in nwor_refusal(_runner(backend=backend))


def test_other_pools_and_algorithms_are_refused():
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    class DerivedPool(MHATokenToKVPool):  # e.g. a subclass with its own layout
        pass

    assert "DerivedPool" in nwor_refusal(_runner(pool=_new(DerivedPool)))
    assert "DFLASH" in nwor_refusal(_runner(algo="DFLASH"))
    assert "multi-layer" in nwor_refusal(_multi_layer())
    draft = _runner()
    draft.is_draft_worker = True
    assert "draft" in nwor_refusal(draft)


def _multi_layer():
    r = _runner()
    r.server_args.enable_multi_layer_eagle = True
    return r

"""SGLang's speculative-verify ops, looked up for the installed SGLang version.

The acceptance-kernel tests (``tests/test_verify_accept.py``,
``tests/gpu/test_verify_accept_gpu.py``) and ``tests/gpu/bench_verify_accept.py``
build verify trees with SGLang's own builders and compare against SGLang's own
verify and glue ops. Those ops moved between the two supported versions, so each
is looked up here: the 0.5.23 location first, then the 0.5.17 one. Nothing here
copies upstream code; where 0.5.17 has no function of its own for a step, the
helper below runs what 0.5.17's worker runs at that point instead.

Where each lives (``ops.`` = ``sglang.kernels.ops.speculative.``,
``spec.`` = ``sglang.srt.speculative.``):

==============================  ===========================  ====================================
name                            SGLang 0.5.23                SGLang 0.5.17
==============================  ===========================  ====================================
TreeMaskMode                    ops.spec_tree                spec.eagle_utils
sgl_build_tree_kernel_triton    ops.spec_tree                spec.eagle_utils
verify_tree_greedy_triton       ops.spec_tree                spec.eagle_utils
verify_tree_greedy_func         ops.spec_tree                spec.eagle_utils
build_chain_tree                ops.eagle                    none; :func:`build_chain` runs
                                                             spec.eagle_utils.
                                                             build_tree_kernel_efficient, topk=1
reconstruct_indices_from_       ops.reconstruct_tree         sgl_kernel.speculative.
tree_mask                       (``..._triton``)             reconstruct_indices_from_tree_mask
                                                             (CUDA only)
fill_bonus_tokens_func          ops.eagle                    ops.eagle
prepare_verify_commit_outputs   ops.eagle                    none; :func:`commit_outputs` runs
                                                             ``seq_lens + accept_lens`` and
                                                             fill_bonus_tokens_func
fill_front_out_cache_loc_func   ops.cache_locs               none; its move reads the targets
                                                             from req_to_token with
                                                             ops.cache_locs.
                                                             assign_extend_cache_locs
move_accept_tokens_to_          spec.spec_utils              spec.spec_utils
target_kvcache                  (calls the two               (assign_extend_cache_locs +
                                fill_*_out_cache_loc)        fill_accept_out_cache_loc_func)
==============================  ===========================  ====================================

A name found nowhere raises :class:`MissingSpecOp`, naming the version and
every location tried.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import SimpleNamespace

import torch

_SPEC_TREE = "sglang.kernels.ops.speculative.spec_tree"
_EAGLE_UTILS = "sglang.srt.speculative.eagle_utils"
_EAGLE_OPS = "sglang.kernels.ops.speculative.eagle"

# name -> locations ("module" or "module:attribute"), 0.5.23's first.
LOCATIONS: dict[str, tuple[str, ...]] = {
    "TreeMaskMode": (_SPEC_TREE, _EAGLE_UTILS),
    "sgl_build_tree_kernel_triton": (_SPEC_TREE, _EAGLE_UTILS),
    "verify_tree_greedy_triton": (_SPEC_TREE, _EAGLE_UTILS),
    "verify_tree_greedy_func": (_SPEC_TREE, _EAGLE_UTILS),
    "build_chain_tree": (_EAGLE_OPS,),
    "build_tree_kernel_efficient": (_EAGLE_UTILS,),
    "reconstruct_indices_from_tree_mask": (
        "sglang.kernels.ops.speculative.reconstruct_tree:reconstruct_indices_from_tree_mask_triton",
        "sgl_kernel.speculative",
    ),
    "fill_bonus_tokens_func": (_EAGLE_OPS,),
    "prepare_verify_commit_outputs": (_EAGLE_OPS,),
    "fill_front_out_cache_loc_func": ("sglang.kernels.ops.speculative.cache_locs",),
    "move_accept_tokens_to_target_kvcache": ("sglang.srt.speculative.spec_utils",),
}


class MissingSpecOp(ImportError):
    """The installed SGLang has a speculative op at none of the known locations."""


def sglang_version() -> str:
    try:
        from sglang.version import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


@cache
def _lookup(name: str):
    """(object, "module:attribute") or (None, why-not)."""
    tried = []
    for loc in LOCATIONS[name]:
        module, _, attr = loc.partition(":")
        attr = attr or name
        try:
            return getattr(importlib.import_module(module), attr), f"{module}:{attr}"
        except (ImportError, AttributeError) as exc:
            first_line = next((x.strip() for x in str(exc).splitlines() if x.strip()), "")
            tried.append(f"{module}:{attr} ({type(exc).__name__}: {first_line})")
    return None, "; ".join(tried)


def has(name: str) -> bool:
    return _lookup(name)[0] is not None


def where(name: str) -> str | None:
    """The "module:attribute" ``name`` resolved to, or None."""
    obj, loc = _lookup(name)
    return loc if obj is not None else None


def get(name: str):
    obj, loc = _lookup(name)
    if obj is None:
        raise MissingSpecOp(
            f"SGLang {sglang_version()} has no {name}; tried {loc}. "
            "tests/sglang_spec_ops.py knows SGLang 0.5.23 and 0.5.17."
        )
    return obj


# ---------------------------------------------------------------------------
# Steps whose upstream shape differs between the versions.
# ---------------------------------------------------------------------------


def build_chain(bonus: torch.Tensor, drafts: torch.Tensor, seq_lens: torch.Tensor):
    """The EAGLE topk=1 verify tree (a chain of N = steps + 1 nodes) as the
    installed SGLang builds it. Returns (tokens [bs*N], retrieve_index,
    retrieve_next_token, retrieve_next_sibling), each retrieve ``[bs, N]``.

    0.5.23: ``build_chain_tree`` (what ``build_eagle_verify_input`` runs for
    topk=1). 0.5.17 has no chain builder: its ``build_eagle_verify_input`` runs
    ``build_tree_kernel_efficient`` (the ``sgl_kernel`` CUDA op on CUDA) with
    the runtime-invariant chain ``parent_list`` / ``top_scores_index`` that
    ``EagleDraftWorkerBase._rebuild_topk1_chain_buffers`` preallocates. That
    method needs a draft worker and SGLang's runtime context, so the two
    constants are built here with plain torch, to the same values:
    ``arange(-1, steps - 1)`` (width 0 for one step) and ``arange(steps)``,
    one row per request.
    """
    if has("build_chain_tree"):
        _, _, ri, nt, ns, tokens, _, _ = get("build_chain_tree")(bonus, drafts, seq_lens)
        return tokens, ri, nt, ns
    bs, steps = drafts.shape
    dev = seq_lens.device
    parent_width = steps if steps > 1 else 0
    parent_list = torch.arange(-1, parent_width - 1, dtype=torch.long, device=dev).repeat(bs, 1)
    top_scores_index = torch.arange(steps, dtype=torch.long, device=dev).repeat(bs, 1)
    tree_mask_mode = get("TreeMaskMode").QLEN_ONLY  # the mode 0.5.23 builds chains for
    _, _, ri, nt, ns, tokens = get("build_tree_kernel_efficient")(
        bonus,
        parent_list,
        top_scores_index,
        drafts,
        seq_lens,
        0,  # seq_lens_sum: only sizes a FULL_MASK
        1,  # topk
        steps,
        steps + 1,
        tree_mask_mode,
    )
    return tokens, ri, nt, ns


def fill_bonus(predict: torch.Tensor, accept_index: torch.Tensor, accept_lens: torch.Tensor):
    """Bonus tokens by ``fill_bonus_tokens_func`` on ``predict[accept_index]``,
    as the EAGLE worker's verify does off CUDA (0.5.23) or always (0.5.17)."""
    bs, d = accept_index.shape
    bonus = torch.empty_like(accept_lens, dtype=torch.int32)
    get("fill_bonus_tokens_func")(predict[accept_index], accept_lens, bonus, d, bs)
    return bonus


def commit_outputs(predict, accept_index, accept_lens, seq_lens):
    """(new_seq_lens, bonus_tokens) as the EAGLE worker's verify computes them
    on CUDA after ``eagle_sample``.

    0.5.23: ``prepare_verify_commit_outputs`` (one fused kernel). 0.5.17 has no
    such function; its ``run_eagle_verify`` (eagle_worker_common.py) computes
    ``batch.seq_lens + accept_lens`` and then the bonus with
    ``fill_bonus_tokens_func`` (:func:`fill_bonus`), which is what runs here."""
    if has("prepare_verify_commit_outputs"):
        return get("prepare_verify_commit_outputs")(predict, accept_index, accept_lens, seq_lens)
    new_seq_lens = seq_lens + accept_lens
    return new_seq_lens, fill_bonus(predict, accept_index, accept_lens)


class _RecordingKVCache:
    """KV-pool stand-in: ``move_kv_cache`` records its slot lists, moves nothing."""

    tgt = src = None

    def move_kv_cache(self, tgt_loc, src_loc):
        self.tgt, self.src = tgt_loc, src_loc

    def get_kvcache(self):  # doubles as the allocator
        return self


class KVMove:
    """The (target slot, source slot) lists of SGLang's KV move of the accepted
    path: the installed SGLang's own ``move_accept_tokens_to_target_kvcache``,
    run on a stand-in batch with a KV pool that records instead of moving.

    ``out_cache_loc`` is the verify window (N slots per request), ``seq_lens``
    the lengths before the step. 0.5.23 reads the targets from that window
    (``fill_front_out_cache_loc_func``); 0.5.17 reads them from
    ``req_to_token[req, seq_len : seq_len + accept_len]`` with
    ``assign_extend_cache_locs``. The stand-in batch carries a ``req_to_token``
    (int32, as SGLang's) holding each request's window at
    ``[seq_len, seq_len + N)``, where 0.5.17's verify prepare allocated it and
    read ``out_cache_loc`` from; it is test setup, built with plain torch.
    Build once per shape, call per step (the bench times the call)."""

    def __init__(self, out_cache_loc: torch.Tensor, seq_lens: torch.Tensor, draft_token_num: int):
        bs, n = seq_lens.numel(), draft_token_num
        dev = seq_lens.device
        width = int(seq_lens.max()) + n if bs else n
        req_to_token = torch.zeros((max(bs, 1), width), dtype=torch.int32, device=dev)
        cols = seq_lens.view(bs, 1) + torch.arange(n, device=dev)
        req_to_token.scatter_(1, cols, out_cache_loc.view(bs, n).to(torch.int32))
        self.batch = SimpleNamespace(
            seq_lens=seq_lens,
            out_cache_loc=out_cache_loc,
            req_pool_indices=torch.arange(bs, dtype=torch.int64, device=dev),
            req_to_token_pool=SimpleNamespace(req_to_token=req_to_token),
        )
        self.kv = _RecordingKVCache()
        self._move = get("move_accept_tokens_to_target_kvcache")

    def __call__(self, accept_index: torch.Tensor, num_correct_drafts: torch.Tensor):
        """(tgt, src) int64 ``[bs * accept_index.shape[1]]``, zero past the packed list."""
        self._move(self.batch, accept_index, num_correct_drafts, self.kv)
        return self.kv.tgt, self.kv.src

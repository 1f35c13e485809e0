"""The scheduler's batch snapshot, pinned record and forward-only sampling copy
(``overlay/batch_snapshot.py``) against upstream's own methods, in 0.5.17 and 0.5.23.

Upstream's ``Scheduler._forward_isolation``, ``Scheduler.record_batch_in_overlap`` and
``SamplingBatchInfo.copy_for_forward`` are compiled from each release's source
(``ci/fetch_upstream_sources.sh``; 0.5.17 is not importable beside the 0.5.23 this CPU
runs) and run on the same real ``ScheduleBatch``, ``SamplingBatchInfo`` and penalizer
orchestrator as the plugin's. The check: the same objects end up in the same places, before,
during and after the forward, including what a speculative worker rebinds mid-forward.
The engine tests run the hooked methods inside real servers (on by default).

    pytest tests/test_batch_snapshot.py -k host_us --benchmark-enable
"""

from __future__ import annotations

import __future__
import ast
import dataclasses
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.penaltylib.orchestrator import BatchedPenalizerOrchestrator
from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

from sglang_nwor_scv import batch_snapshot, hooks
from sglang_nwor_scv.config import SWITCHES

_SOURCES = {  # file under python/sglang/srt -> (class, methods)
    "managers/scheduler.py": ("Scheduler", ("_forward_isolation", "record_batch_in_overlap")),
    "sampling/sampling_batch_info.py": ("SamplingBatchInfo", ("copy_for_forward",)),
}
_VERSIONS = ("0.5.17", "0.5.23")


def _method_defs(root: Path) -> dict[str, ast.FunctionDef]:
    out = {}
    for rel, (cls_name, names) in _SOURCES.items():
        tree = ast.parse((root / "python/sglang/srt" / rel).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                out[node.name] = node
    assert sorted(out) == sorted(n for _, ns in _SOURCES.values() for n in ns), f"{root}: moved"
    return out


@pytest.fixture(scope="module")
def upstream_methods(upstream) -> dict[str, dict]:
    """version -> upstream's three methods, compiled from that release's source."""
    out = {}
    for version in _VERSIONS:
        defs = _method_defs(upstream[version])
        for d in defs.values():  # keep @contextmanager; drop nvtx/stage decorators if any
            d.decorator_list = [x for x in d.decorator_list
                                if isinstance(x, ast.Name) and x.id == "contextmanager"]
        module = ast.Module(body=list(defs.values()), type_ignores=[])
        code = compile(module, f"sglang-{version}", "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        namespace = {"dataclasses": dataclasses, "contextmanager": contextmanager}
        exec(code, namespace)
        out[version] = {name: namespace[name] for name in defs}
    return out


def test_both_releases_have_the_bodies_the_plugin_replaces(upstream):
    """One implementation serves both adapters only while 0.5.17's and 0.5.23's bodies are
    the same; a release that changes one must fail here, not drift."""
    dumps = {v: {n: ast.dump(ast.Module(body=d.body, type_ignores=[]))
                 for n, d in _method_defs(upstream[v]).items()} for v in _VERSIONS}
    assert dumps["0.5.17"] == dumps["0.5.23"]


class _Penalizers(BatchedPenalizerOrchestrator):
    """A real orchestrator with no penalizer; ``required`` takes ``update_penalties``'s
    accumulating branch (it allocates new tensors, which the copy must carry)."""

    def __init__(self, batch, required: bool):
        super().__init__(vocab_size=11, batch=batch, penalizers=set())
        self.is_required = required


def _sampling_info(batch, required: bool) -> SamplingBatchInfo:
    bs = 3
    info = SamplingBatchInfo(
        temperatures=torch.ones(bs, 1), top_ps=torch.ones(bs), top_ks=torch.ones(bs, dtype=torch.int32),
        min_ps=torch.zeros(bs), is_all_greedy=True, is_any_greedy=True, need_top_p_sampling=False,
        need_top_k_sampling=False, need_min_p_sampling=False, vocab_size=11, device="cpu")
    info.penalizer_orchestrator = _Penalizers(batch, required)
    return info


def _batch(spec: bool, required: bool = False) -> ScheduleBatch:
    """A real ScheduleBatch whose every field holds a distinct object (identity checks)."""
    batch = object.__new__(ScheduleBatch)
    for f in dataclasses.fields(ScheduleBatch):
        setattr(batch, f.name, object())
    batch.spec_algorithm = SpeculativeAlgorithm.NGRAM if spec else SpeculativeAlgorithm.NONE
    batch.sampling_info = _sampling_info(batch, required)
    return batch


def _scheduler(record) -> Scheduler:
    """A real (uninitialised) Scheduler holding only what these methods touch."""
    sched = object.__new__(Scheduler)
    sched.batch_record_ct, sched.batch_record_buf = 0, [None, None]
    sched.record_batch_in_overlap = record.__get__(sched)
    return sched


def _run(isolation, record, copy, *, spec: bool, overlap: bool, required: bool):
    """One step: isolate, let a V2 worker rebind fields mid-forward, leave. Returns what
    can be compared across implementations: each observation as identities or values."""
    batch = _batch(spec, required)
    sched_info = batch.sampling_info
    before = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    sched = _scheduler(record)
    original_copy = SamplingBatchInfo.copy_for_forward
    SamplingBatchInfo.copy_for_forward = copy
    try:
        with isolation(sched, batch, overlap=overlap):
            inside = batch.sampling_info
            batch.seq_lens, batch.spec_info = object(), object()  # what V2 rebinds
            rebound = (batch.seq_lens, batch.spec_info)
    finally:
        SamplingBatchInfo.copy_for_forward = original_copy
    names = [f.name for f in dataclasses.fields(SamplingBatchInfo)]
    return {
        "restored": {n: (getattr(batch, n) is v) for n, v in before.items()},
        "kept_rebound": (batch.seq_lens, batch.spec_info) == rebound,
        "sched_info_kept": batch.sampling_info is sched_info,
        "copy_is_new": inside is not sched_info,
        "copy_orchestrator": inside.penalizer_orchestrator,
        "copy_same": [getattr(inside, n) is getattr(sched_info, n) for n in names
                      if n != "penalizer_orchestrator"],
        "copy_attrs": sorted(vars(inside)),
        "penalties": (sched_info.acc_additive_penalties is not None,
                      sched_info.acc_scaling_penalties is None),
        "record": _record_shape(sched, batch, before, inside),
    }


def _record_shape(sched, batch, before, inside):
    """Which object each pinned slot holds: the batch, a field's value from before, the
    forward-only sampling copy, or None (no record)."""
    entry = sched.batch_record_buf[sched.batch_record_ct]
    if entry is None:
        return None
    pinned_batch, values = entry
    fields = list(before)

    def which(i, v):
        if v is inside:
            return "sampling copy"
        return fields[i] if v is before[fields[i]] else f"other {fields[i]}"
    return (pinned_batch is batch, sched.batch_record_ct, [which(i, v) for i, v in enumerate(values)])


def _ours():
    """The plugin's hooks, exactly as HookRegistry calls them (upstream's method first)."""
    def isolation(sched, batch, overlap):
        return hooks.around_forward_isolation(_upstream_isolation, sched, batch, overlap=overlap)

    def record(self, batch):
        return hooks.around_batch_record(_upstream_record, self, batch)

    def copy(self):
        return hooks.around_sampling_copy(_upstream_copy, self)
    return isolation, record, copy


# the installed release's, before any test (upstream's fallbacks inside the hooks)
_upstream_copy = SamplingBatchInfo.copy_for_forward
_upstream_isolation = Scheduler._forward_isolation
_upstream_record = Scheduler.record_batch_in_overlap


@pytest.mark.parametrize("version", _VERSIONS)
@pytest.mark.parametrize("spec", [True, False], ids=["speculative", "plain"])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sync"])
@pytest.mark.parametrize("required", [True, False], ids=["penalties", "no-penalties"])
def test_the_same_objects_end_up_in_the_same_places(upstream_methods, version, spec, overlap,
                                                    required):
    up = upstream_methods[version]
    theirs = _run(up["_forward_isolation"], up["record_batch_in_overlap"], up["copy_for_forward"],
                  spec=spec, overlap=overlap, required=required)
    mine = _run(*_ours(), spec=spec, overlap=overlap, required=required)
    assert mine == theirs
    # the comparison is not vacuous: what the step must show, it shows
    assert all(theirs["restored"].values()) is spec
    assert theirs["copy_orchestrator"] is None and theirs["copy_is_new"]
    assert all(theirs["copy_same"])  # after update_penalties, which ran once, first
    assert theirs["penalties"] == (required, True)
    assert (theirs["record"] is None) is not overlap


def test_a_copy_with_an_attribute_beyond_its_fields_is_upstreams():
    """An instance whose ``__dict__`` is not exactly its fields: ``replace`` drops the extra
    attribute, so the plugin's copy must too (it takes upstream's path then)."""
    info = _sampling_info(_batch(True), required=False)
    info.extra = object()
    copy = hooks.around_sampling_copy(_upstream_copy, info)
    want = _upstream_copy(_sampling_info(_batch(True), required=False))
    assert sorted(vars(copy)) == sorted(vars(want)) and not hasattr(copy, "extra")


def test_a_field_never_set_is_recorded_as_none_like_upstream(upstream_methods):
    batch = _batch(True)
    del batch.__dict__["return_logprob"]  # a field __init__ would have set
    got = {}
    for who, record in (("upstream", upstream_methods["0.5.23"]["record_batch_in_overlap"]),
                        ("plugin", lambda s, b: hooks.around_batch_record(_upstream_record, s, b))):
        sched = _scheduler(record)
        sched.record_batch_in_overlap(batch)
        got[who] = sched.batch_record_buf[1][1]
    assert len(got["plugin"]) == len(got["upstream"])
    assert all(a is b for a, b in zip(got["plugin"], got["upstream"], strict=True))


def test_a_class_replace_would_not_copy_field_by_field_is_left_to_upstream():
    @dataclasses.dataclass
    class WithPostInit:
        a: int = 0

        def __post_init__(self):
            self.b = 1

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        a: int = 0

    @dataclasses.dataclass
    class NotInit:
        a: int = 0
        b: int = dataclasses.field(default=0, init=False)

    for cls in (WithPostInit, Frozen, NotInit):
        assert batch_snapshot._plain_field_names(cls) is None, cls
    assert batch_snapshot._plain_field_names(SamplingBatchInfo) == frozenset(
        f.name for f in dataclasses.fields(SamplingBatchInfo))


def test_the_switch_is_declared_and_off_unhooks_all_three(monkeypatch):
    from sglang_nwor_scv.config import reload

    assert any(s.name == "SGLANG_SCV_BATCH_SNAPSHOT" for s in SWITCHES)
    sites = ("forward_isolation", "batch_record", "sampling_copy")
    monkeypatch.setenv("SGLANG_SCV_BATCH_SNAPSHOT", "0")
    reload()
    try:
        assert not any(hooks._wanted(s) for s in sites)
        monkeypatch.setenv("SGLANG_SCV_BATCH_SNAPSHOT", "1")
        reload()
        assert all(hooks._wanted(s) for s in sites)
    finally:
        monkeypatch.delenv("SGLANG_SCV_BATCH_SNAPSHOT")
        reload()


@pytest.mark.benchmark(group="batch-snapshot")
@pytest.mark.parametrize("who", ["upstream", "plugin"])
def test_host_us(benchmark, upstream_methods, who):
    """Host time of one step's isolation (snapshot, sampling copy, record, restore), 0.5.23.
    A benchmark, not an assertion (``--benchmark-enable`` to time it)."""
    up = upstream_methods["0.5.23"]
    isolation, record, copy = ((up["_forward_isolation"], up["record_batch_in_overlap"],
                                up["copy_for_forward"]) if who == "upstream" else _ours())
    batch = _batch(True)
    sched = _scheduler(record)
    original_copy = SamplingBatchInfo.copy_for_forward
    SamplingBatchInfo.copy_for_forward = copy

    def step():
        with isolation(sched, batch, overlap=True):
            pass
    try:
        benchmark(step)
    finally:
        SamplingBatchInfo.copy_for_forward = original_copy


class _Watched(ScheduleBatch):
    """A ScheduleBatch subclass with its own ``__setattr__`` (as a tracing tool might add):
    a restore must go through it, not straight into ``__dict__``."""

    def __setattr__(self, name, value):
        self.__dict__.setdefault("_set", []).append(name)
        super().__setattr__(name, value)


def test_a_restore_goes_through_a_classs_own_setattr():
    batch = object.__new__(_Watched)
    for f in dataclasses.fields(ScheduleBatch):
        object.__setattr__(batch, f.name, object())
    batch.spec_algorithm = SpeculativeAlgorithm.NGRAM
    object.__setattr__(batch, "sampling_info", None)
    before = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    batch.__dict__["_set"] = []
    with hooks.around_forward_isolation(_upstream_isolation, _scheduler(_upstream_record), batch,
                                        overlap=False):
        batch.seq_lens = object()
    assert batch.__dict__["_set"] == ["seq_lens", *before]  # every field, through __setattr__
    assert all(getattr(batch, n) is v for n, v in before.items())
    assert batch_snapshot._fields(ScheduleBatch)[2] and not batch_snapshot._fields(_Watched)[2]

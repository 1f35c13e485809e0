"""The scheduler's per-step batch snapshot, with each dataclass's field names read once.

Every step of a speculative server (SGLang 0.5.17 and 0.5.23, the same bodies), before
the verify launch that bs 1 waits for, the scheduler's ``_forward_isolation``:

- snapshots the ``ScheduleBatch`` (79 fields in 0.5.17, 99 in 0.5.23) into a dict, through
  ``dataclasses.fields``, which filters the class's field table on every call;
- replaces ``batch.sampling_info`` by ``SamplingBatchInfo.copy_for_forward()``, a
  ``dataclasses.replace``: the generated ``__init__`` over 25-35 fields;
- pins the batch for two iterations with ``record_batch_in_overlap``, which walks
  ``dataclasses.fields`` again into a list of the same values.

H100 run 68 clocked the last two at 51 and 28 µs a step (8B shape, bs 1); the snapshot has no
clock. These do the same with each class's field names read once into an
``operator.attrgetter`` (one C call for all the values), the restore one ``__dict__``
update and the copy made from the instance's ``__dict__``: a step's isolation (snapshot,
copy, record, restore) 45 -> 15 µs on this project's CPU (0.5.23, pytest-benchmark medians).

The values are the same objects in the same order, the restore is upstream's, and the copy
is taken only from a plain dataclass instance whose attributes are exactly its fields (what
``replace`` would pass to its generated ``__init__``); anything else runs upstream's method.
``tests/test_batch_snapshot.py`` runs upstream's and these on the same real objects.
The plugin hooks the three methods (``hooks.py``); patched trees call these from them.
Off with ``SGLANG_SCV_BATCH_SNAPSHOT=0`` (not hooked at all; patched trees run upstream's).
Future: delete once upstream caches the field names (its ``FIXME(lsyin)`` on the record).
"""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import contextmanager
from operator import attrgetter

from sglang_nwor_scv.config import modes

_FIELDS: dict[type, tuple[tuple[str, ...], attrgetter, bool]] = {}  # class -> _fields(class)
_PLAIN: dict[type, frozenset[str] | None] = {}  # class -> field names if copyable from __dict__


def _fields(cls: type) -> tuple[tuple[str, ...], attrgetter, bool]:
    """``cls``'s dataclass field names; one getter returning their values as a tuple; and
    whether ``setattr`` of a field is a plain ``__dict__`` store (no ``__setattr__`` of its
    own, no descriptor under a field's name), so a restore may update ``__dict__`` at once."""
    got = _FIELDS.get(cls)
    if got is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        getter = attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))
        direct = cls.__setattr__ is object.__setattr__ and not any(
            hasattr(type(inspect.getattr_static(cls, n, None)), "__set__") for n in names)
        got = _FIELDS[cls] = (names, getter, direct)
    return got


def wanted() -> bool:
    """Is ``SGLANG_SCV_BATCH_SNAPSHOT`` on (patched trees ask before each call)."""
    return modes().batch_snapshot


@contextmanager
def isolated_batch(scheduler, batch, overlap: bool):
    """``Scheduler._forward_isolation``'s body, its snapshot a tuple of the values (upstream:
    a dict built through ``dataclasses.fields``) and its restore one ``__dict__`` update."""
    # 1. snapshot (speculative batches: V2 workers rebind fields mid-forward)
    snapshot_v2_full = not batch.spec_algorithm.is_none()
    if snapshot_v2_full:
        names, values_of, direct = _fields(type(batch))
        values = values_of(batch)
    sched_sampling_info = batch.sampling_info
    # 2. forward-only sampling info
    if sched_sampling_info is not None:
        batch.sampling_info = sched_sampling_info.copy_for_forward()
    # 3. pin for two iterations (overlap only)
    if overlap:
        scheduler.record_batch_in_overlap(batch)
    try:
        yield
    finally:
        if snapshot_v2_full:
            if direct:
                batch.__dict__.update(zip(names, values, strict=True))
            else:
                for name, value in zip(names, values, strict=True):
                    setattr(batch, name, value)
        else:
            batch.sampling_info = sched_sampling_info


def record_batch(scheduler, batch) -> None:
    """``Scheduler.record_batch_in_overlap``'s body: the same list of field values, by one
    getter (upstream: ``getattr(batch, f.name, None)`` over ``dataclasses.fields``)."""
    names, values_of, _ = _fields(type(batch))
    try:
        attr_snapshot = list(values_of(batch))
    except AttributeError:  # a field never set: upstream's None for it
        attr_snapshot = [getattr(batch, name, None) for name in names]
    scheduler.batch_record_ct = (scheduler.batch_record_ct + 1) % 2
    scheduler.batch_record_buf[scheduler.batch_record_ct] = [batch, attr_snapshot]


def sampling_copy(info):
    """``SamplingBatchInfo.copy_for_forward``'s result: upstream's penalty update, then the
    copy ``dataclasses.replace(info, penalizer_orchestrator=None)`` makes, from ``__dict__``.
    None, having changed nothing, for a class ``replace`` would not copy field by field:
    upstream's method runs then."""
    cls = type(info)
    names = _PLAIN.get(cls, False)
    if names is False:
        names = _PLAIN[cls] = _plain_field_names(cls)
    if names is None:
        return None
    info.update_penalties()
    state = info.__dict__
    if state.keys() != names:  # an attribute beyond the fields, or one missing
        return dataclasses.replace(info, penalizer_orchestrator=None)  # upstream's copy
    new = object.__new__(cls)
    new.__dict__.update(state)
    new.penalizer_orchestrator = None
    return new


def _plain_field_names(cls: type) -> frozenset[str] | None:
    """The field names, when ``replace``'s ``cls(**fields)`` only sets each field to the value
    given: every field an ``__init__`` argument, the ``__init__`` the generated one, no
    ``__post_init__``, plain attribute assignment, no slots. Else None (upstream's copy)."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        return None
    fields = dataclasses.fields(cls)
    init = getattr(cls.__init__, "__code__", None)
    if (any(not f.init for f in fields) or init is None or init.co_filename != "<string>"
            or cls.__setattr__ is not object.__setattr__ or hasattr(cls, "__slots__")):
        return None
    return frozenset(f.name for f in fields)

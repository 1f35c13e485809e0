"""Every switch the plugin reads: declared once here, parsed once per process by one parser.

``SWITCHES`` is the single list (name, allowed values, default, what it does); README's
switch table is checked against it (tests/test_config.py). ``modes()`` parses the whole
environment the first time anything asks (the plugin asks at registration), so one
installed plugin serves every configuration and nothing is read at import.

A bad value never reaches serving: ``modes()`` logs one line naming the variable and its
allowed values, and returns ``STEP_ASIDE`` (every feature off), so upstream SGLang runs
unmodified; ``plugin.register()`` registers no hook at all in that case.

Booleans accept 1/0, true/false, yes/no, on/off in any case; an empty value means
"unset" (the default) for every switch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

logger = logging.getLogger("sglang_nwor_scv")

NWOR_MODES = ("off", "stage")
# SGLANG_NWOR_GRAPH=auto stages CUDA-graph verify buckets for these algorithms: the ones
# whose graph path ran on a GPU with outputs identical and every debug check held: NGRAM
# tree and chain (H100, run 18), STANDALONE topk 1 and 2 and EAGLE3 topk 2 (H200, run 21).
# EAGLE runs EAGLE3's worker and target verify graph (EAGLE3 adds aux hidden states on the
# draft side only). Any other algorithm keeps upstream's KV writes in graph steps.
GRAPH_AUTO_ALGORITHMS = frozenset({"NGRAM", "STANDALONE", "EAGLE", "EAGLE3"})
SCV_MODES = ("off", "vectorized", "graph")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SwitchError(ValueError):
    """A switch holds a value the plugin does not accept."""


@dataclass(frozen=True)
class Switch:
    name: str
    field: str  # attribute of Modes
    values: str  # allowed values, as README shows them
    default: str | None  # raw default ("" or None: unset)
    doc: str
    parse: Callable[[str, str], object]


def _bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SwitchError(f"{name}={raw!r} is not a boolean (use one of {', '.join(_TRUE + _FALSE)})")


def _auto_bool(name: str, raw: str) -> bool | None:
    """A boolean, or ``auto`` (None): the plugin decides per configuration."""
    if raw.strip().lower() == "auto":
        return None
    try:
        return _bool(name, raw)
    except SwitchError:
        raise SwitchError(f"{name}={raw!r} is not auto or a boolean "
                          f"(use one of auto, {', '.join(_TRUE + _FALSE)})") from None


def _choice(allowed: tuple[str, ...]):
    def parse(name: str, raw: str) -> str:
        low = raw.strip().lower()
        if low not in allowed:
            raise SwitchError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
        return low
    return parse


def _int(minimum: int, auto: bool = False):
    def parse(name: str, raw: str):
        low = raw.strip().lower()
        if auto and low == "auto":
            return None
        try:
            value = int(low)
        except ValueError:
            value = None
        if value is None or value < minimum:
            want = f"an integer >= {minimum}" + (" or 'auto'" if auto else "")
            raise SwitchError(f"{name}={raw!r} is not {want}")
        return value
    return parse


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _step_range(name: str, raw: str) -> tuple[int, int]:
    a, sep, b = raw.strip().partition(":")
    try:
        start, stop = int(a), int(b)
    except ValueError:
        start = stop = -1
    if not sep or not 0 <= start < stop:
        raise SwitchError(f"{name}={raw!r} is not a:b with 0 <= a < b")
    return start, stop


def _int_set(name: str, raw: str) -> frozenset[int]:
    try:
        values = frozenset(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        values = frozenset()
    if not values or min(values) < 1:
        raise SwitchError(f"{name}={raw!r} is not a comma-separated list of batch sizes >= 1")
    return values


SWITCHES: tuple[Switch, ...] = (
    Switch("SGLANG_NWOR_MODE", "nwor", "`off`, `stage`", "stage",
           "stage verify K/V, commit accepted rows only", _choice(NWOR_MODES)),
    Switch("SGLANG_SCV_MODE", "scv", "`off`, `vectorized`, `graph`", "vectorized",
           "fused acceptance kernel (`graph`: the same kernel as `vectorized` until "
           "per-bucket capture is built)", _choice(SCV_MODES)),
    Switch("SGLANG_NWOR_GRAPH", "graph_stage", "`auto`, boolean", "auto",
           "also stage CUDA-graph verify steps (buckets within `SGLANG_NWOR_GRAPH_MAX_MB`); "
           "`auto`: for the algorithms whose graph path has run on a GPU with every check "
           "(NGRAM, STANDALONE, EAGLE, EAGLE3)", _auto_bool),
    Switch("SGLANG_NWOR_GRAPH_MAX_MB", "graph_max_mb", "`auto`, MiB", "auto",
           "largest verify-graph bucket staged: its K/V held at most this many MiB "
           "(`auto`: 1% of the KV pool, at most 1024)", _int(0, auto=True)),
    Switch("SGLANG_SCV_NGRAM_MASK", "ngram_mask", "boolean", "1",
           "NGRAM: build the full verify mask in one kernel instead of upstream's per-request "
           "loop (bit-identical; upstream's loop is most of NGRAM's draft time at bs >= 32)", _bool),
    Switch("SGLANG_SCV_NGRAM_DRAFT", "ngram_draft", "boolean", "1",
           "NGRAM, with `SGLANG_SCV_NGRAM_MASK` on: the tree links, the full mask and the draft "
           "tokens' cache locations in one kernel instead of three launches, and the drafts and "
           "tree mask in one host-to-device copy instead of two (bit-identical; 66 -> 40 µs of "
           "host time a step in a per-call benchmark on an H100, run 49; end to end within the "
           "noise, run 56; the single copy not yet measured on a GPU)", _bool),
    Switch("SGLANG_SCV_NGRAM_PROMPT_TAIL", "ngram_prompt_tail", "boolean", "1",
           "SGLang 0.5.17 NGRAM (plugin): the draft lookup and corpus update copy only the "
           "prompt tail they read (0.5.23's own change) and hand the draft mask over as bool "
           "(the same tokens and mask bytes; 10.8 -> 0.14 ms of host work a step at bs 64 "
           "with 8k prompts on this project's CPU). Patched trees always have it (patch 0008)",
           _bool),
    Switch("SGLANG_SCV_VERIFY_METADATA", "verify_metadata", "boolean", "1",
           "SGLang 0.5.17, Triton attention, CUDA graphs: fill a replayed verify graph's "
           "attention metadata in one kernel instead of about 9 dispatches (bit-identical; "
           "about 120 µs of host time a step on an H100)", _bool),
    Switch("SGLANG_SCV_CACHED_LAUNCH", "cached_launch", "boolean", "1",
           "GPU: launch the plugin's per-step kernels through the compiled kernel Triton "
           "returned for the same specialisation, not `kernel[grid](...)` (the same launch "
           "without Triton's per-call binding, cache key and checks; 16.5 -> 10.9 µs a launch "
           "on an H100, run 58)", _bool),
    Switch("SGLANG_SCV_BATCH_SNAPSHOT", "batch_snapshot", "boolean", "1",
           "the scheduler's per-step batch snapshot (speculative batches), pinned batch record "
           "and forward-only sampling copy with each class's field names read once (the same "
           "objects; 45 -> 15 µs of host work a step before the verify launch on this "
           "project's CPU, SGLang 0.5.23). Patches 0011 (0.5.17) and 0009 (0.5.23)", _bool),
    Switch("SGLANG_SCV_ACCEPT_READBACK", "accept_readback", "boolean", "1",
           "SGLang 0.5.17 NGRAM (plugin, with `SGLANG_SCV_NGRAM_PROMPT_TAIL` on): the draft "
           "lookup reads the previous step's accepted tokens and lengths from the pinned copies "
           "the scheduler already made after that step, waiting on its event, instead of two "
           "synchronous `.cpu()` copies before the verify launch (the same values). Patch 0012",
           _bool),
    Switch("SGLANG_NWOR_MOVE", "move", "boolean", "1",
           "unstaged steps: replace upstream's post-verify KV move by one launch "
           "that copies only the rows that move", _bool),
    Switch("SGLANG_NWOR_SCV_DEBUG", "debug", "boolean", "0",
           "check invariants every step (syncs; poisons verify-window rows first)", _bool),
    Switch("SGLANG_NWOR_SCV_STEP_LOG", "step_log", "path", None,
           "one JSON line per verify step (staged, committed, accepted, checks)", _text),
    Switch("SGLANG_NWOR_SCV_LOG_INTERVAL", "log_interval", "integer >= 1", "100",
           "verify steps between counter flushes and log lines (plus one flush when the "
           "scheduler goes idle)", _int(1)),
    Switch("SGLANG_NWOR_SCV_TOTALS", "totals_path", "path", None,
           "cumulative counters as JSON, rewritten at each flush", _text),
    Switch("SGLANG_NWOR_SCV_PROFILE", "profile", "boolean", "0",
           "NVTX / profiler ranges `verify_step`, `scv_compute_mask`, `nwor_commit`, `kv_move`", _bool),
    Switch("SGLANG_NWOR_SCV_PROFILE_STEPS", "profile_steps", "`a:b`", None,
           "cudaProfilerStart/Stop around verify steps a..b-1 of each batch size (ncu)", _step_range),
    Switch("SGLANG_NWOR_SCV_PROFILE_BS", "profile_bs", "`8,64,...`", None,
           "limit the profiler window to these batch sizes", _int_set),
    Switch("SGLANG_NWOR_SCV_PROFILE_LOG", "profile_log", "path", None,
           "append one JSON line per profiled step (batch size, index, time)", _text),
    Switch("SGLANG_NWOR_SCV_PHASES", "phases_path", "path", None,
           "host time per scheduler-step phase as JSON (plugin `nwor_scv_phases`; "
           "tools/measure_latency.py)", _text),
    Switch("SGLANG_NWOR_SCV_SYNC_CHECK", "sync_check", "boolean", "0",
           "count (and log where) host syncs happen inside the plugin's sites", _bool),
    Switch("SGLANG_NWOR_SCV_FORCE_VERSION", "force_version", "a supported version", None,
           "adapter to use on an SGLang release the plugin does not know", _text),
)


@dataclass(frozen=True)
class Modes:
    nwor: str = "stage"
    scv: str = "vectorized"
    graph_stage: bool | None = None  # None: auto (see GRAPH_AUTO_ALGORITHMS)
    graph_max_mb: int | None = None  # None: auto
    move: bool = True
    ngram_mask: bool = True
    ngram_draft: bool = True
    ngram_prompt_tail: bool = True
    verify_metadata: bool = True
    cached_launch: bool = True
    batch_snapshot: bool = True
    accept_readback: bool = True
    debug: bool = False
    step_log: str | None = None
    log_interval: int = 100
    totals_path: str | None = None
    profile: bool = False
    profile_steps: tuple[int, int] | None = None
    profile_bs: frozenset[int] | None = None
    profile_log: str | None = None
    phases_path: str | None = None
    sync_check: bool = False
    force_version: str | None = None
    refusal: str | None = None  # set on STEP_ASIDE: why every feature is off

    @property
    def per_step(self) -> bool:
        """Debug or step-log mode: each step's counts are read (and checked) on the host."""
        return self.debug or bool(self.step_log)

    @property
    def nwor_on(self) -> bool:
        return self.nwor == "stage"

    @property
    def scv_on(self) -> bool:
        return self.scv != "off"


STEP_ASIDE = Modes(nwor="off", scv="off", graph_stage=False, move=False, ngram_mask=False,
                   ngram_draft=False, ngram_prompt_tail=False, verify_metadata=False,
                   cached_launch=False, batch_snapshot=False, accept_readback=False)


def parse(environ: Mapping[str, str]) -> Modes:
    """All switches from ``environ``; raises ``SwitchError`` naming the first bad one."""
    values = {}
    for s in SWITCHES:
        raw = environ.get(s.name, "")
        if raw.strip() == "":
            raw = s.default
        values[s.field] = s.parse(s.name, raw) if raw is not None else None
    return Modes(**values)


@lru_cache(maxsize=1)
def modes() -> Modes:
    """This process's switches, parsed once; ``STEP_ASIDE`` (logged once) if any is bad."""
    try:
        return parse(os.environ)
    except SwitchError as e:
        reason = f"{e}; sglang-nwor-scv steps aside and upstream SGLang runs unmodified"
        logger.error("%s", reason)
        return replace(STEP_ASIDE, refusal=reason)


def reload() -> Modes:
    """Forget the parsed switches (tests, and tools that change the environment)."""
    modes.cache_clear()
    return modes()

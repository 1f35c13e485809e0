"""Upstream's greedy outputs, generated once per test session for each distinct input.

Many identity tests compare the plugin against plain upstream (plugin off) on the same
model, prompts and settings. Greedy upstream is deterministic for a given input, so one run
serves them all: about nine engine starts fewer in the CPU CI, about 45 s each (the fresh-clone
run took 59 of its 90 minutes). Only plain runs are kept: a run with extra environment, import
paths, plugins or a callback is refused here and must call ``run_engine`` itself."""

from __future__ import annotations

from pathlib import Path

from tools.engine_run import EngineRun, run_engine

_runs: dict[tuple, EngineRun] = {}
_NOT_PLAIN = ("extra_env", "extra_pythonpath", "extra_plugins", "before_shutdown", "plugin_on")


def upstream_run(spec: str, models: Path, prompts: list[list[int]], **kw) -> EngineRun:
    """``run_engine(spec, models, prompts, plugin_on=False, **kw)``, run once per input."""
    bad = [k for k in _NOT_PLAIN if kw.get(k)]
    if bad:
        raise ValueError(f"upstream_run keeps plain upstream runs only, not one with {bad}")
    key = (spec, str(Path(models).resolve()), tuple(map(tuple, prompts)),
           tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key not in _runs:
        _runs[key] = run_engine(spec, models, prompts, plugin_on=False, **kw)
    return _runs[key]

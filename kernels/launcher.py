"""Per-step Triton launches without ``JITFunction.run``'s per-call work.

Every ``kernel[grid](...)`` makes Triton look up the device and stream, bind and
specialise the arguments, build a cache key from them and ``str(options)``, check the
kernel's globals and build launch metadata before it queues anything: 16 µs of host time
against 6 µs for the compiled kernel's own ``run`` in an H100 loop (run 49), and the
engine's phase clocks read 55-73 µs for a plugin launch (run 56). The plugin launches four
kernels a step, two of them before the verify forward.

``launch`` launches through Triton the first time it sees a specialisation and keeps
the compiled kernel it returns; later launches of that specialisation call the kernel's
``run`` directly. Its key is finer than Triton's (every property Triton specialises on:
each tensor's dtype and 16-byte alignment, each integer's ==1, %16 and width, the
constexpr values and options), so a kept kernel is always the one Triton would pick.
Triton's own path runs instead under the interpreter (the CPU), while a launch hook is set
(a profiler wants every launch), or when ``SGLANG_SCV_CACHED_LAUNCH=0``. On by default
since H100 run 58: the GPU cases of tests/test_launcher.py and NGRAM engine identity under
CUDA graphs with it on; 16.5 -> 10.9 µs a launch in a loop.
"""

from __future__ import annotations

import os

import torch
from triton import knobs

_Tensor = torch.Tensor
_kept: dict = {}  # (kernel, key) -> (compiled kernel's run, function, metadata, constexpr tail)
_enabled: list[bool] = []  # decided on the first launch: the switch, and not the interpreter
# launches by path since the last ``take_counts``: the totals file and /metrics show that the
# engine's launches take the kept path (the switch reaching the engine does not prove it)
_counts = {"kept": 0, "triton": 0}


def launch(kernel, grid, args, consts) -> None:
    """What ``kernel[grid](*args, **consts)`` does: ``args`` the runtime arguments in the
    kernel's order, ``consts`` its constexprs and launch options (``num_warps``) by name.
    ``kernel`` is read by the caller at each call (a fault test may have replaced it)."""
    if not _enabled:
        _enabled.append(_wanted())
    if not _enabled[0] or _hooks_set():
        _counts["triton"] += 1
        kernel[grid](*args, **consts)
        return
    device = torch.cuda.current_device()
    try:
        key = (kernel, _args_key(args), tuple(consts.items()), device)
        kept = _kept.get(key)
    except TypeError:  # an argument (or constexpr) this key cannot describe: Triton's path
        _counts["triton"] += 1
        kernel[grid](*args, **consts)
        return
    if kept is None:
        _counts["triton"] += 1
        _keep(key, kernel, grid, args, consts)
        return
    _counts["kept"] += 1
    run, function, metadata, tail = kept
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    run(grid[0], g1, g2, torch._C._cuda_getCurrentRawStream(device), function, metadata, None, None, None,
        *args, *tail)


def take_counts() -> dict:
    """Launches by path (``kept``: the kept kernel's ``run``; ``triton``: ``kernel[grid]``)
    since the last call, and zero them."""
    out = dict(_counts)
    _counts.update(kept=0, triton=0)
    return out


def _keep(key, kernel, grid, args, consts) -> None:
    """Triton's own launch (it compiles or finds the kernel), then keep what it ran."""
    compiled = kernel[grid](*args, **consts)
    params = kernel.params[len(args):]  # the constexprs, in the signature's order
    tail = tuple(consts[p.name] if p.name in consts else p.default for p in params)
    _kept[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail)


def _args_key(args) -> tuple:
    """What Triton specialises the runtime arguments on (finer is safe, coarser is not): a
    tensor's dtype and 16-byte alignment; an integer's ==1, %16 and width. One loop with the
    two common types inline: 3 µs for the draft kernel's 11 arguments on the CI's CPU, where
    a call per argument took 9 and Triton's own specialisation 8."""
    key = []
    for a in args:
        t = type(a)
        if t is _Tensor:
            key.append(a.dtype)
            key.append(not a.data_ptr() & 15)
        elif t is int:
            key.append(a == 1)
            key.append(not a & 15)
            key.append(-2147483648 <= a < 2147483648)
            key.append(a < 9223372036854775808)
        else:
            key.append(_other_key(a))
    return tuple(key)


def _other_key(a):
    if isinstance(a, torch.Tensor):  # a subclass
        return a.dtype, not a.data_ptr() & 15
    if isinstance(a, bool):
        return bool, a
    if isinstance(a, int):
        return int, a == 1, not a & 15, -(2**31) <= a < 2**31, a < 2**63
    if isinstance(a, float):
        return float
    if a is None:
        return None
    raise TypeError(f"no cached-launch key for an argument of type {type(a).__name__}")


def _wanted() -> bool:
    from sglang_nwor_scv.config import modes

    return modes().cached_launch and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def _hooks_set() -> bool:
    """A launch hook (a profiler's) wants to see every launch: Triton's path then. Triton
    3.6 keeps a hook or None here, 3.8 a chain that is empty when unset."""
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False

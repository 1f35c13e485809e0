"""Every Triton kernel a CPU test launches is also compiled for the H100 (sm_90, down to
cubin), with the argument types and constexpr values of that launch.

Why: under ``TRITON_INTERPRET=1`` a kernel runs as Python, and the compiler's checks never
run. Run 42 (H100) failed to compile the verify-metadata kernel, whose 25 CPU cases had
passed: one name was bound with int64 in one branch and int32 in the other. Triton's compiler
and its bundled ptxas need no GPU, so the CPU CI can catch that class of error.

``install()`` wraps the interpreter's launch. The first launch of each distinct signature is
compiled in one spawned worker process (kernels must be imported there without the
interpreter: the compiler needs real ``JITFunction`` callees; a worker killed by an engine
test's shutdown, which kills its process's children, is replaced), and a compile error is
raised
from the launch, so the launching test fails (or, through ``kernel_guard``, its site falls
back to upstream and the test's check of the kernel path fails). Switch off with
``NWOR_SCV_HOPPER_COMPILE=0``.
"""

from __future__ import annotations

import atexit
import inspect
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

_compiled: dict = {}  # signature key -> error text ("" when it compiled)
_pool: ProcessPoolExecutor | None = None


def _compile_in_worker(module: str, name: str, signature: dict, constexprs: dict,
                       options: dict) -> str:
    """In the worker: import the kernel for real and compile it for sm_90; '' or the error."""
    os.environ.pop("TRITON_INTERPRET", None)
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(module), name)
    try:
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32), options=options)
    except Exception as e:  # the compiler's message is the point
        return f"{type(e).__name__}: {e}"
    return ""


def launch_signature(py_fn, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """Triton's signature of one launch: a type string per runtime argument, the value of
    every constexpr (and of every None argument, which Triton treats as one), and the launch
    options (``num_warps`` and the like: keywords that name no parameter)."""
    from triton.runtime.jit import mangle_type

    spec = inspect.signature(py_fn)
    params = spec.parameters
    options = {k: v for k, v in kwargs.items() if k not in params}
    bound = spec.bind(*args, **{k: v for k, v in kwargs.items() if k in params})
    bound.apply_defaults()
    signature, constexprs = {}, {}
    for i, (name, param) in enumerate(params.items()):
        value = bound.arguments[name]
        if "constexpr" in str(param.annotation) or value is None:
            signature[name], constexprs[(i,)] = "constexpr", getattr(value, "value", value)
        else:
            signature[name] = mangle_type(value)
    return signature, constexprs, options


def _worker() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        atexit.register(_pool.shutdown)
    return _pool


def check(py_fn, args: tuple, kwargs: dict) -> None:
    """Compile ``py_fn`` for sm_90 as launched (once per signature); raise if it does not."""
    global _pool
    signature, constexprs, options = launch_signature(py_fn, args, kwargs)
    key = (py_fn.__module__, py_fn.__name__, tuple(signature.items()),
           repr(sorted(constexprs.items())), repr(sorted(options.items())))
    if key not in _compiled:
        job = (_compile_in_worker, py_fn.__module__, py_fn.__name__, signature, constexprs, options)
        try:
            _compiled[key] = _worker().submit(*job).result()
        except BrokenProcessPool:  # an engine test's shutdown kills the test process's children
            _pool = None
            _compiled[key] = _worker().submit(*job).result()
    if _compiled[key]:
        raise RuntimeError(f"{py_fn.__name__} does not compile for sm_90 with {signature} "
                           f"{constexprs} {options}: {_compiled[key]}")


def _ours(py_fn) -> bool:
    """This project's kernels (upstream's, compiled from source by some tests, are not)."""
    return py_fn.__module__.split(".")[-2:-1] == ["kernels"]


def install() -> None:
    """Wrap the interpreter's launch with ``check`` (CPU sessions only)."""
    if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("NWOR_SCV_HOPPER_COMPILE") == "0":
        return
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    if getattr(run, "hopper_checked", False):
        return

    def checked_run(self, *args, grid, warmup, **kwargs):
        if not warmup and _ours(self.fn):
            check(self.fn, args, kwargs)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    checked_run.hopper_checked = True
    InterpretedFunction.run = checked_run

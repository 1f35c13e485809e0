"""Every Triton kernel a CPU test launches is also compiled for the H100 (sm_90, down to
cubin), with the argument types and constexpr values of that launch.

Why: under ``TRITON_INTERPRET=1`` a kernel runs as Python, and the compiler's checks never
run. Run 42 (H100) failed to compile the verify-metadata kernel, whose 25 CPU cases had
passed: one name was bound with int64 in one branch and int32 in the other. Triton's compiler
and its bundled ptxas need no GPU, so the CPU CI can catch that class of error.

``install()`` wraps the interpreter's launch. The first launch of each distinct signature is
compiled in one worker process (kernels must be imported there without the interpreter:
the compiler needs real ``JITFunction`` callees; a worker killed by an engine test's
shutdown, which kills its process's children, is replaced), and a compile error is
raised
from the launch, so the launching test fails (or, through ``kernel_guard``, its site falls
back to upstream and the test's check of the kernel path fails). Switch off with
``NWOR_SCV_HOPPER_COMPILE=0``.
"""

from __future__ import annotations

import atexit
import inspect
import os
import pickle
import subprocess
import sys

_compiled: dict = {}  # signature key -> error text ("" when it compiled)
_proc: subprocess.Popen | None = None


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


def _worker() -> subprocess.Popen:
    """The compile worker: a plain child process (no multiprocessing pool, whose semaphores
    the resource tracker then reports as leaked when an engine test kills the child)."""
    global _proc
    if _proc is None or _proc.poll() is not None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        boot = f"import sys; sys.path[:0] = {sys.path!r}; from tests.hopper_compile import serve; serve()"
        _proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env)
        atexit.register(_proc.kill)
    return _proc


def _ask(job: tuple) -> str | None:
    """One job to the worker; None when the worker is gone (killed since the last job)."""
    proc = _worker()
    data = pickle.dumps(job)
    try:
        proc.stdin.write(len(data).to_bytes(8, "little") + data)
        proc.stdin.flush()
        head = proc.stdout.read(8)
    except (BrokenPipeError, OSError):
        return None
    if len(head) < 8:
        return None
    return pickle.loads(proc.stdout.read(int.from_bytes(head, "little")))


def serve() -> None:
    """The worker's loop: length-prefixed pickled jobs on stdin, answers on stdout (anything
    the compiler prints goes to stderr)."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    jobs = sys.stdin.buffer
    while len(head := jobs.read(8)) == 8:
        result = pickle.dumps(_compile_in_worker(*pickle.loads(jobs.read(int.from_bytes(head, "little")))))
        answers.write(len(result).to_bytes(8, "little") + result)
        answers.flush()


def check(py_fn, args: tuple, kwargs: dict) -> None:
    """Compile ``py_fn`` for sm_90 as launched (once per signature); raise if it does not."""
    signature, constexprs, options = launch_signature(py_fn, args, kwargs)
    key = (py_fn.__module__, py_fn.__name__, tuple(signature.items()),
           repr(sorted(constexprs.items())), repr(sorted(options.items())))
    if key not in _compiled:
        job = (py_fn.__module__, py_fn.__name__, signature, constexprs, options)
        answer = _ask(job)
        if answer is None:  # an engine test's shutdown kills the test process's children
            answer = _ask(job)
        if answer is None:
            raise RuntimeError(f"the sm_90 compile worker died compiling {py_fn.__name__}")
        _compiled[key] = answer
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

"""Run the real SGLang engine with speculative decoding, plugin on or off.

One place that knows how to start an ``sglang.Engine`` for the tiny model pair
(tools/make_tiny_models.py) on the CPU or a GPU, so the demo, the CPU tests and
the GPU harness all drive the engine the same way.

Plugin on/off is chosen with SGLang's own ``SGLANG_PLUGINS`` whitelist, so "off"
is upstream SGLang untouched. On a host without CUDA the test-only shims in
tests/cpu_shims are put on PYTHONPATH and whitelisted (they say what they replace).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_SHIMS = REPO / "tests" / "cpu_shims"
PLUGIN_NAME = "nwor_scv"
SHIM_PLUGIN_NAME = "cpu_test_shims"

# name -> speculative server args (the draft path is filled in by engine_kwargs); the one
# table every tool and test uses: a name means the same configuration everywhere.
SPEC_CONFIGS = {
    "ngram-tree": dict(speculative_algorithm="NGRAM", speculative_num_draft_tokens=4,
                       speculative_ngram_max_bfs_breadth=4),
    # the measurement tools' tree on the Llama-3-8B shape (named "ngram-tree" in their
    # reports before 2026-12-04)
    "ngram-tree-n8": dict(speculative_algorithm="NGRAM", speculative_num_draft_tokens=8,
                          speculative_ngram_max_bfs_breadth=4),
    "ngram-chain": dict(speculative_algorithm="NGRAM", speculative_num_draft_tokens=4,
                        speculative_ngram_max_bfs_breadth=1),
    "standalone-chain": dict(speculative_algorithm="STANDALONE", speculative_num_steps=3,
                             speculative_eagle_topk=1, speculative_num_draft_tokens=4),
    "standalone-tree": dict(speculative_algorithm="STANDALONE", speculative_num_steps=2,
                            speculative_eagle_topk=2, speculative_num_draft_tokens=4),
    # the Llama-3-8B shape only: a dummy-weight EAGLE3 head (tools/realistic_model.py), which
    # runs the EAGLE v2 worker (draft forwards on the GPU between verify steps)
    "eagle3-chain": dict(speculative_algorithm="EAGLE3", speculative_num_steps=3,
                         speculative_eagle_topk=1, speculative_num_draft_tokens=4),
}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_process_env(plugin_on: bool, extra_env: dict | None = None,
                        extra_pythonpath: tuple[str, ...] = (),
                        extra_plugins: tuple[str, ...] = ()) -> dict:
    """Set the environment the engine's subprocesses inherit; returns the old values.

    ``extra_plugins``: more plugin names for SGLang's whitelist (e.g. the phase clocks,
    ``nwor_scv_phases``, which run with the NWOR/SCV plugin on or off).

    ``extra_pythonpath`` goes first on PYTHONPATH and on ``sys.path`` (spawned
    processes start from the parent's ``sys.path``); ``run_engine`` takes it off
    ``sys.path`` again."""
    cpu = not has_cuda()
    names = ([SHIM_PLUGIN_NAME] if cpu else []) + ([PLUGIN_NAME] if plugin_on else []) + list(extra_plugins)
    env = {"SGLANG_PLUGINS": ",".join(names) or "none"}
    if cpu:
        env["TRITON_INTERPRET"] = "1"
        path = os.environ.get("PYTHONPATH", "")
        if str(CPU_SHIMS) not in path.split(os.pathsep):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CPU_SHIMS), path) if p)
        if str(CPU_SHIMS) not in sys.path:
            sys.path.insert(0, str(CPU_SHIMS))
    if extra_pythonpath:
        rest = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*extra_pythonpath, rest) if p)
        sys.path[:0] = list(extra_pythonpath)
    env.update(extra_env or {})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def engine_kwargs(spec: str, models: Path, **overrides) -> dict:
    cpu = not has_cuda()
    kw = dict(
        model_path=str(models / "target"), attention_backend="triton",
        skip_tokenizer_init=True, grammar_backend="none", sampling_backend="pytorch",
        max_running_requests=16, random_seed=0,
        log_level=os.environ.get("NWOR_SCV_ENGINE_LOG_LEVEL", "warning"),
        mem_fraction_static=0.5,
    )
    if cpu:
        kw.update(device="cpu", dtype="float32", disable_cuda_graph=True,
                  max_total_tokens=8192, mem_fraction_static=0.3)
    kw.update(SPEC_CONFIGS[spec])
    if kw["speculative_algorithm"] == "STANDALONE":
        kw["speculative_draft_model_path"] = str(models / "draft")
    kw.update(overrides)
    return kw


@dataclass
class EngineRun:
    spec: str
    plugin_on: bool
    outputs: list[list[int]]
    meta: list[dict]
    steps: list[dict] = field(default_factory=list)  # per-verify-step plugin records

    @property
    def accept_length(self) -> float:
        verify = sum(m.get("spec_verify_ct", 0) for m in self.meta)
        tokens = sum(m.get("completion_tokens", 0) for m in self.meta)
        return tokens / verify if verify else float("nan")


def run_engine(spec: str, models: Path, prompts: list[list[int]], *, plugin_on: bool,
               max_new_tokens: int = 24, extra_env: dict | None = None,
               sampling: dict | None = None, extra_pythonpath: tuple[str, ...] = (),
               extra_plugins: tuple[str, ...] = (), before_shutdown=None,
               **overrides) -> EngineRun:
    """Start an engine, generate greedily for ``prompts`` (byte ids), shut it down.

    ``extra_pythonpath``: directories put first on the engine processes' import path
    (e.g. a patched copy of the sglang package, see tests/test_engine_patched.py).
    ``before_shutdown``: called after generating, while the engine still runs (idle)."""
    import sglang as sgl

    stats = Path(tempfile.mkstemp(prefix="nwor-scv-steps-", suffix=".jsonl")[1])
    env = {"SGLANG_NWOR_SCV_STEP_LOG": str(stats), "SGLANG_NWOR_SCV_DEBUG": "1"}
    env.update(extra_env or {})
    extra_pythonpath = tuple(str(p) for p in extra_pythonpath)
    old = prepare_process_env(plugin_on, env, extra_pythonpath, extra_plugins)
    try:
        engine = sgl.Engine(**engine_kwargs(spec, models, **overrides))
        try:
            params = {"temperature": 0.0, "max_new_tokens": max_new_tokens}
            params.update(sampling or {})
            out = engine.generate(input_ids=prompts, sampling_params=params)
            if before_shutdown is not None:
                before_shutdown()
        finally:
            engine.shutdown()
    finally:
        restore_env(old)
        for p in extra_pythonpath:
            sys.path.remove(p)
    steps = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
    stats.unlink(missing_ok=True)
    return EngineRun(spec, plugin_on, [o["output_ids"] for o in out],
                     [o["meta_info"] for o in out], steps)


def server_cli_from_kwargs(kw: dict, port: int) -> list[str]:
    """``sglang.Engine`` keyword arguments as ``launch_server`` flags (loopback only)."""
    args = [sys.executable, "-m", "sglang.launch_server", "--port", str(port),
            "--host", "127.0.0.1"]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``launch_server`` child on loopback: its own process, so several configurations
    can stay resident side by side (one process's SGLang globals hold one config)."""

    # free_port's number can be taken by another process before the child binds it; a start
    # that dies of that is retried on a fresh port (a fresh-clone CI run failed so once)
    PORT_RETRIES = 3

    def __init__(self, kw: dict, plugin_on: bool, env: dict, log: Path,
                 extra_plugins: tuple[str, ...] = ()):
        self.log_path = log
        self._launch = (kw, plugin_on, env, extra_plugins)
        self._retries_left = self.PORT_RETRIES
        self._spawn()

    def _spawn(self) -> None:
        import subprocess

        kw, plugin_on, env, extra_plugins = self._launch
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "w")
        old = prepare_process_env(plugin_on, env, extra_plugins=extra_plugins)
        try:
            self.proc = subprocess.Popen(server_cli_from_kwargs(kw, self.port),
                                         stdout=self._log, stderr=subprocess.STDOUT)
        finally:
            restore_env(old)

    def _died_of_port_race(self) -> bool:
        self._log.flush()
        return "already in use" in self.log_path.read_text().lower()

    def get(self, path: str, timeout: float = 5.0) -> str:
        import urllib.request

        with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
            return r.read().decode()

    def post(self, path: str, body: dict, timeout: float = 900.0):
        import urllib.request

        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float) -> None:
        """Until /health answers; raises with the log's tail if the server died or hung."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/health")
                return
            except Exception:
                died = self.proc.poll() is not None
                if died and self._retries_left > 0 and self._died_of_port_race():
                    self._retries_left -= 1
                    self._log.close()
                    self._spawn()
                    continue
                if died or time.monotonic() > deadline:
                    self._log.flush()
                    raise RuntimeError(f"server did not start (rc {self.proc.poll()}):\n"
                                       + self.log_path.read_text()[-4000:]) from None
                time.sleep(1)

    def generate(self, input_ids: list[list[int]], params: dict) -> list[dict]:
        return self.post("/generate", {"input_ids": input_ids, "sampling_params": params})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        self._log.close()

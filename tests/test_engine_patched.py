"""The patch series instead of the plugin: a patched SGLang 0.5.23, plugin disabled.

A copy of the installed sglang package is patched with tools/apply.sh and put first
on the engine processes' import path; SGLANG_PLUGINS whitelists only the CPU test
shims, so every NWOR call comes from the patched call sites. The checks are those
of tests/test_engine_nwor.py: outputs identical to unpatched upstream, every verify
step staged all rows and committed exactly the accepted ones, rejected rows still
hold the debug poison, no pool row outside the commit list changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sglang  # the parent process keeps the installed, unpatched package

from test_engine_nwor import PROMPTS, _check_steps
from tools.engine_run import run_engine
from tools.make_tiny_models import encode
from tests.upstream_memo import upstream_run

pytestmark = pytest.mark.engine

INSTALLED = Path(sglang.__file__).resolve().parent


_IMPORT_CHECK = r"""
import importlib, sys
mods = ["sglang.srt.model_executor.model_runner", "sglang.srt.layers.attention.triton_backend",
        "sglang.srt.speculative.spec_utils", "sglang.srt.models.utils",
        "sglang.kernels.ops.speculative.spec_tree", "sglang.srt.managers.scheduler",
        "sglang.srt.sampling.sampling_batch_info",
        "sglang.srt.model_executor.runner.decode_cuda_graph_runner"]
# ngram_worker (patch 0007) needs sgl_kernel's CUDA ops to import outside an engine with
# the CPU test shims; test_patched_tree_plugin_off_matches_upstream covers its site.
sys.modules["sglang_nwor_scv"] = None  # the package is not installed
loaded = [importlib.import_module(m) for m in mods]
assert all(m.__file__.startswith(sys.argv[1]) for m in loaded), [m.__file__ for m in loaded]
assert all(m._nwor_sites is None for m in loaded), "patched modules need the package"
del sys.modules["sglang_nwor_scv"]
loaded = [importlib.reload(m) for m in loaded]
from sglang_nwor_scv import hooks, sites, state
assert all(m._nwor_sites is sites for m in loaded)
from sglang_nwor_scv import versions
adapter = versions.adapter_for(versions.installed_sglang_version())
assert state._wired == set(adapter.TARGETS) - {"ngram_mask"}, state._wired
assert not state.missing_sites()
# The capture site is the plugin's own; the forward's graph replay reaches the stage.
model_runner, graph_runner = loaded[0], loaded[-1]
assert graph_runner._nwor_graph_capture is sites.graph_capture
import types
from sglang.srt.model_executor.forward_batch_info import ForwardMode
seen = []
sites.begin_verify_forward = lambda runner, fb: None  # spies: record what the site gets
sites.end_verify_forward = lambda runner, fb, ok, replayed: seen.append((ok, replayed))
for replayed in (False, True):
    with model_runner._nwor_verify_forward(None, types.SimpleNamespace(
            forward_mode=ForwardMode.TARGET_VERIFY)) as step:
        step["graph_replayed"] = replayed
assert seen == [(True, False), (True, True)], seen
print("ok")
"""


def test_patched_modules_import_with_and_without_the_package(patched_site):
    r = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, str(patched_site)],
                       capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(patched_site), "PATH": "/usr/bin:/bin",
                            "TRITON_INTERPRET": "1", "HOME": str(patched_site)})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("spec", ["ngram-tree", "ngram-tree+no-draft", "standalone-tree"])
def test_patched_tree_plugin_off_matches_upstream(spec, tiny_models, patched_site, tmp_path):
    spec, _, no_draft = spec.partition("+")  # +no-draft: SGLANG_SCV_NGRAM_DRAFT=0 (patch 0007 too)
    prompts = [encode(p) for p in PROMPTS]
    upstream = upstream_run(spec, tiny_models, prompts)
    totals = tmp_path / "totals.json"
    patched = run_engine(spec, tiny_models, prompts, plugin_on=False,
                         extra_pythonpath=(str(patched_site),),
                         extra_env={"SGLANG_NWOR_SCV_TOTALS": str(totals),
                                    "SGLANG_NWOR_SCV_LOG_INTERVAL": "1",
                                    **({"SGLANG_SCV_NGRAM_DRAFT": "0"} if no_draft else {})})
    if spec.startswith("ngram"):  # patch 0007: the full mask came from the kernel
        t = json.loads(totals.read_text())
        assert t["ngram_mask_kernel"] > 0
        # by default every mask came from the draft kernel; switched off, it never ran
        assert t["ngram_draft_kernel"] == (0 if no_draft else t["ngram_mask_kernel"]), t
    assert Path(sglang.__file__).resolve().parent == INSTALLED
    assert not upstream.steps, "unpatched, plugin-off run must not stage anything"
    assert patched.outputs == upstream.outputs
    assert all(len(o) > 0 for o in patched.outputs)
    # Step records with the plugin off come only from the patched call sites.
    _check_steps(patched, expect_rows_per_req=4)
    assert patched.accept_length == pytest.approx(upstream.accept_length)

"""Shared fixtures. GPU tests (marker ``gpu``) skip cleanly without CUDA; engine
tests run the real SGLang engine (on the CPU through tests/cpu_shims)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

if not HAS_CUDA:
    # Triton kernels run under the interpreter on the CPU; set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # ...and each kernel a test launches is also compiled for the H100 (tests/hopper_compile.py)
    from tests import hopper_compile

    hopper_compile.install()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """On a GPU machine, print a failure's text the moment it happens: a device step cut by
    its time limit never reaches pytest's summary, and runs 49 and 51 lost two failures so."""
    if HAS_CUDA and report.failed:
        print(f"\nFAILED NOW {report.nodeid} ({report.when}):\n{report.longreprtext}", file=sys.stderr,
              flush=True)


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """The trained tiny target/draft pair (built once, ~20 s, cached in .fixtures/)."""
    from tools.make_tiny_models import ensure

    return ensure(Path(os.environ.get("NWOR_SCV_FIXTURES", REPO / ".fixtures" / "tiny")))


@pytest.fixture(scope="session")
def patched_site(tmp_path_factory) -> Path:
    """A site-packages-like directory holding a copy of the installed sglang, patched with
    tools/apply.sh (engines put it first on their import path: the patch series instead
    of the plugin)."""
    import sglang

    site = tmp_path_factory.mktemp("patched-site")
    # __pycache__ comes along: the .pyc of a patched file is stale (mtime/size) and rebuilt.
    subprocess.run(["cp", "-a", str(Path(sglang.__file__).resolve().parent), str(site / "sglang")],
                   check=True)
    r = subprocess.run(["bash", str(REPO / "tools" / "apply.sh"), str(site)],
                       capture_output=True, text=True)
    series = (REPO / "patches" / f"sglang-{sglang.__version__}" / "series").read_text()
    count = sum(1 for line in series.splitlines() if line.strip() and not line.startswith("#"))
    assert r.returncode == 0 and f"applied {count} patches" in r.stdout, r.stdout + r.stderr
    return site


def _network_up() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def upstream() -> dict[str, Path]:
    """version -> upstream checkout root (holding python/sglang/) of every supported
    release, from ci/fetch_upstream_sources.sh (release wheels, cached in .cache/upstream/)."""
    versions = ["0.5.23", "0.5.17"]
    cache = Path(os.environ.get("NWOR_SCV_UPSTREAM_CACHE", REPO / ".cache" / "upstream"))
    r = subprocess.run(["bash", str(REPO / "ci" / "fetch_upstream_sources.sh"), *versions],
                       capture_output=True, text=True,
                       env={**os.environ, "NWOR_SCV_UPSTREAM_CACHE": str(cache)})
    if r.returncode != 0:
        if not _network_up():
            pytest.skip("network unavailable: cannot download the upstream sglang wheels "
                        f"(ci/fetch_upstream_sources.sh): {r.stderr.strip()[-300:]}")
        raise AssertionError(f"ci/fetch_upstream_sources.sh failed:\n{r.stdout}\n{r.stderr}")
    return {v: cache / f"sglang-{v}" for v in versions}


@pytest.fixture(scope="session")
def upstream_reconstruct(request):
    """Upstream's reconstruction: ``sgl_kernel``'s op on a GPU machine (what 0.5.17 calls),
    else SGLang 0.5.23's Triton port, compiled from its source without the module's
    ``sgl_kernel`` import."""
    import __future__
    import ast

    import torch
    import triton

    if torch.cuda.is_available():
        from sgl_kernel.speculative import reconstruct_indices_from_tree_mask

        return reconstruct_indices_from_tree_mask
    path = request.getfixturevalue("upstream")["0.5.23"] / \
        "python/sglang/kernels/ops/speculative/reconstruct_tree.py"
    tree = ast.parse(path.read_text())
    keep = {"_reconstruct_tree_mask_kernel", "_num_warps_for", "reconstruct_indices_from_tree_mask_triton"}
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in keep]
    assert {node.name for node in body} == keep, "0.5.23's reconstruct_tree.py changed"
    code = compile(ast.Module(body=body, type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    import triton.language as tl

    namespace = {"torch": torch, "triton": triton, "tl": tl, "next_power_of_2": triton.next_power_of_2,
                 "__name__": "_sglang_0523_reconstruct_tree"}
    exec(code, namespace)
    return namespace["reconstruct_indices_from_tree_mask_triton"]

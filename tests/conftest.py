"""Shared fixtures. GPU tests (marker ``gpu``) skip cleanly without CUDA; engine
tests run the real SGLang engine (on the CPU through tests/cpu_shims)."""

from __future__ import annotations

import os
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


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """The trained tiny target/draft pair (built once, ~20 s, cached in .fixtures/)."""
    from tools.make_tiny_models import ensure

    return ensure(Path(os.environ.get("NWOR_SCV_FIXTURES", REPO / ".fixtures" / "tiny")))

"""Shape lists for the kernel tests, cut to their ends under compute-sanitizer.

Under the sanitizer a kernel runs 10-100x slower: on an H200 (run 30) memcheck covered 62
tests and racecheck 6 in 150 s each. ``ci/gpu/run_gpu_suite.sh`` sets
``NWOR_SCV_SANITIZER_SHAPES=1`` for its sanitizer steps; each parametrized shape list then keeps
its first entry (the edge: bs 1, the smallest N) and its last (the largest real shape), and
the three tools fit one device call. Dtype and padding cases are not cut.
"""

from __future__ import annotations

import os

SANITIZER = os.environ.get("NWOR_SCV_SANITIZER_SHAPES") == "1"


def ends(shapes):
    """``shapes`` unchanged, or its first and last entry under the sanitizer."""
    shapes = list(shapes)
    return [shapes[0], shapes[-1]] if SANITIZER and len(shapes) > 2 else shapes

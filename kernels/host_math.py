"""Launch-size arithmetic for the per-step launchers, in plain Python.

``triton.cdiv`` is a ``ConstexprFunction`` since Triton 3.5: called from host code it
unwraps its arguments and re-imports a module on every call, several µs against well under
one for the same integer arithmetic here. (SGLang replaces ``triton.next_power_of_2`` by
a plain function of its own when it is imported, but not ``cdiv``; the plugin's kernels
do not lean on that side effect either way.)"""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ``a`` and positive ``b``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n``; 1 for ``n`` <= 1 (as SGLang's replacement)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1

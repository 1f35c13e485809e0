"""The launchers' plain-Python size arithmetic."""

from __future__ import annotations

from fractions import Fraction
from math import ceil

from sglang_nwor_scv.kernels.host_math import cdiv, next_power_of_2


def test_next_power_of_2():
    for n in [*range(-2, 4100), 2**20 - 1, 2**20, 2**20 + 1, 2**40 + 3]:
        p = next_power_of_2(n)
        assert p >= 1 and p & (p - 1) == 0, n  # a power of two
        assert p >= n and (p == 1 or p // 2 < n), n  # the smallest one >= n


def test_cdiv():
    for a in [*range(0, 700), 2**31 + 5, 2**62 + 1]:
        for b in (1, 2, 3, 7, 64, 512, 1024):
            assert cdiv(a, b) == ceil(Fraction(a, b)), (a, b)

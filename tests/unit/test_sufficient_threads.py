"""The two-thread blocked pass of the per-group sufficient statistics gives the single-thread numbers."""

from __future__ import annotations

import numpy as np
import pytest

from memoe.core.linalg import sufficient
from memoe.core.linalg.sufficient import GroupSums, pass_threads


def _stats(codes, ngroups, cols):
    s = GroupSums(codes, ngroups)
    s.prepare(cols)
    return s.cross(cols[:2]), s.cross(cols[:2], cols), s.total(cols), s.count


@pytest.mark.parametrize("threads", ["2", "3"])
def test_threaded_pass_is_bit_identical(monkeypatch, threads):
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 30, 5000)  # unequal groups, many blocks
    codes = np.repeat(np.arange(len(sizes)), sizes)
    n = len(codes)
    cols = [np.ones(n), rng.normal(size=n), rng.normal(size=n) * 3, rng.normal(size=n)]
    monkeypatch.setattr(sufficient, "ROW_CHUNK", 1000)
    monkeypatch.setenv("MEMOE_THREADS", "1")
    ref = _stats(codes, len(sizes), cols)
    monkeypatch.setenv("MEMOE_THREADS", threads)
    got = _stats(codes, len(sizes), cols)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # and both are the per-group sums
    np.testing.assert_allclose(got[1][1, 2], np.bincount(codes, cols[1] * cols[2]), rtol=1e-12, atol=1e-12)


def test_pass_threads_setting(monkeypatch):
    monkeypatch.delenv("MEMOE_THREADS", raising=False)
    assert pass_threads(10**8) == int(sufficient.THREADS_DEFAULT)
    monkeypatch.setenv("MEMOE_THREADS", "auto")
    assert pass_threads(1000) == 1
    assert pass_threads(sufficient.THREAD_MIN_ROWS) in (1, 2)
    monkeypatch.setenv("MEMOE_THREADS", "1")
    assert pass_threads(10**8) == 1
    monkeypatch.setenv("MEMOE_THREADS", "2")
    assert pass_threads(10) == 2
    monkeypatch.setenv("MEMOE_THREADS", "lots")
    assert pass_threads(10**8) == 1


def _segments_by_diff(codes, ngroups):
    # the previous definition (np.diff steps), the reference
    step = np.diff(codes)
    if codes[0] != 0 or codes[-1] != ngroups - 1 or step.min(initial=0) < 0 or step.max(initial=0) > 1:
        return None
    return np.concatenate(([0], np.flatnonzero(step) + 1))


def test_group_segments_as_the_diff_definition():
    from memoe.core.linalg.sufficient import group_segments

    rng = np.random.default_rng(6)
    cases = [np.zeros(1, dtype=np.int64), np.repeat(np.arange(50), rng.integers(1, 5, 50))]
    base = cases[1]
    cases += [base[::-1].copy(), np.sort(rng.integers(0, 50, 300)), base + 1, rng.permutation(base)]
    jump = base.copy()
    jump[jump >= 10] += 1  # a level missing in the middle
    cases.append(jump)
    down = base.copy()
    down[40], down[41] = down[41], down[40] - 1
    cases.append(down)
    for c in cases:
        for ng in {int(c.max()) + 1, int(c.max()), 50}:
            a, b = group_segments(c, ng), _segments_by_diff(c, ng)
            assert (a is None and b is None) or np.array_equal(a, b), (c[:10], ng)

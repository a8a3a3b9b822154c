"""Per-group cross-products computed in one pass over the rows."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["GroupSums", "group_crossprod", "group_segments", "pass_threads"]

# rows per block of the sorted-rows pass: a few columns of this length stay in L2 cache
ROW_CHUNK = 32_768
# rows from which ``MEMOE_THREADS=auto`` runs the blocked pass on two threads (numpy's multiply and
# add.reduceat release the GIL); below it a thread hand-off costs more than it saves
THREAD_MIN_ROWS = 2_000_000
# the setting when MEMOE_THREADS is not set: one thread, as two did not pay in the measurements on the shared
# 2-core VM (benchmarks/README.md, "Design building")
THREADS_DEFAULT = "1"


def pass_threads(n: int) -> int:
    """Threads for the blocked pass over ``n`` rows, from the ``MEMOE_THREADS`` environment variable.

    ``MEMOE_THREADS`` is a number of threads (``1``: none), or ``auto``: two threads from
    ``THREAD_MIN_ROWS`` rows on when the process may use two cores; unset means ``THREADS_DEFAULT``.
    An unreadable value means one thread (this only changes the speed, never the numbers).
    """
    env = os.environ.get("MEMOE_THREADS", "").strip().lower() or THREADS_DEFAULT
    if env != "auto":
        try:
            return max(1, int(env))
        except ValueError:
            return 1
    if n < THREAD_MIN_ROWS:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def group_segments(codes: np.ndarray, ngroups: int) -> np.ndarray | None:
    """Start row of each group when the rows are sorted by group and every group is present, else None.

    Sorted rows (the usual layout of longitudinal data) let ``np.add.reduceat`` sum contiguous
    segments, which streams through memory instead of scattering as ``np.bincount`` does.
    """
    n = len(codes)
    if n == 0 or ngroups == 0:
        return None
    # every level present and in increasing order: first 0, last ngroups-1, never decreasing, and exactly
    # ngroups-1 changes (so every change is +1). Boolean temporaries (n bytes) rather than np.diff's int64
    # steps (8n bytes, 80 MB of fresh pages at 10^7 rows: 50-150 ms of page faults on a loaded VM)
    if codes[0] != 0 or codes[-1] != ngroups - 1:
        return None
    head, tail = codes[:-1], codes[1:]
    if not np.all(tail >= head):
        return None
    change = np.flatnonzero(tail != head)
    if len(change) != ngroups - 1:
        return None
    return np.concatenate(([0], change + 1))


class GroupSums:
    """Per-group sums of products of columns, computing each distinct product once.

    Parameters
    ----------
    codes : numpy.ndarray of int, shape (n,)
        Group of each row.
    ngroups : int

    Notes
    -----
    The statistics of a mixed model ask for many products that coincide: the intercept column
    appears in Z and in X, so does a time covariate with a random slope. Columns are matched by
    identity or equal content; a column of ones needs no multiplication (its sums are the counts or
    the other column's sums). Rows sorted by group are summed by segments (``np.add.reduceat``)
    in blocks of about ``ROW_CHUNK`` rows that end on group boundaries, all products of a block at
    once while its columns are in cache (:meth:`prepare`); otherwise by ``np.bincount``. The
    temporary memory is one block (or one n-vector), never an (n, k, k) array.
    """

    def __init__(self, codes: np.ndarray, ngroups: int) -> None:
        self.codes = codes
        self.ngroups = ngroups
        self.starts = group_segments(codes, ngroups)
        self._distinct: list[np.ndarray] = []
        self._seen: list[tuple[np.ndarray, int]] = []
        self._is_one: list[bool] = []
        self._sums: dict[tuple[int, int], np.ndarray] = {}
        self._count: np.ndarray | None = None

    @property
    def count(self) -> np.ndarray:
        """Rows per group, float, shape (ngroups,)."""
        if self._count is None:
            if self.starts is not None:
                self._count = np.diff(np.append(self.starts, len(self.codes))).astype(float)
            else:
                self._count = np.bincount(self.codes, minlength=self.ngroups).astype(float)
        return self._count

    def _index(self, col: np.ndarray) -> int:
        for c, i in self._seen:
            if col is c:
                return i
        i = self._match(col)
        self._seen.append((col, i))
        return i

    def _match(self, col: np.ndarray) -> int:
        for i, d in enumerate(self._distinct):
            # a short prefix rules out most distinct columns before a full pass
            if col.shape == d.shape and np.array_equal(col[:64], d[:64]) and np.array_equal(col, d):
                return i
        self._distinct.append(col)
        self._is_one.append(bool(len(col) and col[0] == 1.0 and np.all(col == 1.0)))
        return len(self._distinct) - 1

    def prepare(self, columns: Sequence[np.ndarray]) -> None:
        """Compute the sums of all products of pairs of ``columns`` in one blocked pass over the rows."""
        idx = sorted({self._index(c) for c in columns})
        todo = [
            (i, j)
            for a, i in enumerate(idx)
            for j in idx[a:]
            if (i, j) not in self._sums and not (self._is_one[i] and self._is_one[j])
        ]
        if not todo or self.starts is None:
            return
        starts, n = self.starts, len(self.codes)
        # group boundaries closest to every ROW_CHUNK rows
        bounds = np.unique(np.append(np.searchsorted(starts, np.arange(0, n, ROW_CHUNK)), self.ngroups))
        out = {key: np.empty(self.ngroups) for key in todo}
        threads = min(pass_threads(n), len(bounds) - 1)
        if threads <= 1:
            self._pass(bounds, idx, todo, out)
        else:
            # contiguous runs of blocks per thread: each writes its own groups' slices of ``out``
            cut = np.linspace(0, len(bounds) - 1, threads + 1).round().astype(int)
            parts = [bounds[a : b + 1] for a, b in itertools.pairwise(cut)]
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for f in [pool.submit(self._pass, part, idx, todo, out) for part in parts]:
                    f.result()
        self._sums.update(out)

    def _pass(self, bounds: np.ndarray, idx: list[int], todo: list[tuple[int, int]], out: dict) -> None:
        """The blocked pass over the groups ``bounds[0]:bounds[-1]`` (blocks between consecutive bounds)."""
        starts, n = self.starts, len(self.codes)
        # one scratch vector as long as the longest block of this run
        ends = np.append(starts[bounds[1:-1]], starts[bounds[-1]] if bounds[-1] < self.ngroups else n)
        buf = np.empty(max(int((ends - starts[bounds[:-1]]).max(initial=1)), 1))
        for g0, g1 in itertools.pairwise(bounds):
            r0 = starts[g0]
            r1 = starts[g1] if g1 < self.ngroups else n
            local = starts[g0:g1] - r0
            cols = {i: self._distinct[i][r0:r1] for i in idx}
            b = buf[: r1 - r0]
            for i, j in todo:
                if self._is_one[i] or self._is_one[j]:
                    v = cols[j] if self._is_one[i] else cols[i]
                else:
                    v = np.multiply(cols[i], cols[j], out=b)
                np.add.reduceat(v, local, out=out[(i, j)][g0:g1])

    def _sum(self, values: np.ndarray) -> np.ndarray:
        if self.starts is not None:
            return np.add.reduceat(values, self.starts)
        return np.bincount(self.codes, weights=values, minlength=self.ngroups)

    def _pair(self, i: int, j: int) -> np.ndarray:
        key = (min(i, j), max(i, j))
        out = self._sums.get(key)
        if out is None:
            a, b = self._distinct[key[0]], self._distinct[key[1]]
            one_a, one_b = self._is_one[key[0]], self._is_one[key[1]]
            if one_a and one_b:
                out = self.count
            elif one_a or one_b:
                out = self._sum(b if one_a else a)
            else:
                out = self._sum(a * b)
            self._sums[key] = out
        return out

    def total(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``out[a, b] = sum over all rows of left[a] * right[b]``, shape (len(left), len(right))."""
        li = [self._index(c) for c in left]
        ri = li if right is None else [self._index(c) for c in right]
        return np.array([[self._pair(i, j).sum() for j in ri] for i in li])

    def cross(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``out[a, b, g] = sum_{rows in g} left[a] * right[b]`` (structure-of-arrays, contiguous).

        Parameters
        ----------
        left, right : sequence of numpy.ndarray, each shape (n,)
            ``right`` defaults to ``left``.

        Returns
        -------
        numpy.ndarray, shape (len(left), len(right), ngroups)
        """
        li = [self._index(c) for c in left]
        ri = li if right is None else [self._index(c) for c in right]
        out = np.empty((len(li), len(ri), self.ngroups))
        for a, i in enumerate(li):
            for b, j in enumerate(ri):
                out[a, b] = self._pair(i, j)
        return out


def group_crossprod(
    codes: np.ndarray,
    ngroups: int,
    left: Sequence[np.ndarray],
    right: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Per-group sums of products of columns: ``out[g, a, b] = sum_{rows in g} left[a] * right[b]``.

    Parameters
    ----------
    codes : numpy.ndarray of int, shape (n,)
        Group of each row.
    ngroups : int
    left, right : sequence of numpy.ndarray, each shape (n,)
        Columns; ``right`` defaults to ``left`` and then only the upper triangle is computed.

    Returns
    -------
    numpy.ndarray, shape (ngroups, len(left), len(right))

    Notes
    -----
    One ``np.bincount`` per pair of columns keeps the temporary memory at one n-vector, so the
    per-group statistics of a million rows cost far less memory than an (n, a, b) product array.
    """
    symmetric = right is None
    right = left if right is None else right
    out = np.empty((ngroups, len(left), len(right)))
    for a, ca in enumerate(left):
        for b, cb in enumerate(right):
            if symmetric and b < a:
                out[:, a, b] = out[:, b, a]
                continue
            out[:, a, b] = np.bincount(codes, weights=ca * cb, minlength=ngroups)
    return out

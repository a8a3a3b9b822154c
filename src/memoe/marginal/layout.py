"""Rows grouped by subject and subjects grouped by size: the batching layout of the marginal path.

Every per-subject matrix of the marginal model (correlation C_i, covariance W_i, its Cholesky
factor) is n_i x n_i. Subjects with the same number of rows form a *bucket*: their matrices are
stacked into one (G, n, n) array and factored by one batched call, so the objective loops over the
distinct group sizes (a handful), never over subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Bucket", "GroupLayout", "cross_bucket_index", "make_layout"]


@dataclass(frozen=True)
class Bucket:
    """All groups with ``n`` rows.

    Attributes
    ----------
    rows : numpy.ndarray of int, shape (G, n)
        Row indices (into the model frame) of each group, in data order within the group (nlme's
        order: the k-th row of a group is its k-th visit).
    groups : numpy.ndarray of int, shape (G,)
        Group codes.
    """

    rows: np.ndarray
    groups: np.ndarray

    @property
    def n(self) -> int:
        return self.rows.shape[1]

    @property
    def size(self) -> int:
        return self.rows.shape[0]


@dataclass(frozen=True)
class GroupLayout:
    """Group membership of every row and the size buckets.

    Attributes
    ----------
    name : str or None
        Grouping column (``None``: each row is its own group, i.e. independent residuals).
    codes : numpy.ndarray of int, shape (N,)
    levels : pandas.Index
    buckets : list of Bucket
        Ordered by group size.
    position : numpy.ndarray of int, shape (N,)
        0-based position of each row within its group (visit order).
    """

    name: str | None
    codes: np.ndarray
    levels: pd.Index
    buckets: list[Bucket]
    position: np.ndarray

    @property
    def ngroups(self) -> int:
        return len(self.levels)

    @property
    def max_size(self) -> int:
        return max(b.n for b in self.buckets)

    def gather(self, values: np.ndarray) -> list[np.ndarray]:
        """Per bucket, ``values[rows]``: shape (G, n) for a vector, (G, n, k) for a matrix."""
        return [values[b.rows] for b in self.buckets]

    def scatter(self, pieces: list[np.ndarray], nrows: int) -> np.ndarray:
        """Inverse of :meth:`gather` for per-row vectors: back to frame row order, shape (N,)."""
        out = np.empty(nrows)
        for b, v in zip(self.buckets, pieces, strict=True):
            out[b.rows.ravel()] = v.ravel()
        return out


def make_layout(codes: np.ndarray, levels: pd.Index, name: str | None) -> GroupLayout:
    """Bucket the groups of ``codes`` by size.

    Parameters
    ----------
    codes : numpy.ndarray of int, shape (N,)
        Group code of each row (0 .. len(levels) - 1).
    levels : pandas.Index
    name : str or None

    Returns
    -------
    GroupLayout
    """
    codes = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable")  # stable: visit order within a group is data order
    counts = np.bincount(codes, minlength=len(levels))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    buckets = []
    for n in np.unique(counts[counts > 0]):
        groups = np.flatnonzero(counts == n)
        rows = order[starts[groups][:, None] + np.arange(n)[None, :]]
        buckets.append(Bucket(rows=rows, groups=groups))
    return GroupLayout(name=name, codes=codes, levels=levels, buckets=buckets, position=position)


def cross_bucket_index(outer: GroupLayout, inner: GroupLayout, shared: list[bool] | None = None) -> list[np.ndarray]:
    """Where each within-outer-group pair of rows sits in the inner layout's stacked blocks.

    The residual correlation of a nested ``lme`` acts within the innermost groups (nlme's rule): it is
    computed batched on ``inner``'s buckets, one (G', m, m) array per bucket, but the marginal
    covariance is factored per *outer* group. With the inner blocks flattened and concatenated in
    bucket order, entry ``[g, a, b]`` of the result is the position of the (a, b) entry of outer
    group g's block-diagonal correlation matrix in that vector, or -1 where rows a and b lie in
    different inner groups (correlation 0). One gather then builds every outer block.

    Parameters
    ----------
    outer, inner : GroupLayout
        Every inner group lies within one outer group.
    shared : list of bool, optional
        Per bucket of ``inner``: its correlation matrices are one (1, m, m) block shared by all its
        groups (position-based structures such as AR(1) over the row order); such a bucket occupies
        m * m entries of the vector, not G' m m.

    Returns
    -------
    list of numpy.ndarray of int, shape (G, n, n) per bucket of ``outer``
    """
    ng = inner.ngroups
    bucket_of = np.empty(ng, dtype=np.int64)
    slot_of = np.empty(ng, dtype=np.int64)
    size_of = np.empty(ng, dtype=np.int64)
    offset_of = np.empty(ng, dtype=np.int64)
    start = 0
    for k, b in enumerate(inner.buckets):
        one = bool(shared[k]) if shared is not None else False
        bucket_of[b.groups] = k
        slot_of[b.groups] = 0 if one else np.arange(b.size)
        size_of[b.groups] = b.n
        offset_of[b.groups] = start
        start += (1 if one else b.size) * b.n * b.n
    out = []
    for b in outer.buckets:
        g = inner.codes[b.rows]  # (G, n) inner group of each row
        pos = inner.position[b.rows]
        m = size_of[g]
        base = offset_of[g] + slot_of[g] * m * m  # start of the row's inner block
        idx = base[:, :, None] + pos[:, :, None] * m[:, :, None] + pos[:, None, :]
        out.append(np.where(g[:, :, None] == g[:, None, :], idx, -1))
    return out

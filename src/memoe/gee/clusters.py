"""Clusters and waves: the row order geepack assumes, and clusters batched by size.

geepack forms clusters from runs of equal ids in row order and numbers the rows of a cluster
(``waves``) by position or by ``as.integer(as.factor(time))``. :func:`cluster_layout` puts the kept rows
in that order (grouping non-contiguous groups, with :class:`GEEOrderWarning`), and :func:`make_batches`
stacks all clusters of one size into (G, s, ...) arrays, so every per-cluster computation of the
estimating equations is one batched array operation (no Python loop per cluster).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.core.design.grouping import make_grouping_factor
from memoe.errors import DataError, MemoeWarning, caller_stacklevel

__all__ = ["Batch", "ClusterLayout", "GEEOrderWarning", "cluster_layout", "make_batches", "unstructured_index"]


class GEEOrderWarning(MemoeWarning):
    """The rows of a group were not contiguous; memoe grouped them (geepack would split them)."""


@dataclass(frozen=True)
class Batch:
    """All clusters of one size ``s``: (G, s, ...) arrays in sorted-row order."""

    rows: np.ndarray  # (G, s) positions in the sorted arrays
    X: np.ndarray  # (G, s, p)
    y: np.ndarray  # (G, s)
    waves: np.ndarray  # (G, s), 1-based
    pj: np.ndarray  # (m,) first index of each within-cluster pair j < k (geepack's order)
    pk: np.ndarray  # (m,) second index
    lag: np.ndarray  # (G, m) |w_k - w_j|
    pair_param: np.ndarray  # (G, m) unstructured parameter of each pair

    @property
    def s(self) -> int:
        return self.y.shape[1]


@dataclass(frozen=True)
class ClusterLayout:
    """The kept rows in cluster order.

    Attributes
    ----------
    order : positions of the kept rows in cluster order (``sorted = kept[order]``)
    starts, sizes : first sorted position and number of rows of each cluster
    waves : 1-based wave of each sorted row
    T : largest wave
    labels : the group label of each cluster, in cluster order
    """

    order: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    waves: np.ndarray
    T: int
    labels: np.ndarray


def unstructured_index(a: np.ndarray, b: np.ndarray, T: int) -> np.ndarray:
    """Position of the wave pair (a, b), 1 <= a < b <= T, in geepack's order (1:2, 1:3, ..., 2:3, ...)."""
    a0 = a - 1
    return (a0 * (2 * T - a0 - 1)) // 2 + (b - a - 1)


def cluster_layout(kept: pd.DataFrame, group: str, time: str | None, corstr: str) -> ClusterLayout:
    """Order the kept rows by cluster (first appearance) and, with ``time``, by time within a cluster.

    Raises
    ------
    DataError
        Fewer than 2 clusters; a time value repeated within a cluster; a correlation no cluster can
        inform (every cluster of one row with a non-independence structure; unstructured wave pairs
        never observed together).
    """
    # cluster order: first appearance (so contiguous data keep geepack's order exactly)
    gf = make_grouping_factor(kept, (group,))
    codes = gf.codes
    runs = 1 + int(np.count_nonzero(codes[1:] != codes[:-1]))
    first = np.full(gf.nlevels, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    cluster_rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[codes]
    if time is not None:
        tcol = kept[time]
        if not (pd.api.types.is_numeric_dtype(tcol) or isinstance(tcol.dtype, pd.CategoricalDtype)):
            tcol = tcol.astype(str)
        # dense rank of the time values: geeglm's waves = as.integer(as.factor(time))
        t_codes = make_grouping_factor(kept.assign(**{time: tcol}), (time,)).codes
        order = np.lexsort((np.arange(len(codes)), t_codes, cluster_rank))
    else:
        t_codes = None
        order = np.lexsort((np.arange(len(codes)), cluster_rank))
    if runs != gf.nlevels:
        warnings.warn(
            f"the rows of some groups in {group!r} are not contiguous ({runs} runs for {gf.nlevels} groups); "
            f"memoe groups them keeping their row order within the group, whereas geepack would treat each "
            f"run as a separate cluster: sort the data by {group!r} to get the same fit in R",
            GEEOrderWarning,
            stacklevel=caller_stacklevel(),
        )
    sorted_codes = cluster_rank[order]
    starts = np.r_[0, np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    if t_codes is not None:
        ts = t_codes[order]
        dup = (ts[1:] == ts[:-1]) & (sorted_codes[1:] == sorted_codes[:-1])
        if np.any(dup):
            bad = gf.levels[codes[order][1:][dup][0]]
            raise DataError(
                f"time column {time!r} repeats a value within group {bad!r} of {group!r}; "
                "each row of a cluster needs its own time"
            )
        waves = ts + 1
    else:
        waves = np.arange(len(order)) - np.repeat(starts, sizes) + 1
    T = int(waves.max())
    if len(starts) < 2:
        # the sandwich is a sum over clusters: one cluster gives a rank-one "covariance"
        raise DataError(
            f"group column {group!r} has a single cluster ({gf.levels[0]!r}) in the rows used; "
            "a GEE needs at least 2 clusters (and many for reliable sandwich standard errors)"
        )
    if corstr != "independence" and sizes.max() == 1:
        raise DataError(
            f"every cluster of {group!r} has one row, so the {corstr} working correlation cannot be estimated; "
            "use corstr='independence' or check the group column"
        )
    if corstr == "unstructured":
        _check_unstructured_pairs(starts, sizes, waves, T, group, time)
    labels = gf.levels[codes[order][starts]]
    return ClusterLayout(order=order, starts=starts, sizes=sizes, waves=waves, T=T, labels=labels)


def _check_unstructured_pairs(
    starts: np.ndarray, sizes: np.ndarray, waves: np.ndarray, T: int, group: str, time: str | None
) -> None:
    """Every pair of waves must be observed together somewhere, else its correlation is not estimable."""
    seen = np.zeros((T, T), dtype=bool)
    for s in np.unique(sizes[sizes > 1]):  # one pass per distinct cluster size
        idx = starts[sizes == s][:, None] + np.arange(s)
        w = waves[idx] - 1
        a, b = np.triu_indices(int(s), 1)
        seen[np.minimum(w[:, a], w[:, b]), np.maximum(w[:, a], w[:, b])] = True
    a, b = np.triu_indices(T, 1)
    missing = [f"{i + 1}:{j + 1}" for i, j in zip(a, b, strict=True) if not seen[i, j]]
    if missing:
        what = f"time column {time!r}" if time is not None else f"row positions within {group!r}"
        raise DataError(
            f"unstructured working correlation: the waves ({what}) {missing[:5]} never occur together "
            "in a cluster, so their correlations cannot be estimated"
        )


def make_batches(X: np.ndarray, y: np.ndarray, waves: np.ndarray, starts: np.ndarray, T: int) -> list[Batch]:
    """The clusters (rows ``starts[i]`` onwards of the sorted arrays) grouped by size."""
    sizes = np.diff(np.r_[starts, len(y)])
    out = []
    for s in np.unique(sizes):
        first = starts[sizes == s]
        rows = first[:, None] + np.arange(s)[None, :]
        pj, pk = np.triu_indices(int(s), 1)
        w = waves[rows]
        lo, hi = np.minimum(w[:, pj], w[:, pk]), np.maximum(w[:, pj], w[:, pk])
        out.append(
            Batch(
                rows=rows,
                X=X[rows],
                y=y[rows],
                waves=w,
                pj=pj,
                pk=pk,
                lag=(hi - lo).astype(float),
                pair_param=unstructured_index(lo, hi, T) if len(pj) else np.zeros((len(first), 0), dtype=int),
            )
        )
    return out

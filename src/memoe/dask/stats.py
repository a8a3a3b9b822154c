"""Per-subject sufficient statistics of one partition, and what one objective evaluation asks of them.

A partition's statistics (:class:`PartStats`) are those of :class:`memoe.lmm.objective.PLSProblem` for
the partition's subjects: per subject ``Z_j'Z_j`` (q, q), ``Z_j'[X_j y_j]`` (q, m) and the count, plus
the partition total ``[X y]'[X y]`` (m, m). They live on the workers (persisted); the raw rows are
released. An evaluation sends ``lambda`` and gets back ``(sum_j log det(L_j L_j'), sum_j C_j'C_j)``:
one float and an m x m matrix per partition, summed by a tree reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.core.linalg.batched import batched_backward_solve_t, batched_forward_solve
from memoe.core.linalg.threads import blas_threads
from memoe.lmm.objective import PLSProblem

__all__ = ["PartStats", "add_reduced", "part_first_block", "part_ranef", "part_stats"]


@dataclass
class PartStats:
    """Sufficient statistics of one partition (lives on a worker).

    Attributes
    ----------
    problem : PLSProblem or None
        The partition's problem with its row references released (None without rows).
    levels : pandas.Index
        The partition's subjects, in the order of the statistics.
    n, n_dropped : int
    XYtXY : numpy.ndarray, shape (m, m)
        ``[X y]'[X y]`` of the partition's rows (all formulaic columns before the rank check).
    """

    problem: PLSProblem | None
    levels: pd.Index
    n: int
    n_dropped: int
    XYtXY: np.ndarray


def part_stats(pdf: pd.DataFrame, design, kept: bool) -> PartStats:
    """Statistics of one partition (rows -> per-subject sums); ``kept=False`` for every formulaic column."""
    from memoe.dask.spec import partition_arrays

    y, X, Z, codes, levels, n_dropped, _ = partition_arrays(pdf, design, kept=kept)
    m = X.shape[1] + 1
    if len(y) == 0:
        return PartStats(None, levels, 0, n_dropped, np.zeros((m, m)))
    prob = PLSProblem(y=y, X=X, codes=[codes], nlevels=[len(levels)], Z=[Z], theta_map=design.theta_map)
    # release the rows: the objective needs only the per-level sums
    prob._xy_rows = None
    prob.codes = None
    return PartStats(prob, levels, len(y), n_dropped, prob.XYtXY)


def part_counts(s: PartStats) -> np.ndarray:
    """``[n, n_dropped, levels]`` of a partition."""
    return np.array([s.n, s.n_dropped, len(s.levels)], dtype=np.int64)


def part_gram(s: PartStats) -> np.ndarray:
    return s.XYtXY


# glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD (mallopt parameters)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold at
# 128 kB: every temporary of the per-level kernels (~2 MB chunks) is then mmap-ed and unmapped at each
# evaluation (measured 3x slower). Temporaries up to this size reuse the heap again.
MALLOC_KEEP_BYTES = 32 * 2**20
_malloc_tuned = False


def tune_malloc() -> None:
    """Let glibc keep evaluation-sized temporaries on the heap (once per worker process; no-op elsewhere)."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * MALLOC_KEEP_BYTES)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def part_first_block(s: PartStats, lam1: np.ndarray) -> tuple[float, np.ndarray]:
    """``(sum_j log det(L_j L_j'), sum_j C_j' C_j)`` of the partition at ``lam1`` (see ``PLSProblem._first_block``)."""
    if s.problem is None:
        m = s.XYtXY.shape[0]
        return 0.0, np.zeros((m, m))
    tune_malloc()
    # one BLAS thread: worker processes share the cores, and threaded BLAS in each of them
    # oversubscribes (measured 10x slower per partition with 2 workers on 2 cores)
    with blas_threads(1):
        logdet, CtC, _ = s.problem._first_block(lam1, keep=False)
    return logdet, CtC


def add_reduced(*parts):
    """Tree-reduction step: elementwise sum of ``(float, array)`` tuples (or arrays)."""
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(sum(p[i] for p in parts) for i in range(len(first)))
    return sum(parts[1:], first)


def part_ranef(s: PartStats, lam1: np.ndarray, beta: np.ndarray, sigma: float, columns, group: str) -> pd.DataFrame:
    """Conditional modes ``b_j`` and their conditional SDs for the partition's subjects.

    As ``PLSProblem._solve_scaled`` and ``_conditional_variances`` with one factor:
    ``u_j = L_j^-T (C_j[:, y] - C_j[:, X] beta)``, ``b_j = lambda u_j``,
    ``Var(b_j | y) = sigma^2 lambda (L_j L_j')^-1 lambda'``.
    """
    q = len(columns)
    cols = list(columns) + [f"condsd_{c}" for c in columns]
    if s.problem is None:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols}, index=pd.Index(s.levels, name=group))
    with blas_threads(1):
        _, _, kept = s.problem._first_block(lam1, keep=True)
    L = np.ascontiguousarray(np.moveaxis(kept[0], -1, 0))
    C = np.moveaxis(kept[1], -1, 0)
    p = len(beta)
    rhs = C[:, :, -1] - C[:, :, :p] @ beta
    u = batched_backward_solve_t(L, np.ascontiguousarray(rhs[:, :, None]))[:, :, 0]
    b = u @ lam1.T
    eye = np.ascontiguousarray(np.broadcast_to(np.eye(q), L.shape))
    Linv = batched_forward_solve(L, eye)
    V = np.einsum("nki,nkj->nij", Linv, Linv)
    cv = sigma**2 * np.einsum("ab,nbc,dc->nad", lam1, V, lam1)
    sd = np.sqrt(np.diagonal(cv, axis1=1, axis2=2))
    out = pd.DataFrame(np.hstack([b, sd]), columns=cols, index=pd.Index(s.levels, name=group))
    return out

"""Factors nested within the outer grouping factor on Dask: ``(1 | id/h)``, ``(t | id) + (1 | id:h)``.

Once the rows are aligned so that each outer level (subject) lives in one partition, and every level of
an inner factor lies within one subject, the PLS system is block-diagonal across subjects and hence
across partitions. Each partition therefore holds an ordinary in-memory
:class:`memoe.lmm.objective.PLSProblem` on its rows (the same fixed-effects spec, the partition's own
levels), persisted on the workers. An evaluation sends theta and gets back
:meth:`PLSProblem.schur_pieces`: ``log det`` of the partition's random-effects factor and its
``(p + 1) x (p + 1)`` Schur complement on ``[X y]``; the client sums them, factors the sum once and
applies the profiled ML/REML deviance exactly as in memory (lme4's ``lmer`` criterion).

An inner factor given as its own column (``(1 | id) + (1 | h)``) is nested only when every level of
``h`` lies within one subject: checked per partition (each level of ``h`` with one ``id``) and across
partitions (the levels counted per partition add up to the global count); otherwise the factors are
crossed and refused (:class:`memoe.dask.spec.DaskFormulaError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.linalg import lapack

from memoe.core.design.fixed import evaluate_matrix
from memoe.core.design.grouping import make_grouping_factor
from memoe.core.linalg.sparse_schur import have_sparse_cholesky
from memoe.core.linalg.threads import blas_threads
from memoe.dask.spec import DaskFormulaError, NestedBlock
from memoe.lmm.objective import SPARSE_MIN_REST, Factorization, PLSProblem

__all__ = ["NestedBlock", "NestedPartStats", "nested_part_stats", "part_nested_counts", "part_schur"]


@dataclass
class NestedPartStats:
    """One partition's PLS problem (rows released) and counts; lives on a worker.

    Attributes
    ----------
    problem : PLSProblem or None
        None when the partition has no complete row.
    n, n_dropped, outer_levels : int
    block_levels : numpy.ndarray of int
        Levels of each factor block present in the partition.
    XYtXY : numpy.ndarray, shape (m, m)
    """

    problem: PLSProblem | None
    n: int
    n_dropped: int
    outer_levels: int
    block_levels: np.ndarray
    XYtXY: np.ndarray


#: sparse LDL' for partitions with many later-block levels (off: see part_schur_path)
USE_SPARSE = False


def part_schur_path(nlevels: list[int], Z: list[np.ndarray]) -> str:
    """The exact Schur path of a partition's problem: dense for few later-block levels, else sparse LDL'.

    The later blocks' random effects of a partition (``m_z`` of them) couple only within a subject, so
    their sparse factor costs O(m_z) where the dense one costs O(m_z^3); "auto" could pick the
    stochastic matrix-free path, which is not exact, or the dense small path, which has no ``schur_pieces``.
    """
    mz = sum(nl * z.shape[1] for nl, z in zip(nlevels[1:], Z[1:], strict=True))
    # the sparse path is exact and fast in-process (tests: schur_pieces), but a Dask fit with sparse
    # partition problems stalled in the test cluster (not diagnosed yet): dense until it is
    return "sparse" if USE_SPARSE and mz >= SPARSE_MIN_REST and have_sparse_cholesky() else "dense"


def _nested_arrays(pdf: pd.DataFrame, design, kept: bool):
    """The partition's rows: ``y``, ``X``, per block codes / levels / ``Z``, the outer levels, drops, index.

    Raises
    ------
    DaskFormulaError
        A level of an inner factor (one not containing the outer factor) spans several subjects.
    """
    from memoe.dask.spec import partition_arrays

    y, X, _, outer_codes, outer_levels, n_dropped, index = partition_arrays(pdf, design, kept=kept)
    codes, levels, Z = [], [], []
    if len(y):
        frame = pdf.loc[index, design.used]
        for b in design.re_blocks:
            f = make_grouping_factor(frame, b.factors)
            c = np.asarray(f.codes, dtype=np.intp)
            if design.group not in b.factors:
                # each level of the inner factor must sit with one subject: (level, subject) pairs = levels
                pairs = np.unique(c.astype(np.int64) * max(len(outer_levels), 1) + outer_codes)
                if len(pairs) != f.nlevels:
                    raise DaskFormulaError(
                        f"grouping factor {b.name!r} is not nested within {design.group!r}: some of its levels occur "
                        f"with several levels of {design.group!r} (crossed factors). With a Dask DataFrame memoe fits "
                        f"one grouping factor and factors nested within it ({design.group!r}); crossed factors "
                        "couple subjects across partitions: fit in memory")
            codes.append(c)
            levels.append(f.levels)
            Z.append(np.column_stack([evaluate_matrix(s, frame, "the random effects")[:, idx] for s, idx in b.specs]))
    return y, X, codes, levels, Z, outer_levels, n_dropped, index


def nested_part_stats(pdf: pd.DataFrame, design, kept: bool) -> NestedPartStats:
    """The partition's :class:`PLSProblem` with every factor block, after checking the nesting.

    Raises
    ------
    DaskFormulaError
        A level of an inner factor (one not containing the outer factor) spans several subjects.
    """
    y, X, codes, levels, Z, outer_levels, n_dropped, _ = _nested_arrays(pdf, design, kept)
    m = X.shape[1] + 1
    if len(y) == 0:
        return NestedPartStats(None, 0, n_dropped, 0, np.zeros(len(design.re_blocks), dtype=np.int64),
                               np.zeros((m, m)))
    nlevels = [len(lv) for lv in levels]
    prob = PLSProblem(y=y, X=X, codes=codes, nlevels=nlevels, Z=Z, theta_map=design.theta_map,
                      schur=part_schur_path(nlevels, Z))
    prob.codes = None
    return NestedPartStats(prob, len(y), n_dropped, len(outer_levels), np.array(nlevels, dtype=np.int64),
                           prob.XYtXY)


def _conditional_modes(pdf: pd.DataFrame, design, theta, beta, sigma: float, condsd: bool):
    """Conditional modes ``b_k`` (and SDs) of the partition's levels given the fit's beta, theta and sigma.

    They solve the partition's PLS problem for ``y - X beta`` with no fixed effects (the system is
    block-diagonal across subjects, so the partition's part of the global solution); lme4's ``condVar``
    is ``sigma^2 Lambda (L_Z L_Z')^-1 Lambda'`` with the fit's sigma.
    """
    y, X, codes, levels, Z, _, _, index = _nested_arrays(pdf, design, kept=True)
    if len(y) == 0:
        return None, codes, Z, X, index
    r = y - (X @ beta if len(beta) else 0.0)
    nlevels = [len(lv) for lv in levels]
    prob = PLSProblem(y=r, X=np.zeros((len(r), 0)), codes=codes, nlevels=nlevels, Z=Z,
                      theta_map=design.theta_map, schur=part_schur_path(nlevels, Z))
    with blas_threads(1):
        sol = prob.solve(np.asarray(theta, dtype=float), reml=False)
        sds = None
        if condsd:
            cv = prob.conditional_variances(replace(sol, sigma=float(sigma)))
            sds = [np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in cv]
    out = {}
    for k, b in enumerate(design.re_blocks):
        idx = pd.Index(levels[k], name=b.name)
        frame = pd.DataFrame(sol.b[k], index=idx, columns=list(b.columns))
        if condsd:
            frame = pd.concat([frame, pd.DataFrame(sds[k], index=idx, columns=[f"condsd_{c}" for c in b.columns])],
                              axis=1)
        out[b.name] = frame
    return out, [c for c in codes], Z, X, index


def part_nested_ranef(pdf: pd.DataFrame, design, theta, beta, sigma: float) -> dict[str, pd.DataFrame]:
    """Per block: the partition's conditional modes and their SDs (``condsd_`` columns)."""
    out, *_ = _conditional_modes(pdf, design, theta, beta, sigma, condsd=True)
    if out is None:
        return {b.name: pd.DataFrame({c: pd.Series(dtype=float) for c in
                                      list(b.columns) + [f"condsd_{c}" for c in b.columns]},
                                     index=pd.Index([], name=b.name)) for b in design.re_blocks}
    return out


def pick_block(parts: dict, name: str) -> pd.DataFrame:
    return parts[name]


def part_nested_eta(pdf: pd.DataFrame, design, theta, beta, sigma: float) -> pd.Series:
    """Conditional fitted values ``X beta + sum_k Z_k b_k`` of the partition's rows (NaN where dropped)."""
    out, codes, Z, X, index = _conditional_modes(pdf, design, theta, beta, sigma, condsd=False)
    res = pd.Series(np.nan, index=pdf.index, name="fitted")
    if out is None:
        return res
    eta = X @ beta if len(beta) else np.zeros(X.shape[0])
    for k, b in enumerate(design.re_blocks):
        bk = out[b.name].to_numpy()
        eta = eta + np.einsum("nq,nq->n", Z[k], bk[codes[k]])
    res.loc[index] = eta
    return res


def part_nested_counts(s: NestedPartStats) -> np.ndarray:
    """``[n, n_dropped, outer levels, levels of each block]`` of a partition."""
    return np.concatenate([[s.n, s.n_dropped, s.outer_levels], s.block_levels]).astype(np.int64)


def part_nested_gram(s: NestedPartStats) -> np.ndarray:
    return s.XYtXY


def part_schur(s: NestedPartStats, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """``(log det, Schur complement on [X y])`` of the partition at ``theta`` (zeros without rows)."""
    if s.problem is None:
        m = s.XYtXY.shape[0]
        return 0.0, np.zeros((m, m))
    # one BLAS thread: worker processes share the cores (see memoe.dask.stats.part_first_block)
    with blas_threads(1):
        return s.problem.schur_pieces(theta)


def global_levels(ddf, design, block: NestedBlock) -> int:
    """Distinct levels of ``block``'s factors over the complete rows of ``ddf`` (one distributed pass)."""
    clean = ddf[design.used].dropna()
    return len(clean[list(block.factors)].drop_duplicates())


class NestedProblemMixin:
    """The client side of the nested problem: sums of :func:`part_schur`, one factor of ``(p+1) x (p+1)``.

    Mixed into :class:`memoe.dask.lmm.DaskPLSProblem`, whose ``deviance`` and ``solve`` read
    ``_reduced`` and ``factorize``.
    """

    def _reduced(self, theta: np.ndarray):
        theta = np.asarray(theta, dtype=float)
        lambdas = self.theta_map.lambdas(theta)
        logdet_Z, S = self.stats.reduce(part_schur, theta)
        self.evaluations += 1
        ok0 = math.isfinite(logdet_Z) and bool(np.all(np.isfinite(S)))
        if not ok0:
            return lambdas, False, math.inf, math.inf, math.inf, np.full(S.shape, np.nan), 1
        c, info = lapack.dpotrf(0.5 * (S + S.T), lower=1, clean=0, overwrite_a=1)
        d = np.diagonal(c)
        ok = info == 0 and bool(np.all(np.isfinite(d)))
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet_X = 2.0 * float(np.log(d[: self.p]).sum())
        return lambdas, ok, logdet_Z, logdet_X, float(d[-1] ** 2), c, info

    def factorize(self, theta: np.ndarray) -> Factorization:
        """The reduced factor at theta (no per-level blocks: they stay on the workers)."""
        lambdas, ok, logdet_Z, logdet_X, pwrss, c, info = self._reduced(theta)
        Lr = np.tril(c) if info == 0 else np.full(c.shape, np.nan)
        return Factorization(
            lambdas=lambdas, L1=np.zeros((0, 1, 1)), C=np.zeros((0, 1, self.p + 1)), G=None, Lr=Lr,
            logdet_level=np.zeros(0), logdet_Z=logdet_Z, logdet_X=logdet_X, pwrss=pwrss, n_eff=float(self.n), ok=ok,
        )

"""Internal centring and scaling of the fixed-effects columns and the response.

Covariates such as epoch seconds (``Days + 1.7e9``) or nanoseconds (``Days * 86400e9``), or a
response shifted by ``1e12``, make ``[X y]' [X y]`` lose every significant digit of the residual
sum of squares. The model is invariant under the reparameterisation

    X = X_s A,   y = s_y y_s + c_y x_k,

where ``x_k`` is the intercept column, ``A`` is the identity with ``A[j, j] = s_j`` and
``A[k, j] = c_j`` (column ``j`` centred by ``c_j`` and scaled by ``s_j``), so the fit is done on the
well-conditioned ``[X_s y_s]`` and the results are mapped back exactly:

* ``beta = A^-1 (s_y beta_s + c_y e_k)``, ``(R_X' R_X)^-1 = A^-1 (R_Xs' R_Xs)^-1 A^-T``;
* ``sigma``, ``u`` and ``b`` scale by ``s_y``;
* the deviance gains the Jacobian ``n log s_y^2`` (ML) or ``(n - p) log s_y^2 + 2 log|det A|`` (REML,
  whose ``log det(R_X' R_X)`` depends on the basis of X).

Centring needs the intercept in X (then shifting a column or y only moves the intercept); without
one the columns are only scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ColumnSpreads", "LinearScaling", "choose_scaling", "column_spreads", "spreads_from_gram"]

# Apply the reparameterisation when a column's mean exceeds this many standard deviations, or its
# spread is outside [1 / SCALE_RANGE, SCALE_RANGE]: below that the raw cross-products lose at most a
# few digits, and ordinary data keep bit-identical results.
OFFSET_RATIO = 100.0
SCALE_RANGE = 1e4


@dataclass(frozen=True)
class LinearScaling:
    """``[X y] = [X_s y_s] B`` with ``B = [[A, c_y e_k], [0, s_y]]`` (see the module docstring).

    Attributes
    ----------
    center, scale : numpy.ndarray, shape (p,)
        ``c_j`` and ``s_j`` of the columns (0 and 1 for the intercept column).
    intercept : int or None
        Index of the all-ones column.
    y_center, y_scale : float
    """

    center: np.ndarray
    scale: np.ndarray
    intercept: int | None
    y_center: float
    y_scale: float

    @property
    def p(self) -> int:
        return len(self.scale)

    @property
    def log_abs_det_A(self) -> float:
        """``log |det A|`` (A is triangular up to the intercept row: its determinant is the product of scales)."""
        return float(np.log(self.scale).sum())

    @property
    def B(self) -> np.ndarray:
        """The (p + 1, p + 1) matrix with ``[X y] = [X_s y_s] B``."""
        p = self.p
        B = np.zeros((p + 1, p + 1))
        B[np.arange(p), np.arange(p)] = self.scale
        if self.intercept is not None:
            B[self.intercept, :p] += self.center
            B[self.intercept, self.intercept] = 1.0
            B[self.intercept, p] = self.y_center
        B[p, p] = self.y_scale
        return B

    def scaled(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X_s`` and ``y_s``."""
        Xs = (X - self.center) / self.scale
        ys = (y - self.y_center) / self.y_scale
        return np.ascontiguousarray(Xs), ys

    def beta(self, beta_s: np.ndarray) -> np.ndarray:
        """Fixed effects on the original columns from those of the scaled fit."""
        b = self.y_scale * np.asarray(beta_s, dtype=float)
        k = self.intercept
        if k is not None:
            b[k] += self.y_center
        out = b / self.scale
        if k is not None:
            # the intercept column absorbs every centring: beta_k = b_k - sum_j c_j beta_j
            others = np.arange(self.p) != k
            out[k] = b[k] - float(self.center[others] @ out[others])
        return out

    def solve_A(self, M: np.ndarray) -> np.ndarray:
        """``A^-1 M`` for a (p, r) matrix (rows follow the columns of X)."""
        out = np.asarray(M, dtype=float) / self.scale[:, None]
        k = self.intercept
        if k is not None:
            others = np.arange(self.p) != k
            out[k] = M[k] - self.center[others] @ out[others]
        return out

    def deviance_shift(self, n: float, p: int, reml: bool) -> float:
        """What the deviance of the original data adds to that of the scaled data (the Jacobian)."""
        log_s2 = 2.0 * math.log(self.y_scale)
        if reml:
            return (n - p) * log_s2 + 2.0 * self.log_abs_det_A
        return n * log_s2


def _intercept_column(X: np.ndarray) -> int | None:
    """0 when the first column is all ones (formulaic puts the intercept first), else None.

    Only a first intercept keeps ``B`` upper triangular, so that the back-transformed Cholesky
    factor ``B' R`` stays triangular.
    """
    if X.shape[1] and X[0, 0] == 1.0 and (X[:, 0] == 1.0).all():
        return 0
    return None


def _spread(D: np.ndarray) -> np.ndarray:
    """Root mean square of each column of ``D``, computed on ``D / max|D|``.

    The plain ``sqrt(mean(D**2))`` underflows to 0 for values near 1e-300 (a response times 1e-300)
    and overflows for values near 1e300, which would leave exactly the columns that need scaling unscaled.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(np.abs(D), axis=0) if D.shape[0] else np.zeros(D.shape[1])
        safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
        return safe * np.sqrt(np.mean((D / safe) ** 2, axis=0))


# Column spreads computed by one dot product when the column's magnitude keeps n * max^2 finite and
# its squares normal; outside that range the rescaled (overflow-safe) computation of _spread is used.
_SAFE_MAX = 1e140
_SAFE_MIN = 1e-140


def _column_spreads(X: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """``_spread(X - center)`` column by column without (n, p) temporaries.

    On a million rows the whole-array version makes four (n, p) copies (subtract, divide, square,
    abs) and dominated the design's cost (0.4 s of 1 s); one column at a time is one n-vector
    (the centred column, squared in place) and a sum. Same values up to rounding.
    """
    n, p = X.shape
    out = np.empty(p)
    for j in range(p):
        col = X[:, j]
        d = col if center is None or center[j] == 0.0 else col - center[j]
        with np.errstate(invalid="ignore", over="ignore"):
            m = max(float(d.max()), -float(d.min())) if n else 0.0
        if not (_SAFE_MIN < m < _SAFE_MAX):
            out[j] = _spread(np.asarray(d)[:, None])[0] if n else 0.0
            continue
        # numpy's pairwise sum, not a BLAS dot: OpenBLAS threads a long ddot, which costs 50x on a busy machine
        sq = np.square(d, out=d) if d is not col else np.square(d)
        out[j] = math.sqrt(float(sq.sum()) / n)
    return out


@dataclass(frozen=True)
class ColumnSpreads:
    """The part of :func:`choose_scaling` that depends on X only (computed once per design).

    Attributes
    ----------
    center, spread : numpy.ndarray, shape (p,)
        Column means (0 for the intercept, and for every column without an intercept) and root mean
        squares about them (1 for the intercept).
    intercept : int or None
        Index of the all-ones column.
    exact : bool
        False when taken from the Gram matrix ``X'X`` (:func:`spreads_from_gram`): good enough to see
        that no column needs scaling, recomputed from the columns by :func:`choose_scaling` otherwise.
    """

    center: np.ndarray
    spread: np.ndarray
    intercept: int | None
    exact: bool = True


def column_spreads(X: np.ndarray) -> ColumnSpreads:
    """Centres and spreads of the columns of ``X`` (shape (n, p), n > 0), as :func:`choose_scaling` uses them.

    A Fortran-ordered X (the native model matrices of :mod:`memoe.core.design.native`) is read column by
    column; on a C-ordered (n, 3) array the column mean alone costs 30 ms at 10^6 rows.
    """
    p = X.shape[1]
    k = _intercept_column(X)
    if k is not None:
        center = X.mean(axis=0)
        center[k] = 0.0
        spread = _column_spreads(X, center)
        spread[k] = 1.0
    else:
        center = np.zeros(p)
        spread = _column_spreads(X, None)
    return ColumnSpreads(center=center, spread=spread, intercept=k)


# Margin of the Gram-matrix shortcut: it only certifies "no scaling needed" when every column is at least
# this factor inside the thresholds, so its rounding (relative 1e-8 at worst, see spreads_from_gram) never
# decides a case the exact computation would decide differently.
GRAM_MARGIN = 2.0


def spreads_from_gram(X: np.ndarray, gram: np.ndarray) -> ColumnSpreads:
    """Approximate :func:`column_spreads` from ``gram = X'X`` (no pass over the rows but the intercept check).

    With the intercept ``k``: ``c_j = G[k, j] / n`` and ``s_j^2 = G[j, j] / n - c_j^2``, which cancels
    when ``|c_j| >> s_j``: a column whose variance keeps less than 1e-8 of its mean square is reported
    with spread 0, which :func:`choose_scaling` treats as "recompute exactly". Without an intercept
    ``s_j = sqrt(G[j, j] / n)`` (no cancellation).
    """
    n, p = X.shape
    k = _intercept_column(X)
    # overflowing entries (values near 1e300) give inf/nan spreads: choose_scaling then recomputes exactly
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.diag(gram).astype(float) / n
        if k is not None:
            center = gram[k].astype(float) / n
            center[k] = 0.0
            var = d - center * center
            var[~(var >= 1e-8 * d)] = 0.0
            spread = np.sqrt(var)
            spread[k] = 1.0
        else:
            center = np.zeros(p)
            spread = np.sqrt(d)
    return ColumnSpreads(center=center, spread=spread, intercept=k, exact=False)


def _columns_need_scaling(cs: ColumnSpreads, margin: float) -> bool:
    c, s = cs.center, cs.spread
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (
            np.isfinite(c) & np.isfinite(s) & (s > 0) & (np.abs(c) * margin <= OFFSET_RATIO * s)
            & (s * margin <= SCALE_RANGE) & (s >= margin / SCALE_RANGE)
        )
    if cs.intercept is not None:
        ok[cs.intercept] = True
    return not bool(ok.all())


def choose_scaling(
    X: np.ndarray, y: np.ndarray | None, force: bool = False, columns: ColumnSpreads | None = None
) -> LinearScaling | None:
    """The centring and scaling of ``[X y]``, or None when the data are already well scaled.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
    y : numpy.ndarray of shape (n,), or None
        None: only the columns of X are considered (the response is left unscaled).
    force : bool
        Return the scaling even when it is not needed (tests).
    columns : ColumnSpreads, optional
        :func:`column_spreads` of ``X`` when already computed (the design keeps them).
    """
    n = X.shape[0]
    if n == 0:
        return None
    cs = columns
    if cs is not None and not cs.exact and _columns_need_scaling(cs, GRAM_MARGIN):
        cs = None  # close to a threshold, or not finite: decide on the exact values
    if cs is None:
        cs = column_spreads(X)
    center, spread, k = cs.center.copy(), cs.spread.copy(), cs.intercept
    if y is None:
        y_center, y_spread = 0.0, 0.0
    elif k is not None:
        Y = np.asarray(y, dtype=float)[:, None]
        y_center = float(Y.mean())
        y_spread = float(_column_spreads(Y, np.array([y_center]))[0])
    else:
        Y = np.asarray(y, dtype=float)[:, None]
        y_center = 0.0
        y_spread = float(_column_spreads(Y, None)[0])
    # a constant (or zero) column is aliased; the rank check deals with it, scaling must not divide by 0
    bad = ~(spread > 0) | ~np.isfinite(spread)
    center[bad] = 0.0
    spread[bad] = 1.0
    # a response whose sum of squares overflows (values near 1e300) cannot be mapped back (pwrss scales by
    # s_y^2): leave it unscaled, so the fit refuses it as non-finite instead of overflowing later
    if not (y_spread > 0 and math.isfinite(y_spread * y_spread * max(n, 1))):
        y_center, y_spread = 0.0, 1.0

    # one vectorised test for the columns, plain floats for the response (np.any's wrapper on tiny arrays
    # was a tenth of a small model's construction); NaN compares False in both, as before
    with np.errstate(invalid="ignore"):
        x_needed = bool(((np.abs(center) > OFFSET_RATIO * spread) | (spread > SCALE_RANGE)
                         | (spread < 1.0 / SCALE_RANGE)).any())
    y_needed = abs(y_center) > OFFSET_RATIO * y_spread or y_spread > SCALE_RANGE or y_spread < 1.0 / SCALE_RANGE
    if not force and not x_needed and not y_needed:
        return None
    if not cs.exact:
        # the response (or force) asks for a scaling: its column centres and scales must be the exact ones
        exact = column_spreads(X)
        center, spread = exact.center.copy(), exact.spread.copy()
        bad = ~(spread > 0) | ~np.isfinite(spread)
        center[bad] = 0.0
        spread[bad] = 1.0
    return LinearScaling(center=center, scale=spread, intercept=k, y_center=y_center, y_scale=y_spread)

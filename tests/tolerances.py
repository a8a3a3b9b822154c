"""Tolerances that follow the conditioning of the compared quantity (issue 8).

A golden comparison fails on another machine when its tolerance was read off this machine's last
digits. Every tolerance here is instead *derived*: from the tolerance of the inputs the quantity is
computed from, propagated through the quantity's own sensitivity.

* **p-values** are compared on the log scale, ``|ln p - ln p_ref|`` (``-log10 p`` in messages), with
  the allowance that the statistic's and the df's own tolerances induce in ``ln p``
  (:func:`log_p_allowance`). A p-value of 1e-8 at df = 6.7 moves by 2e-4 relative when the df move
  by 1e-5 (a different BLAS kernel); that is no error, the p-value is just ill-conditioned in the df.
* **Estimates at an optimum**: if the criterion ``f`` is within ``delta`` of its minimum, the
  estimate lies in the ellipsoid ``dx' H dx / 2 <= delta`` (H the Hessian of ``f``), so parameter
  ``i`` can move by ``sqrt(2 delta (H^-1)_ii)`` and a smooth function ``q`` of the parameters by
  ``sqrt(2 delta g' H^-1 g)`` with ``g = dq/dx`` (:class:`OptimumSlack`). On a flat ridge (small
  curvature) that is large, on a sharp optimum small; no machine enters.
* Quantities computed in closed form from the same inputs are compared relative to their scale with
  a multiple of the rounding level of the computation (:data:`ROUNDING`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

EPS = float(np.finfo(float).eps)
# closed-form pipelines (a few factorizations of matrices of condition number up to ~1e6): relative
# rounding error well below 1e-9; the tests that use it state which pipeline it bounds
ROUNDING = 1e-9


# ------------------------------------------------------------------------------------------ p-values
def p_t(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided t p-value."""
    return 2.0 * stats.t.sf(np.abs(t), df)


def p_f(f: np.ndarray, num_df: np.ndarray, den_df: np.ndarray) -> np.ndarray:
    """Upper-tail F p-value."""
    return stats.f.sf(f, num_df, den_df)


def p_chi2(x: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Upper-tail chi-square p-value."""
    return stats.chi2.sf(x, df)


def log_p_allowance(
    pvalue: Callable[..., np.ndarray], args: Sequence[np.ndarray], tols: Sequence[np.ndarray | float]
) -> np.ndarray:
    """Bound on ``|ln p - ln p_ref|`` when each argument of ``p = pvalue(*args)`` is off by its tolerance.

    Secant over the whole tolerance interval (both sides, larger change), summed over the arguments:
    first-order error propagation that stays valid where ``ln p`` curves (large statistics).

    Parameters
    ----------
    pvalue : callable
        ``p_t``, ``p_f``, ``p_chi2`` or any vectorised p-value function of the arguments.
    args : sequence of array-like
        The arguments (e.g. ``(t, df)``) at which the reference was computed.
    tols : sequence of array-like or float
        Absolute tolerance of each argument (0 for exact ones, e.g. integer numerator df).

    Returns
    -------
    numpy.ndarray
        The allowance in natural-log units, broadcast over the arguments.
    """
    args = [np.asarray(a, dtype=float) for a in args]
    base = np.log(pvalue(*args))
    total = np.zeros(np.broadcast(*args).shape)
    for i, tol in enumerate(tols):
        tol = np.asarray(tol, dtype=float)
        if not np.any(tol):
            continue
        worst = np.zeros_like(total)
        for sign in (1.0, -1.0):
            moved = list(args)
            moved[i] = args[i] + sign * tol
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.abs(np.log(pvalue(*moved)) - base)
            worst = np.fmax(worst, np.nan_to_num(change, nan=0.0))
        total = total + worst
    # scipy's survival functions are accurate to a few ulps in the log; 1e-12 covers their rounding
    return total + 1e-12 * np.maximum(1.0, np.abs(base))


def assert_pvalue_close(p, ref, allowance, what: str = "p-value") -> None:
    """Assert ``|ln p - ln ref| <= allowance`` (message on the ``-log10 p`` scale people read).

    Both p-values below 1e-300 (underflow in either program) count as equal.
    """
    p, ref = np.asarray(p, dtype=float), np.asarray(ref, dtype=float)
    allowance = np.broadcast_to(np.asarray(allowance, dtype=float), np.broadcast(p, ref).shape)
    tiny = 1e-300
    both_tiny = (p < tiny) & (ref < tiny)
    with np.errstate(divide="ignore"):
        err = np.abs(np.log(np.maximum(p, tiny)) - np.log(np.maximum(ref, tiny)))
    err = np.where(both_tiny, 0.0, err)
    bad = err > allowance
    if np.any(bad):
        i = int(np.argmax(np.where(bad, err / np.maximum(allowance, 1e-300), 0.0)))
        pf, rf, af, ef = (np.ravel(x)[i] for x in (p, ref, allowance, err))
        raise AssertionError(
            f"{what}: -log10 p = {-np.log10(pf):.6f} vs reference {-np.log10(rf):.6f} "
            f"(|d ln p| = {ef:.2e} > allowed {af:.2e})"
        )


# ------------------------------------------------------------------------------------ optimum slack
def hessian(f: Callable[[np.ndarray], float], x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Central-difference Hessian of ``f`` at ``x`` (an independent oracle, not memoe's own)."""
    x = np.asarray(x, dtype=float)
    k = x.size
    H = np.empty((k, k))
    f0 = f(x)
    E = np.diag(step)
    for i in range(k):
        H[i, i] = (f(x + E[i]) - 2 * f0 + f(x - E[i])) / step[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (
                f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j]) + f(x - E[i] - E[j])
            ) / (4 * step[i] * step[j])
    return H


class OptimumSlack:
    """How far estimates may move while the criterion stays within ``delta`` of its minimum.

    Parameters
    ----------
    f : callable
        The minimised criterion (e.g. the profiled deviance or REML criterion of theta).
    x : array-like
        The optimum.
    delta : float
        Criterion slack in ``f``'s units (e.g. 2 x the asserted log-likelihood tolerance for a deviance).
    lower : array-like, optional
        Lower bounds. Parameters on a bound are held there (both fits sit on it: a singular fit), they
        contribute no slack.
    rel_step : float
        Finite-difference step relative to ``max(|x|, 1)``; 1e-3 keeps the rounding of ``f`` (relative
        1e-13 of values ~1e3) far below the curvature it measures.
    """

    def __init__(self, f, x, delta: float, lower=None, rel_step: float = 1e-3) -> None:
        x = np.asarray(x, dtype=float)
        lower = np.full(x.size, -np.inf) if lower is None else np.asarray(lower, dtype=float)
        self.x, self.delta = x, float(delta)
        self.step = rel_step * np.maximum(np.abs(x), 1.0)
        self.free = x - lower > 2 * self.step
        Hf = hessian(lambda z: f(self._embed(z)), x[self.free], self.step[self.free])
        w, Q = np.linalg.eigh(Hf)
        assert np.all(w > 0), f"not a strict minimum: Hessian eigenvalues {w}"
        self.H = Hf
        self.Hinv = (Q / w) @ Q.T

    def _embed(self, z: np.ndarray) -> np.ndarray:
        full = self.x.copy()
        full[self.free] = z
        return full

    def parameters(self) -> np.ndarray:
        """Per-parameter half-widths ``sqrt(2 delta (H^-1)_ii)`` (0 for parameters on a bound)."""
        out = np.zeros(self.x.size)
        out[self.free] = np.sqrt(2 * self.delta * np.diag(self.Hinv))
        return out

    def of(self, q: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Half-widths ``sqrt(2 delta g' H^-1 g)`` of each component of a smooth ``q(x)``."""
        cols = []
        h = self.step[self.free]
        for i, idx in enumerate(np.flatnonzero(self.free)):
            e = np.zeros(self.x.size)
            e[idx] = h[i]
            cols.append((np.asarray(q(self.x + e), float) - np.asarray(q(self.x - e), float)) / (2 * h[i]))
        if not cols:
            return np.zeros(np.shape(q(self.x)))
        G = np.stack([np.ravel(c) for c in cols], axis=1)  # (components, free parameters)
        width = np.sqrt(2 * self.delta * np.einsum("ci,ij,cj->c", G, self.Hinv, G))
        return width.reshape(np.shape(cols[0]))

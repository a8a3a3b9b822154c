"""nlme's ``corARMA(p, q)``: within-group residuals follow a stationary, invertible ARMA(p, q) process.

The correlation of two rows of a group is the ARMA autocorrelation at their lag ``|t_j - t_k|``
(row positions within the group, or the integer ``visit`` column, nlme's ``form = ~ visit | group``).
With ``X_t = sum_j Phi_j X_{t-j} + e_t + sum_j Theta_j e_{t-j}`` (nlme's signs), the
autocovariances solve ``gamma(k) - sum_j Phi_j gamma(|k - j|) = sum_{j >= k} Theta_j psi_{j-k}``
for ``k = 0 .. p`` (psi the MA(infinity) weights, ``Theta_0 = 1``) and follow the AR recursion beyond
(Brockwell & Davis 1991, sec. 3.3): the same numbers as nlme's ``ARMA_corr``.

Parameterisation (nlme's ``ARMA_constCoef``): each block (the p AR, then the q MA coefficients) is
the image of unconstrained ``u`` under ``pacf = tanh(u / 2)`` followed by the Durbin-Levinson
recursion, so every ``u`` gives a stationary AR part and an invertible MA part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError, DataError
from memoe.marginal.correlation import BoundCorrelation, CorStruct, _numeric_column
from memoe.marginal.layout import GroupLayout

__all__ = ["ARMA", "arma_acf", "arma_coefficients", "arma_unconstrained"]


def _untrans(u: np.ndarray, sgn: float) -> np.ndarray:
    """nlme's ``ARMA_untransPar``: unconstrained block -> coefficients (Durbin-Levinson on tanh(u/2))."""
    pars = np.asarray(u, dtype=float).copy()
    aux = np.zeros(len(pars))
    for i in range(len(pars)):
        x = np.exp(-pars[i])
        pars[i] = (1.0 - x) / (1.0 + x)
        aux[i] = pars[i]
        if i:
            for j in range(i):
                pars[j] = aux[j] + sgn * pars[i] * aux[i - j - 1]
            aux[:i] = pars[:i]
    return pars


def _trans(c: np.ndarray, sgn: float) -> np.ndarray:
    """nlme's ``ARMA_transPar``: coefficients -> unconstrained (inverse of :func:`_untrans`)."""
    pars = np.asarray(c, dtype=float).copy()
    for n in range(len(pars) - 1, -1, -1):
        ps = pars[n] ** 2
        if ps >= 1.0:
            raise ArgumentError("ARMA coefficients must give partial autocorrelations below 1 in absolute value")
        if n:
            d = 1.0 - ps
            for i in range((n - 1) // 2 + 1):
                j = n - i - 1
                if j > i:
                    a = (pars[i] + sgn * pars[j] * pars[n]) / d
                    pars[j] = (pars[j] + sgn * pars[i] * pars[n]) / d
                    pars[i] = a
                else:
                    pars[i] /= 1.0 - sgn * pars[n]
        pars[n] = np.log((1.0 + pars[n]) / (1.0 - pars[n]))
    return pars


def arma_coefficients(u: np.ndarray, p: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(Phi, Theta) from nlme's unconstrained vector (p AR entries, then q MA entries)."""
    u = np.asarray(u, dtype=float)
    return _untrans(u[:p], -1.0), _untrans(u[p : p + q], 1.0)


def arma_unconstrained(phi, theta) -> np.ndarray:
    """nlme's unconstrained vector of coefficients (Phi, Theta) (``ARMA_unconstCoef``)."""
    return np.concatenate([_trans(np.asarray(phi, float), 1.0), _trans(np.asarray(theta, float), -1.0)])


def arma_acf(phi: np.ndarray, theta: np.ndarray, maxlag: int) -> np.ndarray:
    """Autocorrelations at lags 0 .. maxlag of the ARMA process with coefficients ``phi``, ``theta``."""
    p, q = len(phi), len(theta)
    psi = np.zeros(q + 1)
    psi[0] = 1.0
    for i in range(1, q + 1):
        psi[i] = theta[i - 1] + sum(phi[j] * psi[i - j - 1] for j in range(min(p, i)))
    th = np.concatenate([[1.0], theta])
    size = max(maxlag, p, q) + 1
    rhs = np.zeros(size)
    for k in range(min(q, size - 1) + 1):
        rhs[k] = float(np.dot(th[k : q + 1], psi[: q + 1 - k]))
    A = np.eye(p + 1)
    for k in range(p + 1):
        for j in range(1, p + 1):
            A[k, abs(k - j)] -= phi[j - 1]
    g = np.zeros(size)
    g[: p + 1] = np.linalg.solve(A, rhs[: p + 1])
    for k in range(p + 1, size):
        g[k] = sum(phi[j - 1] * g[k - j] for j in range(1, p + 1)) + rhs[k]
    return g[: maxlag + 1] / g[0]


@dataclass(frozen=True, init=False)
class ARMA(CorStruct):
    """nlme's ``corARMA(p = , q = )``: ARMA(p, q) autocorrelation at the within-group lag.

    Parameters
    ----------
    p, q : int
        Autoregressive and moving-average orders (non-negative, not both 0).
    group : str, optional
        Grouping column (``lme``: defaults to the random-effects grouping factor).
    visit : str, optional
        Integer time column (nlme's ``form = ~ visit | group``; also accepted as ``time=``); default
        the order of the rows within the group.

    R equivalent
    ------------
    ``nlme::corARMA(p = 1, q = 1, form = ~ 1 | Mare)``. As nlme, ARMA(1, 0) over
    consecutive positions is reported as AR(1) with parameter ``Phi``.

    Examples
    --------
    >>> memoe.gls(f, ovary, correlation=ARMA(p=1, q=1, group="Mare"))  # doctest: +SKIP
    """

    p: int = 0
    q: int = 0
    group: str | None = None
    visit: str | None = None

    def __init__(self, p: int = 0, q: int = 0, group: str | None = None, visit: str | None = None, *,
                 time: str | None = None) -> None:
        for arg, v in (("p", p), ("q", q)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ArgumentTypeError(f"ARMA({arg}=...) must be a non-negative integer, got {v!r}")
            if v < 0:
                raise ArgumentError(f"ARMA({arg}=...) must be a non-negative integer (an order), got {v}")
        if p + q == 0:
            raise ArgumentError("ARMA needs p > 0 or q > 0 (at least one of the orders), got p=0, q=0")
        if time is not None:
            if visit is not None:
                raise ArgumentError("ARMA: give the time column as visit= or time=, not both")
            visit = time
        object.__setattr__(self, "p", int(p))
        object.__setattr__(self, "q", int(q))
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "visit", visit)
        CorStruct.__post_init__(self)

    @property
    def label(self) -> str:  # type: ignore[override]
        return "AR(1)" if getattr(self, "_ar1", False) else f"ARMA({self.p},{self.q})"

    def param_names(self, m: int) -> list[str]:
        if getattr(self, "_ar1", False):
            return ["Phi"]
        return [f"Phi{i + 1}" for i in range(self.p)] + [f"Theta{i + 1}" for i in range(self.q)]

    def prepare(self, layout: GroupLayout, frame: pd.DataFrame) -> list[np.ndarray]:
        if self.visit is None:
            return super().prepare(layout, frame)
        v = _numeric_column(frame, self.visit, "time of ARMA")
        bad = ~np.isfinite(v) | (v != np.round(v))
        if np.any(bad):
            raise DataError(
                f"column {self.visit!r} (the time of ARMA) must hold integers (nlme's corARMA covariate); "
                f"it has {int(bad.sum())} other values"
            )
        out = []
        for b in layout.buckets:
            tb = v[b.rows]
            d = np.abs(tb[:, :, None] - tb[:, None, :])
            off = ~np.eye(b.n, dtype=bool)
            if b.n > 1 and np.any(d[:, off] == 0):
                g = layout.levels[b.groups[np.flatnonzero(np.any(d[:, off] == 0, axis=1))[0]]]
                raise DataError(f"column {self.visit!r} (the time of ARMA) has repeated values within group {g!r}")
            out.append(d)
        return out

    def bind(self, layout: GroupLayout, frame: pd.DataFrame) -> BoundCorrelation:
        aux = self.prepare(layout, frame)
        max_lag = int(max(float(np.max(a)) for a in aux))
        if self.p > max_lag or self.q > max_lag:
            raise DataError(
                f"ARMA order ({self.p}, {self.q}) exceeds the largest lag within a group in the data ({max_lag})"
            )
        bound = copy.copy(self)
        consecutive = self.visit is None
        if self.visit is not None:
            v = frame[self.visit].to_numpy(dtype=float)
            consecutive = all(np.all(np.diff(v[b.rows], axis=1) == 1) for b in layout.buckets if b.n > 1)
        # nlme's Initialize.corARMA: ARMA(1, 0) on consecutive times is corAR1 (same transform, name "Phi")
        object.__setattr__(bound, "_ar1", self.p == 1 and self.q == 0 and consecutive)
        m = self.dimension(layout, frame)
        return BoundCorrelation(structure=bound, aux=aux, names=bound.param_names(m), m=m)

    def correlation(self, u: np.ndarray, aux: np.ndarray, m: int) -> np.ndarray:
        phi, theta = arma_coefficients(u, self.p, self.q)
        lags = np.asarray(aux).astype(np.int64)
        acf = arma_acf(phi, theta, int(lags.max()) if lags.size else 0)
        return acf[lags]

    def natural(self, u: np.ndarray, m: int) -> np.ndarray:
        phi, theta = arma_coefficients(u, self.p, self.q)
        return np.concatenate([phi, theta])

    def start_candidates(self, aux: list[np.ndarray], m: int) -> list[np.ndarray]:
        k = self.p + self.q
        out = [np.zeros(k)]
        for r in (0.2, 0.5, 0.8, -0.3):
            u = np.zeros(k)
            if self.p:
                u[0] = 2.0 * np.arctanh(r)
            else:
                u[self.p] = 2.0 * np.arctanh(r)
            out.append(u)
        if self.p and self.q:
            out.append(np.concatenate([np.full(self.p, 2.0 * np.arctanh(0.5)), np.full(self.q, 2.0 * np.arctanh(0.3))]))
        return out

"""Approximate confidence intervals, as nlme's ``intervals(fit, which = "all")``.

* fixed effects: ``fit.confint(level)``, i.e. ``beta +- t_{df, (1 + level) / 2} SE`` with the df of
  the t table and the SEs of ``vcov()`` (for ``lme`` ML fits nlme's intervals use the uninflated SEs,
  its t table the inflated ones);
* covariance parameters: Wald intervals on nlme's unconstrained scales, mapped back. nlme's ``apVar``
  is the inverse of minus the Hessian of the log-likelihood (REML log-likelihood for REML fits; beta
  profiled, sigma not) in the *natural* parametrisation

      z = [log sd_k (random effects), atanh(corr_kl), correlation u, variance u, log sigma],

  (pdNatural for the random effects; the correlation structure's and variance function's own
  unconstrained scales). The Hessian here is a central second difference in z.

The interval of each parameter is ``g(z_j +- q se_j)`` with g the map to the natural scale, so
intervals of SDs, ranges and SD ratios are asymmetric as nlme's. ``Symm``'s correlations use this
package's partial-correlation scale (nlme uses a spherical one), so their intervals differ from nlme's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from memoe.errors import MemoeWarning

__all__ = ["intervals"]

_LOG2PI = float(np.log(2.0 * np.pi))


def _re_natural(fit) -> tuple[np.ndarray, list[str]]:
    """[log sd..., atanh(corr)...] of the random effects, level by level (outermost first), and their
    nlme labels (``sd(day)``, ``cor((Intercept),day)``)."""
    z: list[float] = []
    names: list[str] = []
    for frame in fit.ranef_covs.values():
        cov = frame.to_numpy()
        cols = list(frame.columns)
        sd = np.sqrt(np.diag(cov))
        q = len(cols)
        z += list(np.log(sd))
        names += [f"sd({c})" for c in cols]
        for j in range(q):
            for i in range(j + 1, q):
                z.append(np.arctanh(cov[i, j] / (sd[i] * sd[j])))
                names.append(f"cor({cols[j]},{cols[i]})")
    return np.array(z), names


def _re_sizes(fit) -> list[int]:
    """Number of natural parameters (q SDs + q (q - 1) / 2 correlations) of each level."""
    return [f.shape[0] * (f.shape[0] + 1) // 2 for f in fit.ranef_covs.values()]


def _re_parts(fit) -> list[str]:
    """The ``part`` label of each level's rows: ``reStruct`` for one level, ``reStruct.<factor>`` for several."""
    names = list(fit.ranef_covs)
    return ["reStruct"] if len(names) == 1 else [f"reStruct.{g}" for g in names]


def _theta_from_natural(fit, z_re: np.ndarray, sigma: float) -> np.ndarray:
    """lme4's theta from [log sd, atanh corr] of every level and sigma (D_q = Cov_q / sigma^2 = lam lam')."""
    tmap = fit.design.theta_map
    lams = [np.zeros((q, q)) for q in tmap.block_sizes]
    start = 0
    for blk_index, frame in zip(fit.model.level_blocks, fit.ranef_covs.values(), strict=True):
        q = frame.shape[0]
        zq = z_re[start : start + q * (q + 1) // 2]
        start += q * (q + 1) // 2
        sd = np.exp(zq[:q])
        R = np.eye(q)
        k = q
        for j in range(q):
            for i in range(j + 1, q):
                R[i, j] = R[j, i] = np.tanh(zq[k])
                k += 1
        D = (sd[:, None] * R * sd[None, :]) / sigma**2
        lams[blk_index] = np.linalg.cholesky(D)
    return tmap.theta_of(lams)


def _loglik_function(fit):
    """log L (or log L_R) as a function of the natural vector z."""
    P = fit.model.problem
    reml = fit.reml
    N, p = P.N, P.p
    n_re = len(_re_natural(fit)[0]) if fit.design.blocks else 0
    _, u0, v0 = P.split(fit.params_unconstrained)
    nu, nv = len(u0), len(v0)

    def ll(z: np.ndarray) -> float:
        log_sigma = z[-1]
        sigma = float(np.exp(log_sigma))
        try:
            theta = _theta_from_natural(fit, z[:n_re], sigma) if n_re else np.zeros(0)
        except np.linalg.LinAlgError:
            return -np.inf
        params = np.concatenate([theta, z[n_re : n_re + nu], z[n_re + nu : n_re + nu + nv]])
        w = P._whiten(params)
        if w is None:
            return -np.inf
        _, XYt, logdet = w
        R = P._reduce(XYt)
        if R is None:
            return -np.inf
        rss = R[p, p] ** 2
        s2 = sigma**2
        if reml:
            ldx = 2.0 * np.sum(np.log(np.diag(R)[:p]))
            return float(-0.5 * ((N - p) * (_LOG2PI + 2 * log_sigma) + logdet + ldx + rss / s2))
        return float(-0.5 * (N * (_LOG2PI + 2 * log_sigma) + logdet + rss / s2))

    return ll, n_re, nu, nv


def _hessian(f, x: np.ndarray, h: float | np.ndarray = 1e-3) -> np.ndarray:
    """Central second differences (step h on the unconstrained scales, which are O(1); per coordinate
    when ``h`` is an array, see :func:`hessian_steps`)."""
    k = len(x)
    h = np.broadcast_to(np.asarray(h, dtype=float), (k,))
    H = np.empty((k, k))
    f0 = f(x)
    for i in range(k):
        ei = np.zeros(k)
        ei[i] = h[i]
        H[i, i] = (f(x + ei) - 2 * f0 + f(x - ei)) / h[i] ** 2
        for j in range(i):
            ej = np.zeros(k)
            ej[j] = h[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h[i] * h[j])
    return H


def hessian_steps(fit, n: int, h: float = 1e-3) -> np.ndarray:
    """Steps for :func:`_hessian` on [re, correlation u, variance u, log sigma] (length ``n``).

    ``h`` everywhere, except for variance parameters whose log SD ratio moves faster than the
    parameter (``varExp``: by the covariate per unit exponent): there ``h`` divided by that rate, so
    every step changes the SD ratios by about ``h`` on the log scale.
    """
    P = fit.model.problem
    steps = np.full(n, h)
    if P.var is not None and P.var.size:
        _, _, v = P.split(fit.params_unconstrained)
        base = np.log(P.var.ratios(v))
        start = n - 1 - P.var.size
        for k in range(P.var.size):
            e = np.zeros(P.var.size)
            e[k] = 1e-6
            rate = float(np.max(np.abs(np.log(P.var.ratios(v + e)) - base))) / 1e-6
            steps[start + k] = h / max(rate, 1.0)
    return steps


def _standard_errors(H: np.ndarray, names: list[str]) -> np.ndarray:
    """SEs from the inverse of minus the Hessian; NaN (with one warning naming them) for the parameters
    whose approximate variance is not positive: the log-likelihood is flat or not concave there (a
    boundary estimate, e.g. a range at the smallest distance). nlme stops with "Non-positive definite
    approximate variance-covariance"; NaN limits keep the fixed-effect and other rows usable."""
    try:
        var = np.diag(np.linalg.inv(-H))
    except np.linalg.LinAlgError:
        var = np.full(len(names), np.nan)
    bad = ~(np.isfinite(var) & (var > 0))
    if bad.any():
        warnings.warn(
            "the approximate covariance of the variance parameters is not positive definite at the "
            f"estimate (flat or non-concave log-likelihood in {[n for n, b in zip(names, bad, strict=True) if b]}): "
            "their intervals are NaN",
            MemoeWarning,
            stacklevel=3,
        )
    return np.sqrt(np.where(bad, np.nan, var))


def intervals(fit, level: float = 0.95) -> pd.DataFrame:
    """Approximate intervals of every parameter (nlme's ``intervals(fit, which = "all")``).

    Parameters
    ----------
    fit : MarginalResult
    level : float

    Returns
    -------
    pandas.DataFrame
        MultiIndex (part, param) with parts ``fixed``, ``reStruct`` (``reStruct.<factor>`` per level,
        outermost first, when there are nested levels), ``corStruct``, ``varStruct``, ``sigma``;
        columns ``lower, est., upper``.
    """
    rows: list[tuple[str, str, float, float, float]] = []
    # fit.confint: the t table's df, but vcov's SEs (nlme's intervals do not inflate lme ML fits as
    # summary does); one computation, so confint() and intervals() agree exactly
    ci = fit.confint(level)
    for name, est in fit.fixef.items():
        rows.append(("fixed", name, float(ci.at[name, "lower"]), est, float(ci.at[name, "upper"])))

    P = fit.model.problem
    ll, n_re, nu, nv = _loglik_function(fit)
    _, u, v = P.split(fit.params_unconstrained)
    z_re, re_names = _re_natural(fit) if n_re else (np.zeros(0), [])
    z = np.concatenate([z_re, u, v, [np.log(fit.sigma)]])
    H = _hessian(ll, z, hessian_steps(fit, len(z)))
    names = [*re_names, *(P.cor.names if nu else []), *(P.var.names if nv else []), "sigma"]
    se = _standard_errors(H, names)
    qn = stats.norm.ppf(0.5 + level / 2)
    lo, hi = z - qn * se, z + qn * se

    # limits far out on a log scale map to inf (an unbounded upper limit), not to an overflow error
    with np.errstate(over="ignore"):
        k = 0
        levels = zip(_re_parts(fit), _re_sizes(fit), fit.ranef_covs.values(), strict=True) if n_re else ()
        for part, size, frame in levels:
            q = frame.shape[0]
            for j in range(size):
                g = np.exp if j < q else np.tanh
                rows.append((part, re_names[k], g(lo[k]), g(z[k]), g(hi[k])))
                k += 1
        if nu:
            cor = P.cor
            a = n_re
            # nlme's intervals map the whole vector of lower (upper) unconstrained limits to the natural
            # scale (coef<- then coef(unconstrained = FALSE)); for elementwise transforms (AR1, CAR1, Exp,
            # spatial) that is coordinate by coordinate, for ARMA's Durbin-Levinson map it is not
            nat_lo = cor.natural(lo[a : a + nu]).to_numpy()
            nat_hi = cor.natural(hi[a : a + nu]).to_numpy()
            nat = cor.natural(u).to_numpy()
            for k, name in enumerate(cor.names):
                vals = sorted([float(nat_lo[k]), float(nat_hi[k])])
                rows.append(("corStruct", name, vals[0], float(nat[k]), vals[1]))
        if nv:
            # each variance parameter maps elementwise from its unconstrained scale (exp for SD ratios)
            sl = slice(n_re + nu, n_re + nu + nv)
            nat_lo, nat, nat_hi = (P.var.transform(a[sl])[0] for a in (lo, z, hi))
            for k, name in enumerate(P.var.names):
                rows.append(("varStruct", name, nat_lo[k], nat[k], nat_hi[k]))
        rows.append(("sigma", "sigma", np.exp(lo[-1]), fit.sigma, np.exp(hi[-1])))
    frame = pd.DataFrame(rows, columns=["part", "param", "lower", "est.", "upper"]).set_index(["part", "param"])
    frame.attrs["level"] = level
    return frame

"""Standard errors, Wald z tests and Wald intervals of variance components (SAS ``proc mixed covtest``).

The variance parameters are reported on broom.mixed's scale: standard deviations (``sd__...``, and the
residual ``sd__Observation``) and correlations (``cor__...``). Their covariance comes from the observed
information of the fitted criterion:

* **LMM** (:func:`lmm_varcomp`): the ML deviance or REML criterion as a function of
  ``z = (log sd, atanh cor, log sigma)`` with beta at its conditional optimum (for ML the profile
  likelihood of beta, whose Hessian is the variance-parameter block of the full information), i.e.
  ``d(theta, sigma) = log det(Lambda'Z'Z Lambda + I) [+ log det(R_X'R_X)] + pwrss / sigma^2
  + n' log(2 pi sigma^2)`` with ``n' = n`` (ML) or ``n - p`` (REML); its Hessian ``H`` is a central
  second difference, ``Cov(z) = 2 H^-1``, and the delta method maps to the sd/cor scale
  (``se(sd) = sd se(log sd)``, ``se(cor) = (1 - cor^2) se(atanh cor)``). At the optimum the gradient is
  zero, so the result does not depend on the scale the Hessian was taken on.
* **GLMM** (:func:`glmm_varcomp`): the theta block of ``2 H^-1``, with H the Hessian of the Laplace/AGQ
  deviance in ``(theta, beta)`` that the fit computed (lme4's ``optinfo$derivs$Hessian``), mapped to the
  sd/cor scale by the Jacobian of ``theta -> (sd, cor)``.
* **lme / gls** (:func:`marginal_varcomp`): nlme's ``apVar`` (inverse of minus the Hessian of the
  (RE)ML log-likelihood in nlme's unconstrained scales, see :mod:`memoe.marginal.intervals`), mapped by
  the delta method to the natural scale of each parameter.

Tests and intervals
-------------------
``statistic`` is the Wald ``z = estimate / std_error``. For a standard deviation the null value 0 is on
the boundary of the parameter space, so its ``p_value`` is the chi-bar-square ``0.5 chi2_0 + 0.5 chi2_1``
p-value, i.e. the two-sided normal p-value halved (``P(Z > z)``); correlations and nlme's correlation
parameters get the ordinary two-sided p-value. The Wald approximation is poor near the boundary (Self
& Liang 1987): prefer a likelihood-ratio test (:func:`memoe.compare`) or profile intervals.

Wald intervals (:func:`varpar_wald_interval`) are taken on the log scale for SDs and SD ratios and on
Fisher's z (atanh) scale for correlations, then mapped back, so they stay inside the parameter space
(as nlme's ``intervals``). lme4's ``confint(method = "Wald")`` gives NA for the variance parameters;
memoe gives these delta-method intervals instead.

Parameters on the boundary (an SD below ``1e-6`` times the residual SD, ``|cor| > 1 - 1e-6``) get NaN
standard errors: the Hessian is taken over the interior parameters only, the boundary ones held fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "BOUNDARY_NOTE",
    "VarCompCov",
    "add_varcomp_inference",
    "central_hessian",
    "fill_lme4_wald",
    "glmm_varcomp",
    "lmm_deviance_z",
    "lmm_varcomp",
    "marginal_varcomp",
    "ran_pars_confint",
    "varpar_wald_interval",
]

BOUNDARY_NOTE = (
    "Wald z = estimate / std_error; std_error by the delta method from the Hessian of the deviance. "
    "For standard deviations the null value 0 is on the boundary of the parameter space: p_value is the "
    "chi-bar-square (0.5 chi2_0 + 0.5 chi2_1) p-value, i.e. the two-sided normal p-value halved; the Wald "
    "approximation is poor near the boundary, prefer a likelihood-ratio test. Correlations: two-sided."
)

# relative size below which an SD counts as on the boundary (cf. lme4's isSingular tolerance 1e-4 on theta)
_BOUNDARY_SD = 1e-6
_BOUNDARY_COR = 1e-6
# step of the central differences on the unconstrained (log / atanh) scales, which are O(1):
# truncation error O(h^2) ~ 1e-6 relative, rounding error ~ eps |d| / h^2, both well below the SEs' accuracy
_STEP = 1e-3


@dataclass(frozen=True)
class VarCompCov:
    """Variance parameters on the sd/cor scale with their delta-method standard errors.

    Attributes
    ----------
    estimate, std_error : numpy.ndarray
        In the row order of the family's ``_ran_pars`` frame.
    kind : numpy.ndarray of str
        ``"sd"`` (a standard deviation or SD ratio, log-scale interval, one-sided test) or ``"cor"``
        (a correlation-type parameter in (-1, 1), atanh-scale interval, two-sided test) or ``"other"``
        (natural-scale interval, two-sided test).
    """

    estimate: np.ndarray
    std_error: np.ndarray
    kind: np.ndarray
    #: for lme4-style designs, the position of each row in lme4's ``confint`` order (theta order, sigma last)
    order: np.ndarray | None = None


def central_hessian(f, x: np.ndarray, h: float | np.ndarray = _STEP) -> np.ndarray:
    """Hessian of ``f`` at ``x`` by central second differences with steps ``h`` (scalar or per coordinate).

    ``2 k^2 + 1`` evaluations; adequate for the handful of variance parameters of a mixed model.
    """
    x = np.asarray(x, dtype=float)
    k = len(x)
    hv = np.broadcast_to(np.asarray(h, dtype=float), (k,))
    H = np.empty((k, k))
    f0 = f(x)
    for i in range(k):
        ei = np.zeros(k)
        ei[i] = hv[i]
        H[i, i] = (f(x + ei) - 2.0 * f0 + f(x - ei)) / hv[i] ** 2
        for j in range(i):
            ej = np.zeros(k)
            ej[j] = hv[j]
            H[i, j] = H[j, i] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (
                4.0 * hv[i] * hv[j]
            )
    return H


def _inverse_or_nan(H: np.ndarray) -> np.ndarray:
    """``H^-1`` when H is positive definite (a proper minimum), else all-NaN (no meaningful SEs)."""
    if H.size == 0:
        return H.copy()
    if not np.all(np.isfinite(H)):
        return np.full(H.shape, np.nan)
    try:
        c = np.linalg.cholesky(0.5 * (H + H.T))
    except np.linalg.LinAlgError:
        return np.full(H.shape, np.nan)
    ci = np.linalg.inv(c)
    return ci.T @ ci


# ---------------------------------------------------------------------------------------------- LMM
def _lmm_layout(design):
    """For every varcorr row of an lme4-style design: (index in phi = theta order + sigma, kind).

    varcorr lists, per term, the SDs then the correlations (column j, rows i > j); phi stores the
    column-major lower triangle of each term's factor (:class:`memoe.inference.varpar.VarParSpace`).
    """
    from memoe.inference.varpar import VarParSpace

    space = VarParSpace.from_design(design)
    index, kinds = [], []
    for ti in space.terms:
        pairs = zip(ti.rows, ti.cols, strict=True)
        pos = {(int(r), int(c)): ti.theta_slice.start + k for k, (r, c) in enumerate(pairs)}
        for i in range(ti.q):
            index.append(pos[(i, i)])
            kinds.append("sd")
        for j in range(ti.q):
            for i in range(j + 1, ti.q):
                index.append(pos[(i, j)])
                kinds.append("cor")
    return space, np.array(index, dtype=int), np.array(kinds)


def _z_of_phi(phi: np.ndarray, is_cor: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(is_cor, np.arctanh(np.clip(phi, -1.0, 1.0)), np.log(np.abs(phi)))


def _phi_of_z(z: np.ndarray, is_cor: np.ndarray) -> np.ndarray:
    return np.where(is_cor, np.tanh(z), np.exp(z))


def lmm_deviance_z(fit):
    """The LMM's ML deviance (or REML criterion, as fitted) as a function of the full unconstrained vector
    ``z = (log sd | atanh cor, ..., log sigma)`` in :class:`~memoe.inference.varpar.VarParSpace` order.

    Returns ``(f, z_hat, is_cor)``; ``f(z_hat)`` equals ``fit.deviance`` (tested).
    """
    from memoe.inference.varpar import COR

    space = _lmm_layout(fit.design)[0]
    problem = fit.model.problem
    reml = bool(fit.reml)
    p = int(fit.design.p)
    is_cor = space.kinds == COR
    z_hat = _z_of_phi(space.phi(np.asarray(fit.state.theta, dtype=float), float(fit.sigma)), is_cor)
    log2pi = math.log(2.0 * math.pi)

    def f(z: np.ndarray) -> float:
        phi = _phi_of_z(np.asarray(z, dtype=float), is_cor)
        theta = space.theta(phi)
        if theta is None:
            return math.inf
        fac = problem.factorize(theta)
        if not fac.ok:
            return math.inf
        s2 = phi[-1] ** 2
        n = fac.n_eff - (p if reml else 0)
        dev = fac.logdet_Z + fac.pwrss / s2 + n * (log2pi + math.log(s2))
        return dev + fac.logdet_X if reml else dev

    return f, z_hat, is_cor


def lmm_varcomp(fit) -> VarCompCov:
    """Delta-method SEs of an LMM's SDs, correlations and sigma, in ``fit.varcorr`` row order."""
    space, index, kinds = _lmm_layout(fit.design)
    f, z_hat, is_cor = lmm_deviance_z(fit)
    phi_hat = _phi_of_z(z_hat, is_cor)
    sigma = float(fit.sigma)
    interior = np.where(
        is_cor, np.abs(phi_hat) < 1.0 - _BOUNDARY_COR, np.abs(phi_hat) > _BOUNDARY_SD * max(sigma, 1e-300)
    )
    free = np.flatnonzero(interior)
    se_phi = np.full(space.size, np.nan)
    if len(free):

        def g(zf: np.ndarray) -> float:
            z = z_hat.copy()
            z[free] = zf
            return f(z)

        cov_z = 2.0 * _inverse_or_nan(central_hessian(g, z_hat[free]))
        se_z = np.sqrt(np.clip(np.diag(cov_z), 0.0, None))
        # d phi / d z: sd = exp(z), cor = tanh(z)
        jac = np.where(is_cor[free], 1.0 - phi_hat[free] ** 2, phi_hat[free])
        se_phi[free] = np.abs(jac) * se_z
    rows = np.concatenate([index, [space.size - 1]])
    return VarCompCov(
        estimate=phi_hat[rows],
        std_error=se_phi[rows],
        kind=np.concatenate([kinds, ["sd"]]).astype(object),
        order=rows,
    )


# ---------------------------------------------------------------------------------------------- GLMM
def glmm_varcomp(fit) -> VarCompCov:
    """SEs of a GLMM's SDs and correlations (``fit.varcorr`` order) from the fit's (theta, beta) Hessian.

    NaN when the fit has no Hessian (``nAGQ = 0``, or not computed), when it is not positive definite,
    and for parameters on the boundary.
    """
    space, index, kinds = _lmm_layout(fit.design)
    theta = np.asarray(fit.state.theta, dtype=float)
    ntheta = len(theta)
    phi_hat = space.phi(theta, 1.0)[:-1]
    se = np.full(ntheta, np.nan)
    H = fit.hessian
    if H is not None and ntheta:
        cov_all = 2.0 * _inverse_or_nan(np.asarray(H, dtype=float))
        cov_theta = 0.5 * (cov_all[:ntheta, :ntheta] + cov_all[:ntheta, :ntheta].T)
        # Jacobian of theta -> (sd, cor) by central differences (the map is smooth in the interior)
        J = np.empty((ntheta, ntheta))
        for k in range(ntheta):
            h = 1e-6 * max(abs(theta[k]), 1e-2)
            tp, tm = theta.copy(), theta.copy()
            tp[k] += h
            tm[k] -= h
            J[:, k] = (space.phi(tp, 1.0)[:-1] - space.phi(tm, 1.0)[:-1]) / (2.0 * h)
        se = np.sqrt(np.clip(np.diag(J @ cov_theta @ J.T), 0.0, None))
        from memoe.inference.varpar import COR

        is_cor = space.kinds[:-1] == COR
        boundary = np.where(is_cor, np.abs(phi_hat) >= 1.0 - _BOUNDARY_COR, np.abs(phi_hat) <= _BOUNDARY_SD)
        # a diagonal theta on the boundary makes the Hessian one-sided and the correlations undefined
        for ti in space.terms:
            diag0 = [k for k, (r, c) in enumerate(zip(ti.rows, ti.cols, strict=True)) if r == c]
            if np.any(np.abs(theta[ti.theta_slice][diag0]) <= _BOUNDARY_SD):
                boundary[ti.theta_slice] = True
        se[boundary] = np.nan
    return VarCompCov(estimate=phi_hat[index], std_error=se[index], kind=kinds.astype(object), order=index)


# ---------------------------------------------------------------------------------------------- lme / gls
def marginal_varcomp(fit) -> dict[tuple[str, str], tuple[float, float, str]]:
    """nlme's ``apVar`` mapped to the natural scale: {(part, param): (estimate, std_error, kind)}.

    ``part`` and ``param`` are those of :func:`memoe.marginal.intervals.intervals` (``reStruct``
    ``sd(Days)``, ``corStruct`` ``Phi``, ``varStruct`` level, ``sigma`` ``sigma``).
    """
    from memoe.marginal.intervals import (
        _hessian,
        _loglik_function,
        _re_natural,
        _re_parts,
        _re_sizes,
        hessian_steps,
    )

    P = fit.model.problem
    ll, n_re, nu, nv = _loglik_function(fit)
    _, u, v = P.split(fit.params_unconstrained)
    z_re, re_names = _re_natural(fit) if n_re else (np.zeros(0), [])
    z = np.concatenate([z_re, u, v, [np.log(fit.sigma)]])
    if np.all(np.isfinite(z)):
        cov = _inverse_or_nan(-_hessian(ll, z, hessian_steps(fit, len(z))))
    else:  # an SD at exactly 0 (log = -inf): no information about it
        cov = np.full((len(z), len(z)), np.nan)
    out: dict[tuple[str, str], tuple[float, float, str]] = {}
    # per grouping level (several for a nested lme: part "reStruct.<factor>"), q SDs then the correlations
    parts = [p for p, size in zip(_re_parts(fit), _re_sizes(fit), strict=True) for _ in range(size)] if n_re else []
    for k, (name, part) in enumerate(zip(re_names, parts, strict=True)):
        if name.startswith("sd("):
            est = float(np.exp(z[k]))
            out[(part, name)] = (est, est * math.sqrt(max(cov[k, k], 0.0)), "sd")
        else:
            est = float(np.tanh(z[k]))
            out[(part, name)] = (est, (1.0 - est**2) * math.sqrt(max(cov[k, k], 0.0)), "cor")
    if nu:
        cor = P.cor
        base = np.asarray(cor.natural(u), dtype=float)
        J = np.empty((nu, nu))
        for k in range(nu):
            h = 1e-6 * max(abs(u[k]), 1.0)
            up, um = u.copy(), u.copy()
            up[k] += h
            um[k] -= h
            J[:, k] = (np.asarray(cor.natural(up), dtype=float) - np.asarray(cor.natural(um), dtype=float)) / (2 * h)
        block = cov[n_re : n_re + nu, n_re : n_re + nu]
        se = np.sqrt(np.clip(np.diag(J @ block @ J.T), 0.0, None))
        for k, name in enumerate(cor.names):
            # correlation-type parameters live in (-1, 1); ranges / nuggets are positive
            kind = "cor" if -1.0 < base[k] < 1.0 and name not in ("range", "nugget") else "sd"
            out[("corStruct", str(name))] = (float(base[k]), float(se[k]), kind)
    if nv:
        nat, deriv, kinds = P.var.transform(z[n_re + nu : n_re + nu + nv])
        for k, name in enumerate(P.var.names):
            j = n_re + nu + k
            se = abs(float(deriv[k])) * math.sqrt(max(cov[j, j], 0.0))
            out[("varStruct", str(name))] = (float(nat[k]), se, kinds[k])
    out[("sigma", "sigma")] = (float(fit.sigma), float(fit.sigma) * math.sqrt(max(cov[-1, -1], 0.0)), "sd")
    return out


# ---------------------------------------------------------------------------------------------- tables
def varpar_wald_interval(
    estimate: np.ndarray, std_error: np.ndarray, kind: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wald intervals on the log scale (``kind == "sd"``), Fisher-z scale (``"cor"``) or natural scale.

    ``sd * exp(-/+ q se / sd)`` and ``tanh(atanh(r) -/+ q se / (1 - r^2))``: the delta-method SE is moved
    to the transformed scale, the interval built there and mapped back.
    """
    est = np.asarray(estimate, dtype=float)
    se = np.asarray(std_error, dtype=float)
    kind = np.asarray(kind, dtype=object)
    q = stats.norm.ppf(0.5 + level / 2.0)
    lo = est - q * se
    hi = est + q * se
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = kind == "sd"
        lo = np.where(sd, est * np.exp(-q * se / est), lo)
        hi = np.where(sd, est * np.exp(q * se / est), hi)
        cor = kind == "cor"
        zc = np.arctanh(np.clip(est, -1.0, 1.0))
        sez = se / (1.0 - est**2)
        lo = np.where(cor, np.tanh(zc - q * sez), lo)
        hi = np.where(cor, np.tanh(zc + q * sez), hi)
    bad = ~np.isfinite(se)
    lo[bad] = np.nan
    hi[bad] = np.nan
    return lo, hi


def fill_lme4_wald(ci: pd.DataFrame, names: list[str], vc: VarCompCov, level: float) -> pd.DataFrame:
    """Fill the NaN variance-parameter rows of an lme4-style Wald ``confint`` table (``lower``/``upper``
    columns, rows named as :class:`~memoe.inference.varpar.VarParSpace`) with :func:`varpar_wald_interval`.

    ``names`` are the VarParSpace names (theta order, ``sigma`` last for an LMM).
    """
    lo, hi = varpar_wald_interval(vc.estimate, vc.std_error, vc.kind, level)
    out = ci.copy()
    for k, pos in enumerate(vc.order if vc.order is not None else range(len(vc.estimate))):
        name = names[int(pos)]
        if name in out.index:
            out.loc[name, "lower"] = lo[k]
            out.loc[name, "upper"] = hi[k]
    out.attrs.update(ci.attrs)
    out.attrs["varpar_scale"] = (
        "variance parameters: delta-method Wald intervals on the log-SD scale (SDs, sigma) and Fisher-z scale "
        "(correlations), mapped back; lme4's confint(method='Wald') gives NA for them"
    )
    return out


def add_varcomp_inference(rp: pd.DataFrame, vc: VarCompCov) -> pd.DataFrame:
    """``rp`` (group, term, estimate rows) with ``std_error, statistic, df, p_value`` from ``vc``.

    ``df`` is infinite (z tests); ``attrs["note"]`` states the boundary convention of the p-values and
    ``attrs["kind"]`` the scale of each row's interval.
    """
    out = rp.copy()
    se = np.asarray(vc.std_error, dtype=float)
    est = out["estimate"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        zstat = est / se
    two_sided = 2.0 * stats.norm.sf(np.abs(zstat))
    one_sided = stats.norm.sf(zstat)
    out["std_error"] = se
    out["statistic"] = zstat
    out["df"] = np.inf
    out["p_value"] = np.where(np.asarray(vc.kind) == "sd", one_sided, two_sided)
    out.attrs["note"] = BOUNDARY_NOTE
    out.attrs["kind"] = list(vc.kind)
    return out


def ran_pars_confint(rp: pd.DataFrame, level: float) -> pd.DataFrame:
    """Add ``conf_low, conf_high`` to a frame from :func:`add_varcomp_inference` (scales as
    :func:`varpar_wald_interval`)."""
    kind = np.asarray(rp.attrs.get("kind", ["other"] * len(rp)), dtype=object)
    if len(kind) != len(rp):
        kind = np.full(len(rp), "other", dtype=object)
    lo, hi = varpar_wald_interval(rp["estimate"].to_numpy(float), rp["std_error"].to_numpy(float), kind, level)
    rp["conf_low"] = lo
    rp["conf_high"] = hi
    return rp

"""Intervals and tests for GLMMs and GLMs: profile and parametric-bootstrap intervals (lme4's
``confint.merMod`` for ``glmerMod``), Wald tests of linear hypotheses and Wald ANOVA tables.

* Profile: lme4's ``profile.merMod`` for GLMMs profiles the (Laplace or AGQ) deviance of
  ``(theta, beta)``: each parameter (``sd_``/``cor_`` on the sd/cor scale, fixed effects) is fixed and the
  deviance minimised over all the others; the limits solve ``zeta(v) = -/+ z`` as in
  :class:`memoe.inference.profile.Profiler`, whose root finding is reused (here the deviance is the
  GLMM's, and there is no ``sigma`` row). An estimated negative binomial theta is profiled out too.
* Bootstrap: parametric, as lme4's ``bootMer``: simulate ``u* ~ N(0, I)``, ``b* = Lambda u*`` and a
  response from the family at ``mu* = g^-1(X beta + Z b* + offset)`` (the dispersion of Gamma / inverse
  Gaussian / Gaussian responses is the one the likelihood profiles, ``sum(d_i) / sum(wt)``), refit from
  the estimates, percentile intervals. Replicate ``k`` uses the ``k``-th child of
  ``numpy.random.SeedSequence(seed)`` (:class:`memoe.inference.bootstrap.BootstrapResult`).
* Tests: Wald chi-square (``ddf="asymptotic"``, lme4/car's z and chi-square tests) with the fit's
  ``vcov()``; GLMs with a scale also take ``ddf="residual"`` (F on ``n - p`` df, as R's ``summary.glm`` t).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings

import numpy as np
import pandas as pd

from memoe.core.arguments import check_int, check_optional_bool, check_seed
from memoe.core.optim import minimize_bounded
from memoe.errors import ArgumentTypeError, HypothesisError, MemoeError, MemoeWarning, caller_stacklevel
from memoe.inference.bootstrap import BootstrapResult
from memoe.inference.profile import Profiler
from memoe.inference.varpar import COR, VarParSpace

__all__ = ["GlmmProfiler", "glmm_anova", "glmm_bootstrap", "glmm_test", "simulate_response"]


def _space_without_sigma(design) -> tuple[VarParSpace, VarParSpace]:
    full = VarParSpace.from_design(design)
    return full, VarParSpace(names=full.names[:-1], kinds=full.kinds[:-1], terms=full.terms, ntheta=full.ntheta)


class GlmmProfiler(Profiler):
    """Profiles of a GLMM's deviance (Laplace or AGQ, as fitted), one parameter at a time.

    Parameters
    ----------
    fit : GlmmResult

    Attributes
    ----------
    names : list of str
        lme4's names: ``sd_<column>|<group>``, ``cor_<a>.<b>|<group>``, then the fixed effects.
    estimates : numpy.ndarray
    dev_min : float
        The deviance at the estimates.
    """

    def __init__(self, fit) -> None:
        if fit.nAGQ == 0:
            raise MemoeError("profile intervals need the Laplace or AGQ deviance: refit with nAGQ >= 1")
        self.fit = fit
        self.design = fit.design
        self.model = fit.model
        self._full, self.space = _space_without_sigma(self.design)
        theta = np.asarray(fit.state.theta, dtype=float)
        self.phi_hat = self._full.phi(theta, 1.0)[:-1]
        self.beta_hat = np.asarray(fit.state.beta, dtype=float)
        self.names = list(self.space.names) + list(self.design.fixef_names)
        self.estimates = np.concatenate([self.phi_hat, self.beta_hat])
        self._nb = bool(getattr(self.model, "nb_estimated", False))
        self._lt_hat = math.log(fit.family_theta) if self._nb else None
        self._f = self.model.objective(max(fit.nAGQ, 1), u0=fit.state.pirls.u)
        se = fit.bse.to_numpy()
        self._beta_se = np.where(np.isfinite(se) & (se > 0), se, 0.1)
        self._argmin: dict[int, dict[float, np.ndarray]] = {}
        self.dev_min = self._deviance(np.concatenate([self.estimates, [self._lt_hat] if self._nb else []]))

    def _deviance(self, v: np.ndarray) -> float:
        """Deviance at ``v = (phi, beta[, log theta_NB])``."""
        k = self.space.size
        theta = self._full.theta(np.concatenate([v[:k], [1.0]]))
        if theta is None:
            return math.inf
        if self._nb:
            self.model.set_family_theta(math.exp(v[-1]))
        p = self.design.p
        return self._f(np.concatenate([theta, v[k : k + p]]))

    def _scales(self) -> np.ndarray:
        sc = np.where(self.space.kinds == COR, 1.0, np.abs(self.phi_hat))
        return np.where(sc > 0, sc, 1.0)

    def profile_deviance(self, name: str, value: float) -> float:
        """Minimum deviance with parameter ``name`` fixed at ``value``."""
        i = self._index(name)
        p = self.design.p
        v0 = np.concatenate([self.estimates, [self._lt_hat] if self._nb else []])
        scale = np.concatenate([self._scales(), self._beta_se, [1.0] if self._nb else []])
        lower = np.concatenate([self.space.lower, np.full(p, -np.inf), [-20.0] if self._nb else []])
        upper = np.concatenate([self.space.upper, np.full(p, np.inf), [20.0] if self._nb else []])
        free = np.array([j for j in range(len(v0)) if j != i], dtype=int)
        v = self._warm_start(i, value, v0)
        v[i] = value

        def f(x: np.ndarray) -> float:
            w = v.copy()
            w[free] = x * scale[free]
            return self._deviance(w)

        if len(free) == 0:
            return self._deviance(v)
        x0 = np.clip(v[free] / scale[free], lower[free] / scale[free], upper[free] / scale[free])
        opt = minimize_bounded(
            f, x0, lower[free] / scale[free], upper[free] / scale[free], ftol_abs=1e-11, xtol_abs=1e-9,
            initial_step=0.1,
        )
        v[free] = opt.x * scale[free]
        self._argmin.setdefault(i, {})[float(value)] = v.copy()
        if self._nb:
            self.model.set_family_theta(math.exp(self._lt_hat))
        return float(opt.fmin)

    def _initial_step(self, i: int) -> float:
        if i >= self.space.size:
            return float(self._beta_se[i - self.space.size])
        if self.space.kinds[i] == COR:
            return 0.05
        return 0.1 * float(self._scales()[i])


# ---------------------------------------------------------------------------------------------- bootstrap
def simulate_response(fit, rng: np.random.Generator) -> np.ndarray:
    """One response vector simulated from the fitted GLMM (the family's ``y`` scale: proportions for binomial)."""
    P = fit.model.problem
    fam = fit.response_family
    eta = P.offset + P.X @ np.asarray(fit.state.beta, dtype=float)
    if P.q:
        u = rng.standard_normal(P.q)
        eta = eta + P.re_predictor(np.asarray(fit.state.theta, dtype=float), u)
    mu = fam.linkinv(eta)
    name = fam.name
    if name == "binomial":
        m = np.round(P.ntrials if np.any(P.ntrials > 1) else P.wt).astype(np.int64)
        k = rng.binomial(np.maximum(m, 0), np.clip(mu, 0.0, 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(m > 0, k / np.maximum(m, 1), 0.0)
    if name == "poisson":
        return rng.poisson(mu).astype(float)
    if name == "negative_binomial":
        th = fam.theta
        return rng.negative_binomial(th, th / (th + mu)).astype(float)
    phi = fit.dispersion
    wt = np.where(P.wt > 0, P.wt, 1.0)
    if name == "Gamma":
        shape = wt / phi
        return rng.gamma(shape, mu / shape)
    if name == "inverse.gaussian":
        return rng.wald(mu, wt / phi)
    if name == "gaussian":
        return mu + np.sqrt(phi / wt) * rng.standard_normal(len(mu))
    raise MemoeError(f"no simulation for the {fam} family")  # pragma: no cover - every family is above


def _refit(fit, y: np.ndarray):
    """The fit's model refitted to response ``y`` (same design), from the fit's estimates."""
    from memoe.glmm.control import GlmmControl
    from memoe.glmm.pirls import PirlsProblem

    model = copy.copy(fit.model)
    model.gdesign = dataclasses.replace(fit.model.gdesign, y=y)
    model.problem = PirlsProblem(model.gdesign, fit.response_family)
    model._separation = None
    start = np.asarray(fit.state.theta, dtype=float) if model.design.theta_map.size else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(nAGQ=fit.nAGQ, start=start, control=GlmmControl(calc_derivs=False), warn=False)


def glmm_bootstrap(fit, nsim: int = 500, seed=None, progress: bool | None = None, n_jobs: int | None = 1):
    """Parametric bootstrap of a GLMM or GLM (lme4's ``bootMer``); see the module notes.

    Parameters
    ----------
    fit : GlmmResult
    nsim : int, default 500
    seed : int >= 0 or numpy.random.SeedSequence, optional
    progress : bool, optional
        tqdm progress bar (default: when stderr is a terminal).
    n_jobs : 1
        Refits run in this process (accepted for the interface of :func:`memoe.inference.bootstrap.bootstrap`).

    Returns
    -------
    memoe.inference.bootstrap.BootstrapResult
        Replicates of ``sd_``/``cor_`` (and ``theta`` of an estimated negative binomial) and the fixed effects.
    """
    from tqdm.auto import tqdm

    nsim = check_int(nsim, "nsim", minimum=1)
    if isinstance(seed, np.random.Generator):
        raise ArgumentTypeError("seed must be None, a non-negative integer or a numpy SeedSequence")
    seed = check_seed(seed)
    progress = check_optional_bool(progress, "progress")
    if n_jobs not in (1, None):
        check_int(n_jobs, "n_jobs", minimum=1)
    full, space = _space_without_sigma(fit.design)
    nb = bool(getattr(fit.model, "nb_estimated", False))
    names = list(space.names) + (["theta"] if nb else []) + list(fit.design.fixef_names)

    def record(f) -> np.ndarray:
        phi = full.phi(np.asarray(f.state.theta, dtype=float), 1.0)[:-1]
        return np.concatenate([phi, [f.family_theta] if nb else [], np.asarray(f.state.beta, dtype=float)])

    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    reps = np.full((nsim, len(names)), np.nan)
    family_before = fit.model.problem.family
    try:
        for k, ss in enumerate(tqdm(root.spawn(nsim), disable=None if progress is None else not progress,
                                    desc="bootstrap", unit="fit")):
            rng = np.random.default_rng(ss)
            with contextlib.suppress(MemoeError, np.linalg.LinAlgError, ValueError, FloatingPointError):
                reps[k] = record(_refit(fit, simulate_response(fit, rng)))
    finally:
        fit.model.problem.family = family_before
    n_failed = int(np.sum(np.any(np.isnan(reps), axis=1)))
    if n_failed:
        warnings.warn(f"{n_failed} of {nsim} bootstrap refits failed; they are left out", MemoeWarning,
                      stacklevel=caller_stacklevel())
    estimates = pd.Series(record(fit), index=names, name="estimate")
    return BootstrapResult(estimates=estimates, replicates=pd.DataFrame(reps, columns=names), seed=seed,
                           n_failed=n_failed)


# ---------------------------------------------------------------------------------------------- tests
_GLMM_DDF = ("asymptotic", "residual")


def _check_ddf(fit, ddf: str) -> str:
    from memoe.inference.ddf import normalize_ddf

    method = normalize_ddf(ddf)
    if method not in _GLMM_DDF or (method == "residual" and fit.design.theta_map.size):
        allowed = "'asymptotic' (Wald chi-square)" + (
            " or 'residual' (F on n - p df)" if not fit.design.theta_map.size else ""
        )
        raise HypothesisError(
            f"ddf={ddf!r} is not available for a GLMM ({type(fit).__name__}); use {allowed}: Satterthwaite, "
            "Kenward-Roger and containment df are defined for Gaussian linear mixed models"
        )
    return method


def glmm_test(fit, hypothesis, ddf: str = "asymptotic"):
    """Wald test of ``L beta = rhs`` (:func:`memoe.inference.hypothesis.test` with the GLMM's vcov).

    With ``ddf="asymptotic"`` the statistic ``F`` is the Wald chi-square divided by its df (``q F``
    is chi-square(q)); ``Chisq`` adds it undivided.
    """
    from memoe.inference.hypothesis import test

    method = _check_ddf(fit, ddf)
    out = test(fit, hypothesis, ddf=method)
    if method == "asymptotic":
        out["Chisq"] = out["F value"] * out["NumDF"]
    return out


def glmm_anova(fit, type: int | str = 3, ddf: str = "asymptotic"):
    """Wald chi-square tests of the fixed-effects terms (car's ``Anova(fit, type = 3, test = "Chisq")``
    for type III; type I is sequential).

    Returns
    -------
    InferenceFrame
        Rows = terms; columns ``Chisq, Df, Pr(>Chisq)`` (``ddf="asymptotic"``), or ``F value, NumDF, DenDF,
        Pr(>F)`` (``ddf="residual"``, GLMs with a scale).
    """
    from memoe.inference.anova import anova
    from memoe.inference.frames import InferenceFrame

    method = _check_ddf(fit, ddf)
    table = anova(fit, ddf=method, type=type)
    kind = "III (marginal)" if str(type).strip().lower() in ("3", "iii") else "I (sequential)"
    if method == "residual":
        frame = table[["F value", "NumDF", "DenDF", "Pr(>F)"]].copy()
        title = f"Type {kind} Wald F tests (residual df)"
        note = "F = Wald / NumDF with the Pearson dispersion, on n - p df (R's anova.glm test='F' uses deviances)"
    else:
        frame = pd.DataFrame(
            {"Chisq": table["F value"] * table["NumDF"], "Df": table["NumDF"], "Pr(>Chisq)": table["Pr(>F)"]},
            index=table.index,
        )
        title = f"Analysis of Deviance Table (Type {kind} Wald chisquare tests)"
        note = "Wald chi-square tests with the fit's vcov() (car::Anova(test = 'Chisq'))"
    return InferenceFrame.build(frame, ddf=method, note=note, title=title, type=table.attrs.get("type"))

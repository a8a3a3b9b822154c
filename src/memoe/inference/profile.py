"""Likelihood profiles and profile confidence intervals, as lme4's ``profile`` / ``confint(method = "profile")``.

Each parameter is profiled by fixing it and minimising the ML deviance over all the others:

* variance parameters (``sd_``, ``cor_``) and ``sigma`` on the sd/cor scale, with the deviance
  ``d(theta, sigma) = log det(Lambda' Z' Z Lambda + I) + pwrss(theta) / sigma^2 + n log(2 pi sigma^2)``
  (beta at its conditional optimum; lme4's ``devfun2``);
* a fixed effect ``beta_j`` through the model with ``X_j beta_j`` as an offset and ``X_j`` removed, whose
  profiled ML deviance is minimised over theta (lme4 does the same).

The signed square root ``zeta(v) = sign(v - v_hat) sqrt(d_profile(v) - d_min)`` is approximately standard
normal, and the interval limits solve ``zeta(v) = -/+ z_{(1+level)/2}``. lme4 interpolates ``zeta`` with a
spline through a grid of profile points; here the equation is solved by root finding, which reproduces lme4's
limits to the accuracy of its spline. As lme4, REML fits are profiled on the ML deviance (``profile``
refits the model by ML first). If a profile does not reach the cutoff before a boundary of the parameter
space (sd = 0, cor = +/-1), the limit is that boundary.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from memoe.core.arguments import check_level, check_optional_bool
from memoe.core.optim import minimize_bounded
from memoe.core.rformat import percent_labels
from memoe.errors import ArgumentError, ConvergenceError, MemoeWarning, caller_stacklevel
from memoe.inference.varpar import COR, SIGMA, VarParSpace
from memoe.lmm.deviance import LOG_2PI, profiled_deviance
from memoe.lmm.objective import PLSProblem

__all__ = ["ProfileParameterError", "Profiler", "profile_confint"]

MAX_STEPS = 40


class Profiler:
    """Profiles of the ML deviance of a linear mixed model, one parameter at a time.

    Parameters
    ----------
    fit : LmmResult
        ML or REML fit; a REML fit is refitted by ML (as lme4's ``profile``).

    Attributes
    ----------
    names : list of str
        lme4's parameter names: ``sd_...``, ``cor_...``, ``sigma``, then the fixed effects.
    estimates : numpy.ndarray
        ML estimates in the same order.
    dev_min : float
        ML deviance at the optimum.
    """

    def __init__(self, fit) -> None:
        if fit.reml:
            fit = fit.model.fit(reml=False, warn=False)
        self.fit = fit
        self.design = fit.design
        self.problem = fit.model.problem
        self.space = VarParSpace.from_design(self.design)
        self.phi_hat = self.space.phi(fit.state.theta, fit.sigma)
        self.beta_hat = np.asarray(fit.state.beta, dtype=float)
        self.names = list(self.space.names) + list(self.design.fixef_names)
        self.estimates = np.concatenate([self.phi_hat, self.beta_hat])
        self.dev_min = float(fit.deviance)
        se = np.sqrt(np.diag(fit.vcov().to_numpy())) if self.design.p else np.zeros(0)
        self._beta_se = se
        # optimum of the other parameters at each profiled value, for warm starts
        self._argmin: dict[int, dict[float, np.ndarray]] = {}

    # ------------------------------------------------------------------ deviances
    def deviance_phi(self, phi: np.ndarray) -> float:
        """ML deviance at sd/cor/sigma ``phi`` with beta at its conditional optimum."""
        theta = self.space.theta(phi)
        if theta is None:
            return math.inf
        f = self.problem.factorize(theta)
        if not f.ok:
            return math.inf
        s2 = phi[-1] ** 2
        n = f.n_eff
        return f.logdet_Z + f.pwrss / s2 + n * (LOG_2PI + math.log(s2))

    def _scales(self) -> np.ndarray:
        """Typical magnitudes of the variance parameters, so that BOBYQA sees comparable coordinates."""
        sc = np.where(self.space.kinds == COR, 1.0, np.abs(self.phi_hat))
        return np.where(sc > 0, sc, self.phi_hat[-1] if self.phi_hat[-1] > 0 else 1.0)

    def _warm_start(self, i: int, value: float, default: np.ndarray) -> np.ndarray:
        seen = self._argmin.get(i)
        if not seen:
            return default.copy()
        nearest = min(seen, key=lambda v: abs(v - value))
        return seen[nearest].copy()

    def _profile_varpar(self, i: int, value: float) -> float:
        free = np.array([k for k in range(self.space.size) if k != i])
        scale = self._scales()[free]
        lower = self.space.lower[free] / scale
        upper = self.space.upper[free] / scale
        # sigma strictly positive; its lower bound of 0 would only produce infinite deviances
        is_sigma = self.space.kinds[free] == SIGMA
        lower[is_sigma] = 1e-8
        phi = self._warm_start(i, value, self.phi_hat)
        phi[i] = value

        def f(x: np.ndarray) -> float:
            phi[free] = x * scale
            return self.deviance_phi(phi)

        x0 = np.clip(phi[free] / scale, lower, upper)
        opt = minimize_bounded(f, x0, lower, upper, ftol_abs=1e-11, xtol_abs=1e-9)
        phi[free] = opt.x * scale
        self._argmin.setdefault(i, {})[value] = phi.copy()
        return float(opt.fmin)

    def _profile_beta(self, j: int, value: float) -> float:
        d = self.design
        keep = np.arange(d.p) != j
        problem = PLSProblem(
            y=d.y - d.X[:, j] * value,
            X=d.X[:, keep],
            codes=[b.factor.codes for b in d.blocks],
            nlevels=[b.nlevels for b in d.blocks],
            Z=[b.Z for b in d.blocks],
            theta_map=d.theta_map,
            log_weights=self.problem.log_weights,
        )
        i = self.space.size + j
        theta0 = self._warm_start(i, value, self.fit.state.theta)
        lower = d.theta_map.lower_bounds
        opt = minimize_bounded(lambda t: problem.deviance(t, False), theta0, lower, ftol_abs=1e-11, xtol_abs=1e-9)
        self._argmin.setdefault(i, {})[value] = opt.x.copy()
        f = problem.factorize(opt.x)
        return float(profiled_deviance(f.logdet_Z, f.logdet_X, f.pwrss, f.n_eff, d.p - 1, False))

    def profile_deviance(self, name: str, value: float) -> float:
        """Minimum ML deviance with parameter ``name`` fixed at ``value``."""
        i = self._index(name)
        if i < self.space.size:
            return self._profile_varpar(i, float(value))
        return self._profile_beta(i - self.space.size, float(value))

    def zeta(self, name: str, value: float) -> float:
        """Signed square root of the deviance increase, ``sign(v - v_hat) sqrt(d(v) - d_min)``."""
        i = self._index(name)
        dev = self.profile_deviance(name, value)
        diff = max(dev - self.dev_min, 0.0)
        return math.copysign(math.sqrt(diff), float(value) - self.estimates[i]) if diff > 0 else 0.0

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ProfileParameterError(
                f"unknown parameter {name!r}; profiled parameters are {', '.join(self.names)}"
            ) from None

    # ------------------------------------------------------------------ limits
    def _bounds(self, i: int) -> tuple[float, float]:
        if i < self.space.size:
            return float(self.space.lower[i]), float(self.space.upper[i])
        return -math.inf, math.inf

    def _initial_step(self, i: int) -> float:
        if i >= self.space.size:
            se = self._beta_se[i - self.space.size]
            return float(se) if se > 0 else max(abs(self.estimates[i]), 1.0) * 0.1
        if self.space.kinds[i] == COR:
            return 0.05
        return 0.1 * float(self._scales()[i])

    def limit(self, name: str, z: float) -> float:
        """The value ``v`` with ``zeta(v) = z`` on the side of the estimate given by the sign of ``z``.

        Returns the boundary of the parameter space if the profile does not reach ``|z|`` before it, and
        NaN (with a warning) if no bracket is found.
        """
        i = self._index(name)
        hat = float(self.estimates[i])
        lo_b, hi_b = self._bounds(i)
        direction = 1.0 if z > 0 else -1.0
        target = abs(z)
        edge = hi_b if direction > 0 else lo_b
        if hat == edge:
            return hat

        def g(v: float) -> float:
            return direction * self.zeta(name, v) - target

        x0, g0 = hat, -target
        h = self._initial_step(i)
        x1 = hat + direction * h
        for _ in range(MAX_STEPS):
            if (x1 - edge) * direction >= 0:
                x1 = edge
            g1 = g(x1)
            if g1 >= 0:
                a, b = sorted((x0, x1))
                tol = 1e-10 * max(abs(hat), abs(h), 1e-8)
                return float(optimize.brentq(g, a, b, xtol=tol, rtol=1e-12))
            if x1 == edge:
                return float(edge)
            # secant step on the (nearly linear) zeta, overshooting a little to bracket the root
            slope = (g1 - g0) / (x1 - x0)
            step = (-g1 / slope) * 1.1 if slope * direction > 1e-12 else 2.0 * (x1 - x0)
            step = direction * min(max(abs(step), 0.05 * abs(x1 - x0)), 4.0 * abs(x1 - x0) + abs(h))
            x0, g0 = x1, g1
            x1 = x1 + step
        warnings.warn(
            f"profile of {name} did not reach zeta = {z:.3g}", MemoeWarning, stacklevel=caller_stacklevel()
        )
        return math.nan


class ProfileParameterError(ArgumentError, KeyError):
    """An unknown parameter name was asked for (still a KeyError for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def profile_confint(fit, level: float = 0.95, parm: list[str] | None = None, progress: bool | None = None):
    """Profile-likelihood confidence intervals (lme4's ``confint(fit, method = "profile", oldNames = FALSE)``).

    Parameters
    ----------
    fit : LmmResult
    level : float
    parm : list of str, optional
        Parameter names (default all, in lme4's order).
    progress : bool, optional
        tqdm progress bar over the parameters; None (default): shown when stderr is a terminal.

    Returns
    -------
    pandas.DataFrame
        Rows named by parameter, columns ``"2.5 %"`` and ``"97.5 %"`` (for ``level=0.95``).
    """
    # deferred: tqdm.auto probes for Jupyter widgets when imported; pay that only when a bar is shown
    from tqdm.auto import tqdm


    level = check_level(level)
    progress = check_optional_bool(progress, "progress")
    # a family with its own deviance (GLMMs) supplies a Profiler subclass
    prof = fit.profiler() if hasattr(fit, "profiler") else Profiler(fit)
    names = prof.names if parm is None else list(parm)
    for name in names:
        prof._index(name)  # unknown names fail before any profiling
    z = stats.norm.ppf(0.5 + level / 2)
    rows = []
    # disable=None: shown only when stderr is a terminal
    bar = tqdm(names, desc="profile", unit="par", leave=False, disable=None if progress is None else not progress)
    for name in bar:
        try:
            rows.append((prof.limit(name, -z), prof.limit(name, z)))
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise ConvergenceError(f"profiling {name} failed: {exc}") from exc
    lo, hi = percent_labels(level)
    return pd.DataFrame(rows, index=pd.Index(names), columns=[lo, hi])

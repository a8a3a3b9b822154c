"""Binomial and Poisson GLMMs on a Dask DataFrame (one grouping factor, Laplace approximation).

With one grouping factor and beta held fixed, the conditional modes of different subjects do not
interact: lme4's second-stage objective (the Laplace deviance of ``x = (theta, beta)`` with ``u`` from
PIRLS, :func:`memoe.glmm.laplace.joint_objective`) is a sum over partitions, each running PIRLS on its
own subjects (:class:`GlmmPart`, persisted on the workers with its rows). The client only sees
``(theta, beta)`` going out and one float per partition coming back.

lme4's first stage (``nAGQ = 0``, beta inside PIRLS) couples every subject through beta at every PIRLS
step; it only provides starting values, so the Dask path starts the second stage from the GLM fit
(distributed IRLS on ``X'WX``, ``X'Wz`` sums) and identity relative factors. The optimum is the same
function's minimum as in memory; the estimates agree to the optimiser's tolerance.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.optim import minimize_bounded
from memoe.core.optim.arguments import check_bool, check_control
from memoe.core.optim.checks import ConvergenceReport
from memoe.core.optim.finish import finish_fit, is_boundary
from memoe.core.optim.progress import EvaluationBar
from memoe.core.state import GlmmState, frozen_array
from memoe.dask.lmm import DistributedStats
from memoe.dask.result import PANDAS_LEVELS, DaskUnsupportedError, DesignCounts
from memoe.dask.spec import DaskFormulaError, learn_design, partition_arrays
from memoe.dask.stats import tune_malloc
from memoe.errors import DataError, IdentifiabilityError
from memoe.glmm.control import GlmmControl
from memoe.glmm.families import get_family
from memoe.glmm.model import StageResult
from memoe.glmm.pirls import MAX_ITER, MIN_STEP, U_TOL
from memoe.glmm.result import GlmmResult
from memoe.glmm.single import SingleWpls

__all__ = ["DaskGLMM", "DaskGlmmResult", "GlmmPart"]

# GLM IRLS for the start: R's glm.fit epsilon on the relative deviance change
GLM_EPS = 1e-8


class GlmmPart:
    """One partition's rows and PIRLS with beta held fixed (lme4's ``uOnly``), on a worker."""

    def __init__(self, pdf: pd.DataFrame, design, family) -> None:
        y, X, Z, codes, levels, n_dropped, index = partition_arrays(pdf, design)
        self.levels, self.n_dropped, self.n, self.index = levels, n_dropped, len(y), index
        self.family = family
        self.X = X
        if self.n:
            self.y, self.wt, self.ntrials = family.prepare(y, np.ones(len(y)), None, design.spec.response)
            self.ZT = np.ascontiguousarray(Z.T)
            self.codes = codes
            self.wpls = SingleWpls(X, codes, len(levels), Z, design.theta_map)
            self.consts = family.loglik_constants(self.y, self.wt, self.ntrials)
        self.theta_map = design.theta_map

    # ------------------------------------------------------------------ GLM start (distributed IRLS)
    def irls(self, beta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
        """``(X'WX, X'Wz, deviance at beta)`` of the partition; ``beta=None``: at the family's ``mustart``."""
        p = self.X.shape[1]
        if not self.n:
            return np.zeros((p, p)), np.zeros(p), 0.0
        fam = self.family
        eta = fam.linkfun(fam.mustart(self.y, self.wt, self.ntrials)) if beta is None else self.X @ beta
        mu = fam.linkinv(eta)
        dmu = fam.mu_eta(eta)
        w = self.wt * dmu * dmu / fam.variance(mu)
        z = eta + (self.y - mu) / dmu
        dev = float(fam.dev_resids(self.y, mu, self.wt).sum())
        Xw = self.X * w[:, None]
        return Xw.T @ self.X, Xw.T @ z, dev

    # ------------------------------------------------------------------ Laplace deviance
    def _re(self, lam: np.ndarray, u: np.ndarray) -> np.ndarray:
        b = u.reshape(-1, lam.shape[0]) @ lam.T
        out = np.zeros(self.n)
        for a in range(self.ZT.shape[0]):
            out += self.ZT[a] * np.take(np.ascontiguousarray(b[:, a]), self.codes)
        return out

    def pirls(self, theta: np.ndarray, beta: np.ndarray):
        """Modes of the partition's subjects at (theta, beta): ``u``, ``mu``, ``ldL2``; as ``PirlsProblem._solve``."""
        fam = self.family
        lam = self.theta_map.lambdas(theta)[0]
        q = lam.shape[0]
        u = np.zeros(len(self.levels) * q)
        fixed_eta = self.X @ beta
        eta = fixed_eta + self._re(lam, u)
        mu = fam.linkinv(eta)
        pdev = float(fam.dev_resids(self.y, mu, self.wt).sum() + u @ u)
        ldL2 = np.inf
        converged = False
        for it in range(1, MAX_ITER + 1):
            dmu = fam.mu_eta(eta)
            w = self.wt * dmu * dmu / fam.variance(mu)
            z = eta - fixed_eta + (self.y - mu) / dmu
            u_new, _, ldL2 = self.wpls.solve(theta, w, z, with_beta=False)
            scale = 1.0 + float(max(np.max(np.abs(u), initial=0.0), np.max(np.abs(beta), initial=0.0)))
            if it > 1 and float(np.max(np.abs(u_new - u), initial=0.0)) < U_TOL * scale:
                converged = True
                break
            fac = 1.0
            while True:
                u_try = u + fac * (u_new - u)
                eta_try = fixed_eta + self._re(lam, u_try)
                mu_try = fam.linkinv(eta_try)
                pdev_try = float(fam.dev_resids(self.y, mu_try, self.wt).sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * abs(pdev):
                    break
                fac *= 0.5
                if fac < MIN_STEP:
                    break
            if fac < MIN_STEP:
                break
            u, eta, mu, pdev = u_try, eta_try, mu_try, pdev_try
        if not converged:
            dmu = fam.mu_eta(eta)
            w = self.wt * dmu * dmu / fam.variance(mu)
            _, _, ldL2 = self.wpls.solve(theta, w, eta - fixed_eta + (self.y - mu) / dmu, with_beta=False)
        return u, mu, ldL2, converged

    def laplace(self, theta: np.ndarray, beta: np.ndarray) -> float:
        """``-2 log p(y | mu) + ||u||^2 + log det(L L')`` of the partition (lme4's Laplace deviance)."""
        if not self.n:
            return 0.0
        tune_malloc()
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            try:
                u, mu, ldL2, _ = self.pirls(theta, beta)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                return math.inf
            ll = -2.0 * self.family.loglik(self.y, mu, self.wt, self.ntrials, constants=self.consts)
        v = ll + float(u @ u) + ldL2
        return v if math.isfinite(v) else math.inf

    def residuals(self, theta: np.ndarray, beta: np.ndarray, kind: str) -> pd.Series:
        """Per-row ``"response"`` (``y - mu``), ``"pearson"`` or ``"deviance"`` residuals at the modes."""
        if not self.n:
            return pd.Series(dtype=float, name=f"resid_{kind}")
        fam = self.family
        with np.errstate(all="ignore"):
            _, mu, _, _ = self.pirls(theta, beta)
        if kind == "response":
            r = self.y - mu
        elif kind == "pearson":
            r = (self.y - mu) * np.sqrt(self.wt / fam.variance(mu))
        else:
            r = np.sign(self.y - mu) * np.sqrt(np.maximum(fam.dev_resids(self.y, mu, self.wt), 0.0))
        return pd.Series(r, index=self.index, name=f"resid_{kind}")

    def ranef(self, theta: np.ndarray, beta: np.ndarray, columns, group: str) -> pd.DataFrame:
        if not self.n:
            return pd.DataFrame({c: pd.Series(dtype=float) for c in columns}, index=pd.Index(self.levels, name=group))
        lam = self.theta_map.lambdas(theta)[0]
        with np.errstate(all="ignore"):
            u, *_ = self.pirls(theta, beta)
        return pd.DataFrame(u.reshape(-1, lam.shape[0]) @ lam.T, columns=list(columns),
                            index=pd.Index(self.levels, name=group))


def _make_part(pdf, design, family):
    return GlmmPart(pdf, design, family)


def _counts(part: GlmmPart) -> np.ndarray:
    return np.array([part.n, part.n_dropped, len(part.levels)], dtype=np.int64)


def _irls(part: GlmmPart, beta):
    return part.irls(beta)


def _laplace(part: GlmmPart, theta, beta) -> float:
    return part.laplace(theta, beta)


class _Parts(DistributedStats):
    def __init__(self, ddf, design, family) -> None:
        import dask

        parts = [dask.delayed(_make_part, pure=True)(p, design, family) for p in ddf.to_delayed()]
        self.parts = list(dask.persist(*parts))


class DaskGLMM:
    """A binomial or Poisson GLMM on a Dask DataFrame (one grouping factor, Laplace); see :mod:`memoe.dask.glmm`.

    Parameters
    ----------
    formula : str
        lme4 syntax with one grouping factor; the response a 0/1 (binomial) or count (Poisson) column.
    data : dask.dataframe.DataFrame
    family : {"binomial", "poisson"}
    progress : bool or None
        A tqdm bar over the evaluations.

    Notes
    -----
    R: ``lme4::glmer(formula, data, family)`` (``nAGQ = 1``).

    Examples
    --------
    >>> fit = memoe.glmm("y ~ t + (1 | id)", data=ddf, family="binomial").fit()   # doctest: +SKIP
    """

    def __init__(self, formula: str, data, family="binomial", weights=None, offset=None, contrasts=None,
                 progress: bool | None = None) -> None:
        from memoe.dask.partition import align_by_subject

        self.family = get_family(family)
        canonical = {"binomial": "logit", "poisson": "log"}
        if canonical.get(self.family.name) != getattr(self.family.link, "name", None):
            raise DaskFormulaError(
                f"family {self.family} is not available with a Dask DataFrame; use 'binomial' (logit link) or "
                "'poisson' (log link)")
        if weights is not None or offset is not None or "cbind(" in formula or "offset(" in formula:
            raise DaskFormulaError("weights, offsets and cbind() responses are not supported with a Dask DataFrame yet")
        self.formula = formula
        self.progress = progress
        self.data_name = None
        self.nb_estimated = False
        design = learn_design(data, formula, contrasts, residual_scale=False)
        self.ddf, self.shuffled = align_by_subject(data, design.group)
        self.parts = _Parts(self.ddf, design, self.family)
        design.n, design.n_dropped, design.nlevels = (int(v) for v in self.parts.reduce(_counts))
        if design.n == 0:
            raise DataError(f"no rows left after removing {design.n_dropped} rows with missing values")
        if design.nlevels < 2:
            raise IdentifiabilityError(f"grouping factor {design.group!r} has {design.nlevels} level; it must have > 1")
        self.design = design
        self.contrasts = dict(design.contrasts)
        self.evaluations = 0

    def glm_start(self, maxit: int = 25) -> np.ndarray:
        """beta of the GLM without random effects (R's ``glm.fit`` IRLS, sums reduced over partitions)."""
        beta, dev_old = None, math.inf
        for _ in range(maxit):
            XtWX, XtWz, dev = self.parts.reduce(_irls, beta)
            if beta is not None and abs(dev - dev_old) / (abs(dev) + 0.1) < GLM_EPS:
                break
            beta, dev_old = np.linalg.solve(XtWX, XtWz), dev
        return beta

    def objective(self):
        """The Laplace deviance of ``x = (theta, beta)``: one distributed reduction per evaluation."""
        k = self.design.theta_map.size

        def f(x: np.ndarray) -> float:
            x = np.asarray(x, dtype=float)
            self.evaluations += 1
            return float(self.parts.reduce(_laplace, x[:k], x[k:]))

        return f

    def fit(self, nAGQ: int = 1, start=None, control=None, warn: bool = True):
        """Estimate (theta, beta) by BOBYQA on the distributed Laplace deviance; returns a :class:`DaskGlmmResult`."""
        from memoe.core.optim import finite_difference_derivatives
        from memoe.core.optim.checks import check_convergence

        if nAGQ != 1:
            raise DaskUnsupportedError("a Dask GLMM is fitted by the Laplace approximation (nAGQ=1) only")
        warn = check_bool(warn, "warn")
        control = check_control(control, GlmmControl)
        tmap, p = self.design.theta_map, self.design.p
        k = tmap.size
        beta0 = self.glm_start()
        theta0 = tmap.initial() if start is None else np.asarray(start, float)
        lower = np.concatenate([tmap.lower_bounds, np.full(p, -np.inf)])
        f = self.objective()
        bar = EvaluationBar(self.progress, "dask glmm Laplace")
        best = [math.inf]

        def counted(x):
            v = f(x)
            best[0] = min(best[0], v)
            bar.update(best[0])
            return v

        try:
            # first stage (the role of lme4's nAGQ = 0 stage, which couples all subjects through beta): theta
            # alone at the GLM's beta, with a loose tolerance; it keeps the joint search away from the
            # boundary optima that a start at identity factors can fall into
            opt1 = minimize_bounded(lambda t: counted(np.concatenate([t, beta0])), theta0, tmap.lower_bounds,
                                    ftol_abs=control.stage1_ftol_abs, xtol_abs=control.stage1_xtol_abs,
                                    maxeval=control.maxeval)
            x0 = np.concatenate([opt1.x, beta0])
            opt = minimize_bounded(counted, x0, lower, ftol_abs=control.ftol_abs, xtol_abs=control.xtol_abs,
                                   maxeval=control.maxeval, initial_step=np.maximum(0.1 * np.abs(x0), 0.05))
        finally:
            bar.close()
        x = opt.x.copy()
        x[:k][(tmap.lower_bounds == 0) & (np.abs(x[:k]) < 1e-12)] = 0.0
        theta, beta = x[:k], x[k:]
        hess = None
        report = ConvergenceReport(converged=True)
        if control.calc_derivs:
            f0 = opt.fmin if np.array_equal(x, opt.x) else None
            grad, hess = finite_difference_derivatives(f, x, lower, delta=control.hessian_delta, f0=f0)
            free = np.ones(len(x), dtype=bool)
            free[:k] = ~((lower[:k] == 0) & (theta < control.singular_tol))
            report = check_convergence(grad, hess, free, grad_tol=control.grad_tol)
        singular = is_boundary(theta, tmap.lower_bounds, control.singular_tol)
        messages = finish_fit(report, singular=singular, names=tmap.names, values=theta, warn=warn)
        return DaskGlmmResult(self, theta, beta, float(opt.fmin if np.array_equal(x, opt.x) else f(x)),
                              StageResult(opt, theta.copy(), beta.copy(), None), report, hess, singular, messages)

    def __repr__(self) -> str:
        d = self.design
        return f"DaskGLMM({self.formula!r}, family={self.family}, nobs={d.n}, groups={{{d.group!r}: {d.nlevels}}})"


class DaskGlmmResult(DesignCounts, GlmmResult):
    """A :class:`memoe.glmm.GlmmResult` of a Dask fit: estimates, Hessian ``vcov``, ``loglik`` and tables from the
    reduced quantities; ``ranef`` from one pass over the persisted partitions; ``predict(ddf)`` lazily.
    Methods needing the rows in one process (``vcov_rx``, residuals, ``deviance``) raise DaskUnsupportedError."""

    def __init__(self, model, theta, beta, criterion, stage2, convergence, hessian, singular, messages):
        self.model = model
        self.laplace = "expected"
        self.design = model.design
        self.response_family = model.family
        self.nb_hessian = None
        self.nAGQ = 1
        self.stage1, self.stage2 = None, stage2
        self.opt = stage2.opt
        self.convergence = convergence
        self.hessian = hessian
        self._singular = bool(singular)
        self.messages = list(messages)
        self.state = GlmmState(theta=frozen_array(theta), beta=frozen_array(beta), nAGQ=1, pirls=None,
                               criterion=float(criterion))

    def _refuse(self, what: str):
        raise DaskUnsupportedError(f"{what} needs every row of the data in one process; for a Dask fit compute the "
                                   "data (ddf.compute()) and refit in memory with memoe.glmm(...)")

    @property
    def vcov_rx(self):
        self._refuse("vcov_rx")

    def residuals(self, type: str = "deviance"):
        """``"deviance"`` (lme4's default), ``"pearson"`` or ``"response"`` residuals: a lazy Dask Series
        (NaN-dropped rows are absent)."""
        import dask.dataframe as dd

        import dask

        if type not in ("deviance", "pearson", "response"):
            raise DaskUnsupportedError(f"residuals(type={type!r}) is not available for a Dask GLMM fit; "
                                       "use 'deviance', 'pearson' or 'response'")
        theta, beta = np.array(self.state.theta), np.array(self.state.beta)
        parts = [dask.delayed(GlmmPart.residuals)(s, theta, beta, type) for s in self.model.parts.parts]
        return dd.from_delayed(parts, meta=pd.Series(dtype=float, name=f"resid_{type}"), verify_meta=False)

    @cached_property
    def deviance(self) -> float:
        """lme4's ``deviance(fit)``: the sum of squared conditional deviance residuals (one distributed pass)."""
        return float((self.residuals("deviance") ** 2).sum().compute())

    def summary(self):
        """lme4-style summary; the scaled-residual quantiles are Dask's approximate quantiles."""
        from memoe.dask.result import SummaryView
        from memoe.glmm.summary import GlmmSummary

        return GlmmSummary(SummaryView(self))

    @property
    def ranef(self) -> dict:
        """Conditional modes: a Dask DataFrame (pandas up to :data:`memoe.dask.result.PANDAS_LEVELS` subjects)."""
        import dask.dataframe as dd

        import dask

        d = self.design
        theta, beta = np.array(self.state.theta), np.array(self.state.beta)
        meta = pd.DataFrame({c: pd.Series(dtype=float) for c in d.columns})
        parts = [dask.delayed(GlmmPart.ranef)(s, theta, beta, d.columns, d.group) for s in self.model.parts.parts]
        out = dd.from_delayed(parts, meta=meta, verify_meta=False)
        if d.nlevels <= PANDAS_LEVELS:
            out = out.compute().sort_index()
            out.index.name = d.group
        return {d.group: out}

    def predict(self, newdata=None, re_form="full", type: str = "response", allow_new_levels: bool = False):
        """Linear predictor (``type="link"``) or mean (``"response"``) on new data, lazily per partition."""
        from memoe.core.design.newdata import check_type, parse_re_form
        from memoe.dask import is_dask_dataframe
        from memoe.dask.result import _predict_frame

        if newdata is None:
            self._refuse("predict() without newdata (fitted values)")
        type = check_type(type)
        re_form = parse_re_form(re_form)
        d, beta, fam = self.design, np.asarray(self.state.beta), self.response_family
        ranef = self.ranef[d.group] if re_form == "full" else None

        def one(pdf, rf):
            eta = _predict_frame(pdf, d, beta, rf, allow_new_levels)
            return eta if type == "link" else pd.Series(fam.linkinv(eta.to_numpy()), index=eta.index, name="predict")

        if not is_dask_dataframe(newdata):
            return one(newdata, ranef)
        if ranef is None or isinstance(ranef, pd.DataFrame):
            return newdata.map_partitions(one, ranef, meta=pd.Series(dtype=float, name="predict"))
        b = ranef.rename(columns={c: f"__b_{i}" for i, c in enumerate(d.columns)})
        joined = newdata.merge(b, left_on=d.group, right_index=True, how="left")
        return joined.map_partitions(one, "joined", meta=pd.Series(dtype=float, name="predict"))

    def __repr__(self) -> str:
        return (f"<DaskGlmmResult {self.response_family} {self.model.formula!r} nobs={self.nobs} "
                f"loglik={self.loglik:.4f}>")

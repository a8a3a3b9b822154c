"""The frozen result of a GLMM fit (lme4's ``glmerMod``); every extractor reads from it."""

from __future__ import annotations

import dataclasses
import math
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from memoe.glmm.agq import agq_deviance
from memoe.glmm.laplace import laplace_deviance
from memoe.glmm.pirls import PirlsState

__all__ = ["GlmmResult", "vcov_from_hessian"]


def vcov_from_hessian(hessian: np.ndarray | None, ntheta: int) -> np.ndarray | None:
    """lme4's ``calc.vcov.hess``: the beta block of ``solve(H)``, symmetrised as ``h + h'`` (= 2 H^-1).

    The deviance is -2 log L, so the observed information of the likelihood is ``H / 2``.

    Parameters
    ----------
    hessian : numpy.ndarray, shape (ntheta + p, ntheta + p), or None
    ntheta : int

    Returns
    -------
    numpy.ndarray of shape (p, p), or None when H is missing, singular or the block is not
    positive definite.
    """
    if hessian is None:
        return None
    try:
        Hinv = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return None
    h = Hinv[ntheta:, ntheta:]
    v = h + h.T
    if not np.all(np.isfinite(v)) or (len(v) and np.linalg.eigvalsh(v).min() <= 0):
        return None
    return v


class GlmmResult:
    """A fitted GLMM.

    Attributes
    ----------
    model : memoe.glmm.model.GLMM
    nAGQ : int
    stage1, stage2 : StageResult
        The two optimisations (``stage2`` is None for ``nAGQ = 0``).
    convergence : ConvergenceReport
    hessian : numpy.ndarray or None, shape (ntheta + p, ntheta + p)
        Finite-difference Hessian of the stage-2 deviance at the optimum.
    is_singular : bool
    messages : list of str
    state : PirlsState
        PIRLS at the estimates (conditional modes, mu, working weights, log det(L L')).
    """

    def __init__(self, model, nAGQ, theta, beta, u_start, stage1, stage2, convergence, hessian, singular, messages):
        self.model = model
        self.design = model.design
        self.family = model.family
        self.nAGQ = int(nAGQ)
        self.stage1, self.stage2 = stage1, stage2
        self.opt = stage2.opt if stage2 is not None else (stage1.opt if stage1 is not None else None)
        self.convergence = convergence
        self.hessian = hessian
        self.is_singular = bool(singular)
        self.messages = list(messages)
        self._theta = np.asarray(theta, dtype=float).copy()
        self._beta = np.asarray(beta, dtype=float).copy()
        problem = model.problem
        if self.nAGQ == 0:
            # beta is part of the conditional modes here (lme4's nAGQ = 0)
            self.state: PirlsState = problem.solve(self._theta, beta=None)
            self._beta = self.state.beta.copy()
        else:
            self.state = problem.solve(self._theta, beta=self._beta, u0=u_start)
        if not self.state.converged:
            self.messages.append(
                f"PIRLS did not converge at the estimates ({self.state.iterations} iterations): "
                "the conditional modes and the deviance are approximate"
            )
        if hessian is not None and self.vcov_hessian is None:
            self.messages.append(
                "variance-covariance matrix computed from finite-difference Hessian is not positive definite "
                "or contains NA values: falling back to var-cov estimated from RX"
            )
        if self.nAGQ > 1:
            self._criterion = agq_deviance(problem, self.state, self._theta, self.nAGQ)
        else:
            self._criterion = laplace_deviance(problem, self.state)

    # ------------------------------------------------------------------ parameters
    @property
    def method(self) -> str:
        if self.nAGQ == 0:
            return "nAGQ=0"
        return "Laplace" if self.nAGQ == 1 else f"AGQ({self.nAGQ})"

    @property
    def converged(self) -> bool:
        return self.convergence.converged

    @property
    def reml(self) -> bool:
        """Always False: GLMMs are fitted by maximum likelihood (lets ``memoe.compare`` run LRTs)."""
        return False

    @cached_property
    def fixef(self) -> pd.Series:
        """Fixed effects, indexed by R's coefficient names."""
        return pd.Series(self._beta.copy(), index=self.design.fixef_names, name="Estimate")

    @property
    def params(self) -> pd.Series:
        return self.fixef

    @cached_property
    def theta(self) -> pd.Series:
        """Relative covariance factor entries (lme4's order and names); sigma = 1 for these families."""
        return pd.Series(self._theta.copy(), index=self.design.theta_map.names, name="theta")

    @cached_property
    def vcov_rx(self) -> pd.DataFrame:
        """``(R_X' R_X)^-1`` from the weighted PLS factor at the estimates, conditional on theta.

        lme4's ``vcov(fit, use.hessian = FALSE)``.
        """
        st, problem = self.state, self.model.problem
        z = st.eta - problem.offset + (problem.y - st.mu) / problem.family.mu_eta(st.eta)
        sol = problem.wls_problem(st.w, z, with_beta=True).solve(self._theta, reml=False)
        names = self.design.fixef_names
        return pd.DataFrame(sol.vcov_unscaled, index=names, columns=names)

    @cached_property
    def vcov_hessian(self) -> pd.DataFrame | None:
        """Beta block of ``2 H^-1`` (H the finite-difference Hessian of the deviance in (theta, beta)).

        ``None`` when the Hessian was not computed or is not positive definite.
        """
        v = vcov_from_hessian(self.hessian, self.design.theta_map.size)
        if v is None:
            return None
        names = self.design.fixef_names
        return pd.DataFrame(v, index=names, columns=names)

    @property
    def vcov(self) -> pd.DataFrame:
        """lme4's default covariance of the fixed effects for GLMMs: :attr:`vcov_hessian`,
        or :attr:`vcov_rx` when the Hessian is unavailable or not positive definite (as lme4)."""
        vh = self.vcov_hessian
        return self.vcov_rx if vh is None else vh

    @property
    def vcov_source(self) -> str:
        """``"hessian"`` or ``"RX"``: which covariance :attr:`vcov` is."""
        return "RX" if self.vcov_hessian is None else "hessian"

    @cached_property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.design.fixef_names, name="Std. Error")

    def relative_factors(self) -> list[np.ndarray]:
        return self.design.theta_map.lambdas(self._theta)

    def term_covariances(self) -> list[np.ndarray]:
        """Covariance matrix of each lme4 random-effects term (sigma = 1)."""
        lambdas = self.relative_factors()
        return [
            lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q]
            @ lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q].T
            for t in self.design.terms
        ]

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))``: columns ``grp, var1, var2, vcov, sdcor`` (no residual)."""
        rows = []
        for t, cov in zip(self.design.terms, self.term_covariances(), strict=True):
            sd = np.sqrt(np.diag(cov))
            for i, ci in enumerate(t.columns):
                rows.append((t.name, ci, None, cov[i, i], sd[i]))
            for j in range(t.q):
                for i in range(j + 1, t.q):
                    den = sd[i] * sd[j]
                    rows.append((t.name, t.columns[j], t.columns[i], cov[i, j], cov[i, j] / den if den > 0 else np.nan))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    # ------------------------------------------------------------------ fit statistics
    @property
    def criterion(self) -> float:
        """The minimised objective: Laplace (with normalising constants) or AGQ deviance = -2 logLik."""
        return self._criterion

    @property
    def loglik(self) -> float:
        """lme4's ``logLik``. For ``nAGQ > 1`` it omits the family's normalising constants, as lme4."""
        return -0.5 * self._criterion

    @property
    def deviance(self) -> float:
        """lme4's ``deviance(fit)`` for GLMMs: the sum of the squared conditional deviance residuals.

        Not -2 logLik (that is :attr:`criterion`, shown as 'deviance' in :meth:`summary` as lme4 does).
        """
        return float(self.state.dev_resid.sum())

    @property
    def df_model(self) -> int:
        return self.design.p + self.design.theta_map.size

    @property
    def aic(self) -> float:
        return self._criterion + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        return self._criterion + math.log(self.nobs) * self.df_model

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def df_resid(self) -> int:
        return self.nobs - self.df_model

    @property
    def n_dropped(self) -> int:
        return self.design.frame.n_dropped

    @property
    def ngroups(self) -> pd.Series:
        return pd.Series({b.factor.name: b.nlevels for b in self.design.blocks}, name="ngroups")

    # ------------------------------------------------------------------ random effects
    def _per_block_frame(self, arrays: list[np.ndarray]) -> dict[str, pd.DataFrame]:
        return {
            blk.factor.name: pd.DataFrame(
                arr, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
            )
            for blk, arr in zip(self.design.blocks, arrays, strict=True)
        }

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes per grouping factor: DataFrame levels x terms."""
        problem = self.model.problem
        b = [uk @ lam.T for uk, lam in zip(problem.split_u(self.state.u), self.relative_factors(), strict=True)]
        return self._per_block_frame(b)

    @cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariances ``Lambda (L L')^-1 Lambda'`` per level (lme4's ``condVar``)."""
        st, problem = self.state, self.model.problem
        z = st.eta - problem.offset - problem.X @ self._beta + (problem.y - st.mu) / problem.family.mu_eta(st.eta)
        pls = problem.wls_problem(st.w, z, with_beta=False)
        sol = dataclasses.replace(pls.solve(self._theta, reml=False), sigma=1.0)
        cv = pls.conditional_variances(sol)
        return {blk.factor.name: v for blk, v in zip(self.design.blocks, cv, strict=True)}

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        arrays = [np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in self.ranef_condvar.values()]
        return self._per_block_frame(arrays)

    # ------------------------------------------------------------------ per-row values
    def _align(self, values: np.ndarray, name: str) -> pd.Series:
        return self.design.frame.align(values, name)

    @property
    def fitted(self) -> pd.Series:
        """Conditional means on the response scale (proportions for binomial), NaN for dropped rows."""
        return self._align(self.state.mu, "fitted")

    @property
    def linear_predictor(self) -> pd.Series:
        return self._align(self.state.eta, "eta")

    def residuals(self, type: str = "deviance") -> pd.Series:
        """Residuals as lme4's ``residuals(fit, type)``: deviance (default), pearson, response, working."""
        problem, st = self.model.problem, self.state
        y, mu, wt = problem.y, st.mu, problem.wt
        if type == "deviance":
            r = np.sign(y - mu) * np.sqrt(np.maximum(st.dev_resid, 0.0))
        elif type == "pearson":
            r = (y - mu) * np.sqrt(wt) / np.sqrt(self.family.variance(mu))
        elif type == "response":
            r = y - mu
        elif type == "working":
            r = (y - mu) / self.family.mu_eta(st.eta)
        else:
            from memoe.errors import MemoeError

            raise MemoeError(f"unknown residual type {type!r}; use deviance, pearson, response or working")
        return self._align(r, f"resid_{type}")

    @property
    def resid(self) -> pd.Series:
        """Deviance residuals (lme4's default for GLMMs), aligned to the input rows."""
        return self.residuals("deviance")

    # ------------------------------------------------------------------ tables
    def coef_table(self) -> pd.DataFrame:
        """Wald z table: Estimate, Std. Error, z value, Pr(>|z|) (lme4's ``summary`` coefficients)."""
        est, se = self.fixef, self.bse
        z = est / se
        p = 2.0 * stats.norm.sf(np.abs(z.to_numpy()))
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "z value": z, "Pr(>|z|)": p}, index=est.index)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        offset=None,
    ) -> pd.Series:
        """Predictions on the response (default) or link scale; see :func:`memoe.glmm.predict.predict_glmm`.

        Grouping ids are matched by value; a level not seen in the fit raises unless
        ``allow_new_levels=True`` (then its random effects are 0, as lme4).
        """
        from memoe.glmm.predict import predict_glmm

        return predict_glmm(
            self, newdata, re_form=re_form, type=type, allow_new_levels=allow_new_levels, offset=offset
        )

    def summary(self):
        """lme4-style ``summary(glmerMod)``; ``print(fit.summary())``."""
        from memoe.glmm.summary import GlmmSummary

        return GlmmSummary(self)

    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle); see :func:`memoe.persist.save`.

        ``memoe.persist.load(path)`` gives it back with the same numbers.
        """
        from memoe.persist import save

        save(self, path)

    def __repr__(self) -> str:
        return (
            f"<GlmmResult {self.family} {self.method}: logLik={self.loglik:.4f}, "
            f"fixef={dict(self.fixef.round(4))}, theta={dict(self.theta.round(4))}>"
        )

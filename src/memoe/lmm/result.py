"""The frozen result of a linear mixed model fit; every extractor reads from it."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.optim import OptSummary
from memoe.core.optim.checks import ConvergenceReport
from memoe.core.vcov import VcovFrame

__all__ = ["LmmResult"]


class LmmResult:
    """A fitted linear mixed model (lme4's ``merMod``).

    Attributes
    ----------
    model : memoe.lmm.LMM
    reml : bool
    opt : OptSummary
    convergence : ConvergenceReport
    is_singular : bool
    messages : list of str
        Convergence and boundary messages, as lme4 stores them.
    """

    def __init__(
        self,
        model,
        reml: bool,
        theta: np.ndarray,
        opt: OptSummary,
        convergence: ConvergenceReport,
        singular: bool,
        messages: list[str],
    ) -> None:
        self.model = model
        self.design = model.design
        self.reml = bool(reml)
        self.opt = opt
        self.convergence = convergence
        self.is_singular = bool(singular)
        self.messages = list(messages)
        self._theta = np.asarray(theta, dtype=float)
        self._solution = model.problem.solve(self._theta, self.reml)

    # ------------------------------------------------------------------ parameters
    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def converged(self) -> bool:
        return self.convergence.converged

    @cached_property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates, indexed by R's coefficient names."""
        return pd.Series(self._solution.beta, index=self.design.fixef_names, name="Estimate")

    @property
    def params(self) -> pd.Series:
        """Alias of :attr:`fixef` (statsmodels' name)."""
        return self.fixef

    @cached_property
    def sigma(self) -> float:
        """Residual standard deviation."""
        return self._solution.sigma

    @cached_property
    def theta(self) -> pd.Series:
        """Relative covariance factor entries in lme4's order and names."""
        return pd.Series(self._theta.copy(), index=self.design.theta_map.names, name="theta")

    @cached_property
    def vcov(self) -> VcovFrame:
        """Covariance of the fixed effects, ``sigma^2 (R_X' R_X)^-1``; call it for robust versions."""
        names = self.design.fixef_names
        v = self.sigma**2 * self._solution.vcov_unscaled
        frame = pd.DataFrame(v, index=names, columns=names)
        return VcovFrame.wrap(frame, self._robust_vcov)

    def _robust_vcov(self, robust: str | None = None, **kwargs) -> pd.DataFrame:
        from memoe.inference.sandwich import vcov_cr

        return vcov_cr(self, robust or "CR2", **kwargs)

    @cached_property
    def bse(self) -> pd.Series:
        """Standard errors of the fixed effects."""
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.design.fixef_names, name="Std. Error")

    def relative_factors(self) -> list[np.ndarray]:
        """lambda of each factor block (relative covariance factors)."""
        return self.design.theta_map.lambdas(self._theta)

    def term_covariances(self) -> list[np.ndarray]:
        """Covariance matrix of each lme4 random-effects term (natural scale)."""
        lambdas = self.relative_factors()
        out = []
        for t in self.design.terms:
            lam = lambdas[t.block][t.offset : t.offset + t.q, t.offset : t.offset + t.q]
            out.append(self.sigma**2 * lam @ lam.T)
        return out

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components as lme4's ``as.data.frame(VarCorr(fit))``.

        Columns ``grp, var1, var2, vcov, sdcor``: variances and standard deviations on the rows with
        ``var2`` empty, covariances and correlations on the others, the residual last.
        """
        rows = []
        for t, cov in zip(self.design.terms, self.term_covariances(), strict=True):
            sd = np.sqrt(np.diag(cov))
            for i, ci in enumerate(t.columns):
                rows.append((t.name, ci, None, cov[i, i], sd[i]))
            for j in range(t.q):
                for i in range(j + 1, t.q):
                    denom = sd[i] * sd[j]
                    corr = cov[i, j] / denom if denom > 0 else np.nan
                    rows.append((t.name, t.columns[j], t.columns[i], cov[i, j], corr))
        rows.append(("Residual", None, None, self.sigma**2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    # ------------------------------------------------------------------ fit statistics
    @cached_property
    def loglik(self) -> float:
        """Log-likelihood (the REML log-likelihood for REML fits, as lme4's ``logLik``)."""
        return -0.5 * self._solution.deviance

    @property
    def deviance(self) -> float:
        """-2 log-likelihood for ML fits; the REML criterion for REML fits (the objective minimised)."""
        return self._solution.deviance

    @property
    def reml_criterion(self) -> float | None:
        """lme4's ``REMLcrit``; ``None`` for ML fits."""
        return self._solution.deviance if self.reml else None

    @property
    def df_model(self) -> int:
        """Number of parameters: fixed effects + theta + residual variance."""
        return self.design.p + self.design.theta_map.size + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        """BIC with log(nobs), as lme4 (also for REML fits)."""
        return -2.0 * self.loglik + math.log(self.nobs) * self.df_model

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        """Rows removed for missing values."""
        return self.design.frame.n_dropped

    @property
    def ngroups(self) -> pd.Series:
        """Number of levels per grouping factor (lme4's ``ngrps``)."""
        return pd.Series({b.factor.name: b.nlevels for b in self.design.blocks}, name="ngroups")

    @property
    def df_resid(self) -> int:
        return self.nobs - self.df_model

    # ------------------------------------------------------------------ random effects
    def _per_block_frame(self, arrays: list[np.ndarray]) -> dict[str, pd.DataFrame]:
        out = {}
        for blk, arr in zip(self.design.blocks, arrays, strict=True):
            out[blk.factor.name] = pd.DataFrame(
                arr, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
            )
        return out

    @cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """BLUPs (conditional modes) per grouping factor: DataFrame levels x terms."""
        return self._per_block_frame(self._solution.b)

    @cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariance matrices of the random effects, arrays (levels, q, q) per factor."""
        cv = self.model.problem.conditional_variances(self._solution)
        return {blk.factor.name: v for blk, v in zip(self.design.blocks, cv, strict=True)}

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the BLUPs (lme4's ``condVar``), same layout as ``ranef``."""
        arrays = [np.sqrt(np.diagonal(v, axis1=1, axis2=2)) for v in self.ranef_condvar.values()]
        return self._per_block_frame(arrays)

    # ------------------------------------------------------------------ per-row values
    def _align(self, values: np.ndarray, name: str) -> pd.Series:
        return self.design.frame.align(values, name)

    @cached_property
    def _fitted_values(self) -> np.ndarray:
        d = self.design
        eta = d.X @ self._solution.beta if d.p else np.zeros(d.n)
        for blk, b in zip(d.blocks, self._solution.b, strict=True):
            # column by column: n-vector temporaries instead of an (n, q) gather of b
            for a in range(blk.q):
                eta += blk.Z[:, a] * b[blk.factor.codes, a]
        return eta

    @property
    def fitted(self) -> pd.Series:
        """Conditional fitted values ``X beta + Z b`` aligned to the input rows (NaN where dropped)."""
        return self._align(self._fitted_values, "fitted")

    @property
    def fittedvalues(self) -> pd.Series:
        return self.fitted

    @property
    def resid(self) -> pd.Series:
        """Conditional response residuals aligned to the input rows (NaN where dropped)."""
        return self._align(self.design.y - self._fitted_values, "resid")

    @property
    def residuals(self) -> pd.Series:
        return self.resid

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
    ) -> pd.Series:
        """Predictions: with the random effects (``re_form="full"``) or population-level (``None`` / ``"~0"``).

        Grouping ids are matched by value; a level not seen in the fit raises unless
        ``allow_new_levels=True`` (then its random effects are 0, as lme4). See
        :func:`memoe.lmm.predict.predict_lmm`.
        """
        from memoe.lmm.predict import predict_lmm

        return predict_lmm(self, newdata, re_form=re_form, type=type, allow_new_levels=allow_new_levels)

    # ------------------------------------------------------------------ tables
    def coef_table(self, ddf: str = "residual", robust: str | None = None) -> pd.DataFrame:
        """Fixed-effects table: Estimate, Std. Error, df, t value, p value.

        ``ddf`` in {"residual", "containment", "satterthwaite", "kenward-roger", "asymptotic"}.
        """
        from memoe.inference import coef_table

        return coef_table(self, ddf=ddf, robust=robust)

    def test(self, hypothesis, ddf: str = "satterthwaite", robust: str | None = None):
        """F test of ``L beta = 0`` from a string (``"Days = 0"``) or a contrast matrix."""
        from memoe.inference import test

        return test(self, hypothesis, ddf=ddf, robust=robust)

    def anova(self, ddf: str = "satterthwaite", type: int = 3) -> pd.DataFrame:
        """F tests of the fixed-effects terms as lmerTest's ``anova``."""
        from memoe.inference import anova

        return anova(self, ddf=ddf, type=type)

    def information_criteria(self) -> pd.Series:
        """AIC, AICc, BIC, HQIC and CAIC with the N convention stated."""
        from memoe.inference import information_criteria

        return information_criteria(self)

    def confint(self, method: str = "wald", level: float = 0.95, **kwargs) -> pd.DataFrame:
        """Confidence intervals: ``method`` in {"wald", "profile", "bootstrap"}."""
        from memoe.inference import confint

        return confint(self, method=method, level=level, **kwargs)

    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle); see :func:`memoe.persist.save`.

        ``memoe.persist.load(path)`` gives it back with the same numbers.
        """
        from memoe.persist import save

        save(self, path)

    def summary(self):
        """lme4-style summary; ``print(fit.summary())``."""
        from memoe.lmm.summary import LmmSummary

        return LmmSummary(self)

    def __repr__(self) -> str:
        return (
            f"<LmmResult {self.method} {self.model.formula!r} nobs={self.nobs} "
            f"loglik={self.loglik:.4f} singular={self.is_singular}>"
        )

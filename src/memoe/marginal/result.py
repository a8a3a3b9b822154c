"""The frozen result of a ``gls`` / ``lme`` fit with residual structures (nlme's ``gls`` / ``lme`` objects)."""

from __future__ import annotations

import math
from functools import cached_property
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from memoe.marginal.problem import MarginalSolution

__all__ = ["MarginalResult"]


class MarginalResult:
    """A fitted ``gls`` or ``lme`` model with residual correlation / variance structures.

    Attributes
    ----------
    model : GLS or LME
    design : memoe.core.design.Design
    reml : bool
    feval : int
        Objective evaluations.
    seconds : float
        Fit time.
    messages : list of str
    """

    def __init__(
        self, model, solution: MarginalSolution, reml: bool, feval: int, seconds: float, messages: list[str]
    ) -> None:
        self.model = model
        self.design = model.design
        self.reml = bool(reml)
        self.feval = int(feval)
        self.seconds = float(seconds)
        self.messages = list(messages)
        self._s = solution

    # ------------------------------------------------------------------ parameters
    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def converged(self) -> bool:
        return not self.messages

    @property
    def params_unconstrained(self) -> np.ndarray:
        """The optimised vector [theta, correlation u, variance u]."""
        return self._s.params.copy()

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self._s.beta, index=self.design.fixef_names, name="fixef")

    @property
    def sigma(self) -> float:
        """Residual SD (of the reference stratum when there is a variance function)."""
        return self._s.sigma

    @cached_property
    def vcov(self) -> pd.DataFrame:
        """sigma^2 (X' W^{-1} X)^{-1}, as nlme's ``vcov``.

        nlme's ``gls`` scales by the residual variance with N - p in the denominator even for ML fits
        (``varBeta`` is computed from the REML-type estimate; the printed sigma is the ML one), so
        ML ``gls`` standard errors are sqrt(N / (N - p)) times the plug-in ones. ``lme`` ML fits use
        the ML sigma.
        """
        names = self.design.fixef_names
        s2 = self.sigma**2
        if self.kind == "gls" and not self.reml:
            s2 *= self.nobs / (self.nobs - self.design.p)
        return pd.DataFrame(s2 * self._s.vcov_unscaled, index=names, columns=names)

    @property
    def vcov_tests(self) -> np.ndarray:
        """The covariance nlme's t tables and F tests use (p, p).

        ``vcov`` except for ``lme`` ML fits, where nlme's ``summary`` and ``anova`` inflate it by
        N / (N - p) (``vcov(fit)`` itself is not inflated; ``gls`` ML has the factor in ``vcov``).
        """
        V = self.vcov.to_numpy()
        if self.kind == "lme" and not self.reml:
            return V * (self.nobs / (self.nobs - self.design.p))
        return V

    def vcov_robust(self, type: str = "CR2") -> pd.DataFrame:
        """Cluster-robust covariance (clubSandwich's ``vcovCR``; clusters = the structure's groups)."""
        from memoe.marginal.sandwich import vcov_cr

        return vcov_cr(self, type=type)

    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.design.fixef_names, name="Std.Error")

    @property
    def theta(self) -> pd.Series:
        """lme4's theta (relative Cholesky factor of the random-effects covariance, column-wise)."""
        P = self.model.problem
        theta, _, _ = P.split(self._s.params)
        return pd.Series(theta, index=self.design.theta_map.names, dtype=float)

    @cached_property
    def cor_params(self) -> pd.Series:
        """Correlation parameters on nlme's natural scale (``Phi``, ``range``/``nugget``, ``cor(i,j)``, ``Rho``)."""
        P = self.model.problem
        if P.cor is None:
            return pd.Series(dtype=float)
        _, u, _ = P.split(self._s.params)
        return P.cor.natural(u)

    @cached_property
    def var_params(self) -> pd.Series:
        """SD ratios per stratum (reference stratum 1), as nlme's ``coef(varStruct, unconstrained = FALSE)``."""
        P = self.model.problem
        if P.var is None:
            return pd.Series(dtype=float)
        _, _, v = P.split(self._s.params)
        return P.var.natural(v)

    @cached_property
    def ranef_cov(self) -> pd.DataFrame:
        """Covariance of the random effects, sigma^2 D (nlme's Psi)."""
        cols = list(self.design.blocks[0].columns) if self.design.blocks else []
        return pd.DataFrame(self.sigma**2 * self._s.D, index=cols, columns=cols)

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components in the layout of lme4's ``as.data.frame(VarCorr(fit))``.

        Columns ``grp, var1, var2, vcov, sdcor``; the residual row last (its SD is sigma).
        """
        rows = []
        if self.design.blocks:
            grp = self.design.blocks[0].factor.name
            cov = self.ranef_cov.to_numpy()
            cols = list(self.ranef_cov.columns)
            sd = np.sqrt(np.diag(cov))
            for i, c in enumerate(cols):
                rows.append((grp, c, None, cov[i, i], sd[i]))
            for j in range(len(cols)):
                for i in range(j + 1, len(cols)):
                    denom = sd[i] * sd[j]
                    rows.append((grp, cols[j], cols[i], cov[i, j], cov[i, j] / denom if denom > 0 else np.nan))
        rows.append(("Residual", None, None, self.sigma**2, self.sigma))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    @cached_property
    def ranef(self) -> pd.DataFrame:
        """BLUPs D Z_i' W_i^{-1} (y_i - X_i beta): DataFrame levels x terms (empty for ``gls``)."""
        if not self.design.blocks:
            return pd.DataFrame()
        blk = self.design.blocks[0]
        return pd.DataFrame(
            self._s.b, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
        )

    def _group_block(self, group, what: str) -> np.ndarray:
        """The (n_i, n_i) matrix ``what`` ("cor" or "cov") of one group of the residual structure."""
        lay = self.model.layout
        labels = [str(v) for v in lay.levels]
        if str(group) not in labels:
            raise KeyError(f"group {group!r} is not a level of {lay.name!r}")
        code = labels.index(str(group))
        P = self.model.problem
        params = self._s.params
        for k, bucket in enumerate(lay.buckets):
            hit = np.flatnonzero(bucket.groups == code)
            if hit.size:
                g = int(hit[0])
                if what == "cov":
                    return self.sigma**2 * P.covariances(params)[k][g]
                if P.cor is None:
                    return np.eye(bucket.n)
                _, u, _ = P.split(params)
                C = P.cor.blocks(u)[k]
                return np.array(np.broadcast_to(C, (bucket.size, bucket.n, bucket.n))[g])
        raise KeyError(group)  # pragma: no cover - every level has a bucket

    def residual_correlation(self, group) -> np.ndarray:
        """Within-group residual correlation matrix C_i of ``group`` (nlme's ``corMatrix``), rows in visit order."""
        return self._group_block(group, "cor")

    def marginal_covariance(self, group) -> np.ndarray:
        """sigma^2 (Z_i D Z_i' + S_i C_i S_i) of ``group`` (nlme's ``getVarCov(type = "marginal")``)."""
        return self._group_block(group, "cov")

    # ------------------------------------------------------------------ fit statistics
    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        return self.design.frame.n_dropped

    @property
    def ngroups(self) -> int:
        return self.model.layout.ngroups

    @property
    def df_model(self) -> int:
        """Number of estimated parameters: fixed effects, theta, correlation, variance, sigma."""
        return self.design.p + self.model.problem.size + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML log-likelihood for REML fits, with nlme's constants)."""
        return -0.5 * self._s.deviance

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        """nlme's BIC: log(N - p) for REML fits, log(N) for ML fits."""
        n_eff = self.nobs - self.design.p if self.reml else self.nobs
        return -2.0 * self.loglik + math.log(n_eff) * self.df_model

    # ------------------------------------------------------------------ per-row values
    def _align(self, values: np.ndarray, name: str) -> pd.Series:
        return self.design.frame.align(values, name)

    @property
    def fitted(self) -> pd.Series:
        """Fitted values: conditional on the BLUPs for ``lme`` (nlme's innermost level), X beta for ``gls``."""
        return self._align(self._s.fitted_conditional, "fitted")

    @property
    def resid(self) -> pd.Series:
        return self._align(self.design.y - self._s.fitted_conditional, "resid")

    @property
    def fitted_marginal(self) -> pd.Series:
        """Population-level fitted values X beta (nlme's level 0)."""
        return self._align(self._s.fitted_marginal, "fitted_marginal")

    @property
    def resid_marginal(self) -> pd.Series:
        return self._align(self.design.y - self._s.fitted_marginal, "resid_marginal")

    @property
    def resid_pearson(self) -> pd.Series:
        """Residuals divided by their SD sigma * s (nlme's ``type = "pearson"``)."""
        r = self.design.y - self._s.fitted_conditional
        return self._align(r / (self.sigma * self._s.ratios), "resid_pearson")

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        level: int | None = None,
    ) -> pd.Series:
        """Predicted means, as nlme's ``predict(fit, newdata, level = ...)`` with lme4's arguments.

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Rows to predict; ``None`` gives the fitted values of that level. Grouping ids and factor
            levels are matched by value (``308``, ``308.0`` and ``"308"`` are one level).
        re_form : {"full", None, "~0"} or str
            ``lme``: ``"full"`` is ``X beta + Z b`` with the BLUPs (nlme's ``level = 1``), ``None`` /
            ``"~0"`` is ``X beta`` (``level = 0``), a formula of some of the fit's random-effects
            terms uses only those. ``gls`` has no random effects: every accepted value gives ``X beta``.
            The residual correlation does not enter (as in nlme).
        type : {"response", "link"}
            The same (identity link).
        allow_new_levels : bool
            ``False``: a group not in the fit raises
            :class:`~memoe.core.design.newdata.NewLevelError`; ``True``: it gets ``X beta``.
        level : {0, 1}, optional
            nlme's name: ``0`` is ``re_form=None``, ``1`` is ``re_form="full"``; give one of the two.

        Returns
        -------
        pandas.Series
            Indexed like ``newdata``; NaN where a needed value is missing or infinite (with a warning).
        """
        from memoe.core.design.newdata import (
            PredictArgumentError,
            check_allow_new_levels,
            check_type,
            nonfinite_rows,
            parse_re_form,
            re_columns,
            require_dataframe,
            warn_nonfinite,
        )
        from memoe.lmm.predict import random_part

        if level is not None:
            if isinstance(level, bool) or level not in (0, 1):
                raise PredictArgumentError(f"level must be 0 (population) or 1 (with the BLUPs), got {level!r}")
            if re_form != "full":
                raise PredictArgumentError("give either level= (nlme's name) or re_form=, not both")
            re_form = None if level == 0 else "full"
        rf = parse_re_form(re_form)
        check_type(type)
        allow = check_allow_new_levels(allow_new_levels)
        d = self.design
        masks = re_columns(rf, d)
        b = [self._s.b] if d.blocks else []
        use_re = any(m.any() for m in masks)
        if newdata is None:
            if rf == "full":
                return self.fitted.rename("predicted")
            eta = np.array(self._s.fitted_marginal, dtype=float)
            if use_re:
                eta = eta + random_part(d.blocks, b, masks, None, allow)[0]
            return self._align(eta, "predicted")
        require_dataframe(newdata)
        X = d.fixed.matrix_for(newdata)
        eta = X @ self._s.beta if X.shape[1] else np.zeros(len(newdata))
        bad = nonfinite_rows(X)
        if use_re:
            contrib, bad_z = random_part(d.blocks, b, masks, newdata, allow)
            eta = eta + contrib
            bad = bad | bad_z
        return pd.Series(warn_nonfinite(eta, bad), index=newdata.index, name="predicted")

    # ------------------------------------------------------------------ tables
    @cached_property
    def df_coef(self) -> np.ndarray:
        """Denominator df per coefficient: N - p for ``gls``, nlme's containment df for ``lme``."""
        if not self.design.blocks:
            return np.full(self.design.p, float(self.nobs - self.design.p))
        from memoe.inference.containment import containment_df
        from memoe.inference.terms import fixed_terms

        shim = SimpleNamespace(design=self.design)
        return containment_df(shim, fixed_terms(shim)).coef

    def coef_table(self, ddf: str = "nlme") -> pd.DataFrame:
        """Estimate, Std.Error, df, t-value, p-value (two-sided t).

        Parameters
        ----------
        ddf : {"nlme", "satterthwaite", "asymptotic"}
            ``"nlme"`` (default): nlme's ``summary(fit)$tTable``: df N - p for ``gls`` and nlme's
            containment df for ``lme``; for ``lme`` ML fits the SEs carry nlme's sqrt(N / (N - p)).
            ``"satterthwaite"``: SEs from sigma^2 (X' W^-1 X)^-1 and Satterthwaite df, as lmerTest and
            R's mmrm (:mod:`memoe.marginal.satterthwaite`). ``"asymptotic"``: the same SEs, normal
            reference (df shown as inf).
        """
        est = self.fixef.to_numpy()
        if ddf == "nlme":
            se = np.sqrt(np.diag(self.vcov_tests))
            df = np.asarray(self.df_coef, dtype=float)
        elif ddf in ("satterthwaite", "asymptotic"):
            inputs = self._satterthwaite
            se = np.sqrt(np.diag(inputs.C))
            if ddf == "satterthwaite":
                from memoe.marginal.satterthwaite import satterthwaite_df

                df = satterthwaite_df(inputs, np.eye(len(est)))
            else:
                df = np.full(len(est), np.inf)
        else:
            raise ValueError(f"ddf must be 'nlme', 'satterthwaite' or 'asymptotic', got {ddf!r}")
        t = est / se
        p = 2.0 * stats.t.sf(np.abs(t), df)
        return pd.DataFrame(
            {"Estimate": est, "Std.Error": se, "df": df, "t-value": t, "p-value": p}, index=self.design.fixef_names
        )

    @cached_property
    def _satterthwaite(self):
        from memoe.marginal.satterthwaite import satterthwaite_inputs

        return satterthwaite_inputs(self)

    def test(self, hypothesis, ddf: str = "satterthwaite") -> pd.DataFrame:
        """F test of ``L beta = rhs`` with Satterthwaite denominator df (lmerTest's ``contestMD``).

        Parameters
        ----------
        hypothesis : str, array-like, pandas Series / DataFrame, dict or ``(L, rhs)``
            As :meth:`memoe.results.LmmResult.test`: ``"SexFemale = 0, age:SexFemale = 0"`` or a
            contrast matrix with one column per coefficient.
        ddf : {"satterthwaite", "asymptotic"}
        """
        from memoe.inference.contrasts import as_hypothesis, reduce_rank
        from memoe.marginal.satterthwaite import satterthwaite_f

        if ddf not in ("satterthwaite", "asymptotic"):
            raise ValueError(f"ddf must be 'satterthwaite' or 'asymptotic', got {ddf!r}")
        names = list(self.design.fixef_names)
        hyp = as_hypothesis(hypothesis, names)
        L, rhs = reduce_rank(hyp)
        beta = self.fixef.to_numpy()
        # L beta = rhs  <=>  L (beta - b0) = 0 for any b0 with L b0 = rhs
        b0 = np.linalg.lstsq(L, rhs, rcond=None)[0]
        fstat, q, den = satterthwaite_f(self._satterthwaite, L, beta - b0)
        if ddf == "asymptotic":
            den = np.inf
        p = float(stats.chi2.sf(q * fstat, q)) if not np.isfinite(den) else float(stats.f.sf(fstat, q, den))
        return pd.DataFrame(
            {"F value": [fstat], "NumDF": [q], "DenDF": [den], "Pr(>F)": [p]}, index=pd.Index([hyp.label])
        )

    def anova(self, type: str = "sequential") -> pd.DataFrame:
        """F tests by term as nlme's ``anova(fit, type = ...)`` (``"sequential"`` or ``"marginal"``)."""
        from memoe.marginal.anova import anova_table

        return anova_table(self, type=type)

    def intervals(self, level: float = 0.95) -> pd.DataFrame:
        """Approximate confidence intervals of all parameters, as nlme's ``intervals(fit, which = "all")``."""
        from memoe.marginal.intervals import intervals

        return intervals(self, level=level)

    def summary(self):
        """nlme's ``print(summary(fit))`` layout (an object whose ``str`` is the text)."""
        from memoe.marginal.summary import MarginalSummary

        return MarginalSummary(self)

    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle); see :func:`memoe.persist.save`.

        ``memoe.persist.load(path)`` gives it back with the same numbers.
        """
        from memoe.persist import save

        save(self, path)

    def __repr__(self) -> str:
        return (
            f"<MarginalResult {self.kind} {self.method}: {self.model.formula!r}, loglik={self.loglik:.4f}, "
            f"nobs={self.nobs}>"
        )

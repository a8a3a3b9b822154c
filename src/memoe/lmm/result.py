"""The frozen result of a linear mixed model fit; every extractor reads from it."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from memoe.core.covariance import term_covariances
from memoe.core.optim import OptSummary
from memoe.core.optim.checks import ConvergenceReport
from memoe.core.result import FitResult
from memoe.core.state import LmmState, frozen_array
from memoe.inference.anova import anova
from memoe.inference.confint import confint
from memoe.inference.hypothesis import test
from memoe.inference.sandwich import vcov_cr
from memoe.inference.tables import coef_table
from memoe.lmm.predict import predict_lmm
from memoe.lmm.summary import LmmSummary

__all__ = ["LmmResult", "ran_pars_frame"]


def ran_pars_frame(varcorr: pd.DataFrame) -> pd.DataFrame:
    """broom.mixed's variance-parameter rows from an lme4-style ``as.data.frame(VarCorr(fit))``.

    Standard deviations are ``sd__<column>``, correlations ``cor__<column1>.<column2>``, the group is
    lme4's VarCorr name (``Subject``, ``Subject.1`` for a repeated group); the residual row becomes
    ``sd__Observation`` in group ``Residual``.
    """
    rows = []
    for grp, var1, var2, sdcor in varcorr[["grp", "var1", "var2", "sdcor"]].itertuples(index=False):
        if grp == "Residual":
            rows.append(("Residual", "sd__Observation", sdcor))
        elif var2 is None or (isinstance(var2, float) and np.isnan(var2)):
            rows.append((grp, f"sd__{var1}", sdcor))
        else:
            rows.append((grp, f"cor__{var1}.{var2}", sdcor))
    return pd.DataFrame(rows, columns=["group", "term", "estimate"])


class LmmResult(FitResult):
    """A fitted linear mixed model (lme4's ``merMod``).

    The shared interface (``params``, ``bse``, ``vcov()``, ``confint()``, ``coef_table()``, ``tidy()``,
    ``glance()``, ``augment()``, ``residuals(type=)``, ``save()``) comes from
    :class:`~memoe.core.result.FitResult`; this class adds lme4's extractors (``fixef``, ``ranef``,
    ``ranef_condsd``, ``theta``, ``varcorr``, ``test``, ``anova``).

    Attributes
    ----------
    model : memoe.lmm.LMM
    state : LmmState
        The public fit state (theta, beta, sigma, the PLS solution) that inference reads.
    opt : OptSummary
    convergence : ConvergenceReport
    messages : list of str
        Convergence and boundary messages, as lme4 stores them.

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> fit.varcorr["sdcor"].round(2).tolist()
    [24.74, 5.92, 0.07, 25.59]
    >>> fit.ranef["Subject"].shape
    (18, 2)
    """

    family = "lmm"
    # the estimators of memoe.inference.sandwich (clubSandwich's vcovCR)
    robust_types = (None, "CR0", "CR1", "CR1S", "CR2", "CR3")
    residual_types = ("response", "pearson", "normalized", "marginal")
    confint_methods = ("wald", "profile", "bootstrap")

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
        self.opt = opt
        self.convergence = convergence
        self._singular = bool(singular)
        self.messages = list(messages)
        theta = frozen_array(theta)
        self.state = LmmState(theta=theta, reml=bool(reml), solution=model.problem.solve(theta, bool(reml)))

    # ------------------------------------------------------------------ parameters
    @property
    def reml(self) -> bool:
        return self.state.reml

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def converged(self) -> bool:
        return self.convergence.converged

    @property
    def singular(self) -> bool:
        """Boundary (singular) fit: a diagonal entry of a relative covariance factor is below 1e-4
        (lme4's ``isSingular``)."""
        return self._singular

    @cached_property
    def fixef(self) -> pd.Series:
        """Fixed-effects estimates, indexed by R's coefficient names."""
        return pd.Series(self.state.beta, index=self.design.fixef_names, name="estimate")

    @property
    def params(self) -> pd.Series:
        """The fixed effects (:attr:`fixef`)."""
        return self.fixef

    @property
    def sigma(self) -> float:
        """Residual standard deviation."""
        return self.state.sigma

    @cached_property
    def theta(self) -> pd.Series:
        """Relative covariance factor entries in lme4's order and names."""
        return pd.Series(np.array(self.state.theta), index=self.design.theta_map.names, name="theta")

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        """``sigma^2 (R_X' R_X)^-1`` (lme4's ``vcov``), or clubSandwich's cluster-robust ``vcovCR``."""
        if robust is not None:
            return vcov_cr(self, robust)
        names = self.design.fixef_names
        return pd.DataFrame(self.sigma**2 * self.state.vcov_unscaled, index=names, columns=names)

    def relative_factors(self) -> list[np.ndarray]:
        """lambda of each factor block (relative covariance factors)."""
        return self.design.theta_map.lambdas(self.state.theta)

    def term_covariances(self) -> list[np.ndarray]:
        """Covariance matrix of each lme4 random-effects term (natural scale)."""
        return term_covariances(self.design.terms, self.relative_factors(), self.sigma)

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

    @cached_property
    def varcomp(self):
        """Delta-method SEs of the SDs, correlations and sigma (:func:`memoe.inference.varcomp.lmm_varcomp`)."""
        from memoe.inference.varcomp import lmm_varcomp

        return lmm_varcomp(self)

    def _ran_pars(self) -> pd.DataFrame:
        """broom.mixed's variance parameters with SEs, Wald z and boundary-aware p-values
        (see :mod:`memoe.inference.varcomp`)."""
        from memoe.inference.varcomp import add_varcomp_inference

        return add_varcomp_inference(ran_pars_frame(self.varcorr), self.varcomp)

    def _ran_pars_confint(self, rp: pd.DataFrame, level: float) -> pd.DataFrame:
        """Log-SD / Fisher-z Wald intervals, the same as :meth:`confint` ``(method="wald")``."""
        from memoe.inference.varcomp import ran_pars_confint

        return ran_pars_confint(rp, level)

    def coef(self) -> dict[str, pd.DataFrame]:
        """Subject-specific coefficients, lme4's ``coef()``: {grouping factor: levels x fixed effects},
        the fixed effect plus the BLUP where the coefficient varies by the factor."""
        from memoe.inference.coefficients import subject_coefficients

        return subject_coefficients(self.fixef, self.ranef)

    def caic(self, method: str = "greven-kneib"):
        """Conditional AIC: ``-2`` conditional log-likelihood ``+ 2 (rho + 1)``.

        ``method="greven-kneib"`` (default): Greven & Kneib (2010) with the correction for the estimated
        covariance parameters, as R's ``cAIC4::cAIC``; ``"vaida-blanchard"``: the hat-matrix trace with the
        covariance parameters treated as known (Vaida & Blanchard 2005). Not the "CAIC" (consistent AIC)
        of :meth:`information_criteria`. See :mod:`memoe.inference.caic`.

        Returns
        -------
        memoe.inference.caic.ConditionalAIC
            ``caic``, ``loglik_conditional``, ``df``, ``rho``, ``trace_H``, ``correction``; ``.as_series()``.
        """
        from memoe.inference.caic import caic

        return caic(self, method=method)

    def icc(self, by_group: bool = False):
        """Adjusted and conditional ICC (Nakagawa et al. 2017; see
        :func:`memoe.inference.variance_decomposition.icc`)."""
        from memoe.inference.variance_decomposition import icc

        return icc(self, by_group=by_group)

    def r2(self) -> pd.Series:
        """Nakagawa-Schielzeth marginal and conditional R² (:func:`memoe.inference.variance_decomposition.r2`)."""
        from memoe.inference.variance_decomposition import r2

        return r2(self)

    # ------------------------------------------------------------------ fit statistics
    @property
    def loglik(self) -> float:
        """Log-likelihood (the REML log-likelihood for REML fits, as lme4's ``logLik``)."""
        return -0.5 * self.state.deviance

    @property
    def reml_criterion(self) -> float | None:
        """lme4's ``REMLcrit``; ``None`` for ML fits."""
        return self.state.deviance if self.reml else None

    @property
    def df_model(self) -> int:
        """Number of parameters: fixed effects + theta + residual variance."""
        return self.design.p + self.design.theta_map.size + 1

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
        return pd.Series({b.factor.name: b.nlevels for b in self.design.blocks}, name="ngroups", dtype=int)

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
        return self._per_block_frame(self.state.b)

    @cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariance matrices of the random effects, arrays (levels, q, q) per factor."""
        cv = self.model.problem.conditional_variances(self.state.solution)
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
    def _working_fitted(self) -> np.ndarray:
        """``X beta + Z b`` on the working rows (``sqrt(w)`` scaled, offset removed; see ``Design``)."""
        d = self.design
        eta = d.X @ self.state.beta if d.p else np.zeros(d.n)
        for blk, b in zip(d.blocks, self.state.b, strict=True):
            # column by column: n-vector temporaries instead of an (n, q) gather of b
            for a in range(blk.q):
                eta += blk.Z[:, a] * b[blk.factor.codes, a]
        return eta

    def _data_scale(self, working: np.ndarray) -> np.ndarray:
        """A working linear predictor back on the data's scale, with the offset (lme4's ``mu``)."""
        d = self.design
        eta = d.raw_rows(working)
        return eta if d.offset is None else eta + d.offset

    @cached_property
    def _fitted_values(self) -> np.ndarray:
        return self._data_scale(self._working_fitted)

    @property
    def fitted(self) -> pd.Series:
        """Conditional fitted values ``X beta + Z b`` (+ offset) aligned to the input rows (NaN where dropped)."""
        return self._align(self._fitted_values, "fitted")

    @property
    def fittedvalues(self) -> pd.Series:
        """statsmodels' name of :attr:`fitted`."""
        return self.fitted

    @property
    def resid(self) -> pd.Series:
        """Conditional response residuals ``y - mu`` aligned to the input rows (NaN where dropped);
        lme4's ``residuals(fit)`` (type ``"response"``, prior weights not applied)."""
        return self._align(self.design.response - self._fitted_values, "resid")

    def _residuals(self, kind: str) -> pd.Series:
        d = self.design
        if kind in ("pearson", "normalized"):
            # with independent residuals (R = sigma^2 / w) whitening is sqrt(w) / sigma, so nlme's
            # "normalized" equals "pearson" here; lme4's residuals(fit, "pearson", scaled = TRUE):
            # sqrt(w) (y - mu) / sigma, which is the working residual over sigma
            return self._align((d.y - self._working_fitted) / self.sigma, f"resid_{kind}")
        # "marginal": y - X beta - offset (population level, no random effects)
        eta = d.X @ self.state.beta if d.p else np.zeros(d.n)
        return self._align(d.response - self._data_scale(eta), "resid_marginal")

    @property
    def prior_weights(self) -> pd.Series | None:
        """lme4's ``weights(fit)``: the prior weights aligned to the input rows (None without weights)."""
        w = self.design.prior_weights
        return None if w is None else self._align(w, "weights")

    @property
    def offset(self) -> pd.Series | None:
        """The offset of each row (formula ``offset()`` terms plus ``offset=``), None without one."""
        o = self.design.offset
        return None if o is None else self._align(o, "offset")

    @property
    def response_name(self) -> str:
        """The response as written in the formula (the column ``augment(newdata)`` reads)."""
        return self.design.spec.response

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        interval: str | None = None,
        level: float = 0.95,
    ) -> pd.Series | pd.DataFrame:
        """Predictions: with the random effects (``re_form="full"``) or population-level (``None`` / ``"~0"``).

        Grouping ids are matched by value; a level not seen in the fit raises unless
        ``allow_new_levels=True`` (then its random effects are 0, as lme4). See
        :func:`memoe.lmm.predict.predict_lmm`.

        Parameters
        ----------
        interval : {None, "confidence", "prediction"}
            ``None``: the Series of predictions. Otherwise a DataFrame ``fit, se_fit, lower, upper``
            (index like ``newdata``) with normal quantiles at ``level``:

            * population level (``re_form=None``): ``se_fit^2 = x' V_beta x``; a prediction interval
              adds ``z' G z + sigma^2`` (a new observation of a new group);
            * conditional (``re_form="full"``): ``se_fit^2 = Var(x' beta_hat + z' b_hat - x' beta - z' b)``,
              exact from the joint prediction-error covariance of ``(beta, b)`` (Henderson's ``C^-1``,
              read off the blocked PLS factor, batched over levels); a prediction interval adds
              ``sigma^2``. A new level (``allow_new_levels=True``) adds its prior variance ``z' G z``;
              random-effects terms left out by a partial ``re_form`` enter a prediction interval with
              their prior variance.

            The variance parameters are treated as known (as lme4's ``predictInterval`` and nlme).
        level : float
            Coverage of the interval.
        """
        from memoe.inference.prediction import check_interval
        from memoe.lmm.predict import predict_interval_lmm

        interval, level = check_interval(interval, level)
        if interval is None:
            return predict_lmm(self, newdata, re_form=re_form, type=type, allow_new_levels=allow_new_levels)
        from memoe.core.design.newdata import check_type

        check_type(type)
        return predict_interval_lmm(self, newdata, re_form, interval, level, allow_new_levels)

    def predict_subject(
        self,
        history: pd.DataFrame,
        times,
        interval: str = "prediction",
        level: float = 0.95,
        time: str | None = None,
    ) -> pd.DataFrame:
        """Dynamic prediction of subjects (seen in the fit or new) from their observed rows.

        The rows of ``times`` of each subject are predicted by the conditional normal given the
        subject's rows in ``history`` under the fitted marginal model ``y_i ~ N(X_i beta, Z_i G Z_i' +
        sigma^2 I)``: ``E[y_t | y_h] = x_t' beta + Sigma_th Sigma_hh^-1 (y_h - X_h beta)`` with the
        plug-in estimates (seed 001's ``E[Omega_i(t) | Y_i]``; the stored BLUPs are not used, so a
        subject of the fit is predicted from the rows given). Batched over subjects with the same
        numbers of history and target rows.

        Parameters
        ----------
        history : pandas.DataFrame
            Observed rows: the grouping column, the response and the covariates. Several subjects at
            once; rows with a missing response or covariate are ignored.
        times : pandas.DataFrame or array-like
            The target rows (grouping column and covariates); a subject without history gets the
            population mean ``x' beta`` with the marginal variance. An array of times needs
            ``time=``: every subject of ``history`` is then predicted at each time, its other
            covariates copied from its last history row.
        interval : {"prediction", "confidence"}
            ``"prediction"``: ``sd`` is the SD of a new observation ``y_i(t)``; ``"confidence"``: of
            the subject's mean trajectory ``x' beta + z' b_i`` (the residual, measurement error,
            left out).
        level : float
        time : str, optional
            The time column (reported in the output; needed when ``times`` is an array).

        Returns
        -------
        pandas.DataFrame
            Index like ``times`` (a RangeIndex for an array): the grouping column, ``time`` when given,
            ``fit, sd, lower, upper``.
        """
        from memoe.inference.prediction import predict_subject
        from memoe.lmm.predict import subject_model_lmm

        return predict_subject(subject_model_lmm(self), history, times, interval=interval, level=level, time=time)

    # ------------------------------------------------------------------ tables and tests
    def coef_table(self, ddf: str = "residual", robust: str | None = None) -> pd.DataFrame:
        """Fixed-effects table with columns ``estimate, std_error, statistic, df, p_value``.

        Parameters
        ----------
        ddf : {"residual", "containment", "satterthwaite", "kenward-roger", "asymptotic"}
            Denominator degrees of freedom of the t tests (``"asymptotic"``: z tests, ``df`` infinite);
            ``attrs["ddf"]`` names the method, ``attrs["statistic"]`` is ``"t"`` or ``"z"``.
        robust : str, optional
            A cluster-robust covariance (one of :attr:`robust_types`) for the standard errors.
        """
        return coef_table(self, ddf=ddf, robust=robust)

    def test(self, hypothesis, ddf: str = "satterthwaite", robust: str | None = None):
        """F test of ``L beta = 0`` from a string (``"Days = 0"``) or a contrast matrix."""
        return test(self, hypothesis, ddf=ddf, robust=robust)

    def anova(self, ddf: str = "satterthwaite", type: int = 3) -> pd.DataFrame:
        """F tests of the fixed-effects terms as lmerTest's ``anova``."""
        return anova(self, ddf=ddf, type=type)

    def _confint_wald(self, level: float, parm=None, **kwargs: Any) -> pd.DataFrame:
        # lme4's confint(method = "Wald") rows; lme4 leaves the variance parameters NA, memoe fills them
        # with delta-method intervals on the log-SD / Fisher-z scale (memoe.inference.varcomp)
        from memoe.inference.varcomp import fill_lme4_wald
        from memoe.inference.varpar import VarParSpace

        ci = self._lme4_confint("wald", level, parm=parm, **kwargs)
        return fill_lme4_wald(ci, VarParSpace.from_design(self.design).names, self.varcomp, level)

    def _confint_other(self, method: str, level: float, parm=None, **kwargs: Any) -> pd.DataFrame:
        return self._lme4_confint(method, level, parm=parm, **kwargs)

    def _lme4_confint(self, method: str, level: float, parm=None, **kwargs: Any) -> pd.DataFrame:
        """lme4's ``confint.merMod`` rows (``sd_(Intercept)|Subject``, ..., ``sigma``, fixed effects),
        with ``lower``/``upper`` columns; see :func:`memoe.inference.confint.confint` for ``parm`` and the
        bootstrap's arguments (``nsim``, ``seed``, ``n_jobs``, ``progress``)."""
        ci = confint(self, method=method, level=level, parm=parm, **kwargs)
        out = pd.DataFrame(ci.to_numpy(dtype=float), index=ci.index, columns=["lower", "upper"])
        out.attrs.update({"level": level, "method": method})
        return out

    def summary(self):
        """lme4-style summary; ``print(fit.summary())``, tables in ``fit.summary().tables``."""
        return LmmSummary(self)

    def __repr__(self) -> str:
        return (
            f"<LmmResult {self.method} {self.model.formula!r} nobs={self.nobs} "
            f"loglik={self.loglik:.4f} singular={self.singular}>"
        )

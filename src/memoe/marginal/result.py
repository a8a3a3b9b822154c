"""The frozen result of a ``gls`` / ``lme`` fit with residual structures (nlme's ``gls`` / ``lme`` objects).

:class:`MarginalResult` is a :class:`~memoe.core.result.FitResult`: ``params``/``bse`` Series,
``vcov(robust=None | "CR0".."CR3")``, ``confint``, ``coef_table(ddf=...)`` with the standard columns,
``residuals(type=...)``, ``tidy``/``glance``/``augment``; plus nlme's own extractors (``intervals``,
``anova``, ``cor_params``, ``var_params``, ``residual_correlation``, ``marginal_covariance``).
"""

from __future__ import annotations

import math
from functools import cached_property
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from memoe.core.covariance import term_covariances
from memoe.core.design.newdata import (
    PredictArgumentError,
    check_type,
)
from memoe.core.linalg.batched import batched_cholesky, batched_forward_solve
from memoe.core.result import FitResult, check_level, coef_frame, wald_interval
from memoe.errors import ArgumentError
from memoe.inference.containment import containment_df
from memoe.inference.contrasts import as_hypothesis, reduce_rank
from memoe.inference.kenward_roger import kr_df_1d, kr_ftest
from memoe.inference.terms import fixed_terms
from memoe.marginal.anova import _term_columns, anova_table
from memoe.marginal.intervals import intervals
from memoe.marginal.kenward_roger import KR_VARIANTS, kenward_roger_marginal, kr_pieces
from memoe.marginal.problem import MarginalSolution
from memoe.marginal.sandwich import vcov_cr
from memoe.marginal.satterthwaite import satterthwaite_df, satterthwaite_f, satterthwaite_inputs
from memoe.marginal.summary import MarginalSummary

__all__ = ["MarginalResult"]

_DDF = ("nlme", "satterthwaite", "kenward-roger", "kenward-roger-linear", "asymptotic")
# accepted spellings (lower case, "_" and " " read as "-") -> the canonical name
_DDF_ALIASES = {
    "nlme": "nlme",
    "satterthwaite": "satterthwaite",
    "asymptotic": "asymptotic",
    "kenward-roger": "kenward-roger",
    "kenwardroger": "kenward-roger",
    "kr": "kenward-roger",
    "kenward-roger-linear": "kenward-roger-linear",
    "kr-linear": "kenward-roger-linear",
}
# lme4's isSingular tolerance on the diagonal of the relative covariance factor
_SINGULAR_TOL = 1e-4


class MarginalResult(FitResult):
    """A fitted ``gls`` or ``lme`` model with residual correlation / variance structures.

    Attributes
    ----------
    model : GLS or LME
    design : memoe.core.design.Design
    feval : int
        Objective evaluations.
    seconds : float
        Fit time.
    messages : list of str

    R equivalent
    ------------
    nlme's ``gls`` / ``lme`` objects with their extractors (``intervals``, ``anova``, ``coef(modelStruct)``).

    Examples
    --------
    >>> import memoe
    >>> from memoe.marginal import AR1
    >>> ovary = memoe.datasets.load("Ovary")
    >>> f = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"
    >>> fit = memoe.lme(f, ovary, correlation=AR1()).fit()
    >>> fit.residual_types
    ('response', 'pearson', 'normalized', 'marginal')
    >>> fit.intervals().shape[1]
    3
    """

    robust_types: ClassVar[tuple[str | None, ...]] = (None, "CR0", "CR1", "CR1S", "CR2", "CR3")
    residual_types: ClassVar[tuple[str, ...]] = ("response", "pearson", "normalized", "marginal")
    confint_methods: ClassVar[tuple[str, ...]] = ("wald",)

    def __init__(
        self, model, solution: MarginalSolution, reml: bool, feval: int, seconds: float, messages: list[str]
    ) -> None:
        self.model = model
        self.design = model.design
        self._reml = bool(reml)
        self.feval = int(feval)
        self.seconds = float(seconds)
        self.messages = list(messages)
        self._s = solution

    # ------------------------------------------------------------------ parameters
    @property
    def family(self) -> str:  # type: ignore[override]  # "gls" or "lme", per instance
        return self.model.kind

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def reml(self) -> bool:
        return self._reml

    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def converged(self) -> bool:
        return not self.messages

    @property
    def singular(self) -> bool:
        """``lme``: the random-effects covariance is on the boundary (a diagonal entry of its relative
        Cholesky factor below 1e-4, lme4's ``isSingular``); ``gls``: False."""
        if not self.design.blocks:
            return False
        lower = self.design.theta_map.lower_bounds
        return bool(np.any(self.theta.to_numpy()[lower == 0] < _SINGULAR_TOL))

    @property
    def params_unconstrained(self) -> np.ndarray:
        """The optimised vector [theta, correlation u, variance u]."""
        return self._s.params.copy()

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self._s.beta, index=self.design.fixef_names, name="fixef")

    @property
    def params(self) -> pd.Series:
        """The fixed effects (the coefficients of :meth:`coef_table` and :meth:`vcov`)."""
        return self.fixef.rename("params")

    @property
    def response_name(self) -> str:
        return self.design.spec.response

    @property
    def sigma(self) -> float:
        """Residual SD (of the reference stratum when there is a variance function)."""
        return self._s.sigma

    @cached_property
    def _vcov_model(self) -> pd.DataFrame:
        names = self.design.fixef_names
        s2 = self.sigma**2
        if self.kind == "gls" and not self.reml:
            s2 *= self.nobs / (self.nobs - self.design.p)
        return pd.DataFrame(s2 * self._s.vcov_unscaled, index=names, columns=names)

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        """``None``: sigma^2 (X' W^{-1} X)^{-1}, as nlme's ``vcov``; otherwise clubSandwich's ``vcovCR``.

        nlme's ``gls`` scales by the residual variance with N - p in the denominator even for ML fits
        (``varBeta`` is computed from the REML-type estimate; the printed sigma is the ML one), so
        ML ``gls`` standard errors are sqrt(N / (N - p)) times the plug-in ones. ``lme`` ML fits use
        the ML sigma. The cluster-robust types (``"CR0"``, ``"CR1"``, ``"CR1S"``, ``"CR2"``, ``"CR3"``)
        use the groups of the residual structure as clusters (:mod:`memoe.marginal.sandwich`).
        """
        if robust is None:
            return self._vcov_model.copy()

        return vcov_cr(self, type=robust)

    @property
    def vcov_tests(self) -> np.ndarray:
        """The covariance nlme's t tables and F tests use (p, p).

        ``vcov()`` except for ``lme`` ML fits, where nlme's ``summary`` and ``anova`` inflate it by
        N / (N - p) (``vcov(fit)`` itself is not inflated; ``gls`` ML has the factor in ``vcov``).
        """
        V = self._vcov_model.to_numpy()
        if self.kind == "lme" and not self.reml:
            return V * (self.nobs / (self.nobs - self.design.p))
        return V

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

    # ------------------------------------------------------------------ random effects by level
    @property
    def level_names(self) -> list[str]:
        """Grouping factors of the random effects, outermost first (nlme's levels 1, 2, ...; ``gls``: [])."""
        return list(self.model.level_names) if self.design.blocks else []

    @property
    def nested(self) -> bool:
        """Several nested grouping levels (nlme's ``random = list(Dog = ~ day, Side = ~ 1)``)."""
        return len(self.level_names) > 1

    def _level_blocks(self) -> list:
        return [self.design.blocks[k] for k in self.model.level_blocks]

    @cached_property
    def ranef_covs(self) -> dict[str, pd.DataFrame]:
        """Covariance of the random effects of each grouping level, sigma^2 D_q (nlme's Psi per level),
        outermost first: {grouping factor: DataFrame q x q}."""
        return {
            blk.factor.name: pd.DataFrame(self.sigma**2 * D, index=list(blk.columns), columns=list(blk.columns))
            for blk, D in zip(self._level_blocks(), self._s.Ds, strict=True)
        }

    @cached_property
    def ranef_cov(self) -> pd.DataFrame:
        """Covariance of the random effects, sigma^2 D (nlme's Psi), of a single grouping factor.

        Nested fits have one per level: :attr:`ranef_covs`.
        """
        if self.nested:
            raise ArgumentError(
                f"this lme has {len(self.level_names)} grouping levels {self.level_names}; ranef_cov is the covariance "
                "of a single grouping factor's random effects: use ranef_covs (one DataFrame per level)"
            )
        cols = list(self.design.blocks[0].columns) if self.design.blocks else []
        return pd.DataFrame(self.sigma**2 * self._s.D, index=cols, columns=cols)

    def relative_factors(self) -> list[np.ndarray]:
        """lambda of each factor block in the order of ``design.blocks`` (as :class:`memoe.lmm.LmmResult`)."""
        return self.design.theta_map.lambdas(self.theta.to_numpy())

    def term_covariances(self) -> list[np.ndarray]:
        """Covariance matrix of each lme4 random-effects term (natural scale), as the LMM's."""
        return term_covariances(self.design.terms, self.relative_factors(), self.sigma)

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """Variance components in the layout of lme4's ``as.data.frame(VarCorr(fit))``.

        Columns ``grp, var1, var2, vcov, sdcor``; one group of rows per grouping level (outermost
        first), the residual row last (its SD is sigma).
        """
        rows = []
        for grp, frame in self.ranef_covs.items():
            cov = frame.to_numpy()
            cols = list(frame.columns)
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
    def ranef(self) -> dict[str, pd.DataFrame]:
        """BLUPs D_q Z_iq' W_i^{-1} (y_i - X_i beta) per grouping level: {grouping factor: DataFrame
        levels x terms}, outermost first (``gls``: {})."""
        return {
            blk.factor.name: pd.DataFrame(
                b, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
            )
            for blk, b in zip(self._level_blocks(), self._s.bs, strict=True)
        }

    @cached_property
    def ranef_condsd(self) -> dict[str, pd.DataFrame]:
        """Conditional SDs of the BLUPs, same layout as :attr:`ranef` (lme4's ``condVar``).

        Var(b_j | y_i) = sigma^2 (D_q - D_q Z_jq' W_i^{-1} Z_jq D_q) at the estimates (beta treated as
        known, as lme4's ``condVar``) for group j of level q within outer group i
        (:func:`memoe.marginal.predict.level_terms`, batched over the outer groups of one size).
        """
        from memoe.marginal.predict import level_terms

        out = {}
        for blk, (_, S) in zip(self._level_blocks(), level_terms(self), strict=True):
            # a boundary fit can leave -1e-17 on the diagonal: the SD is 0 there
            sd = np.sqrt(np.clip(np.diagonal(S, axis1=1, axis2=2), 0.0, None))
            out[blk.factor.name] = pd.DataFrame(
                self.sigma * sd, index=pd.Index(blk.factor.levels, name=blk.factor.name), columns=list(blk.columns)
            )
        return out

    def _group_block(self, group, what: str) -> np.ndarray:
        """The (n_i, n_i) matrix ``what`` ("cor" or "cov") of one group of the residual structure."""
        lay = self.model.layout
        labels = [str(v) for v in lay.levels]
        if str(group) not in labels:
            shown = ", ".join(repr(v) for v in labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise ArgumentError(f"group {group!r} is not a level of {lay.name!r}; its levels are {shown}")
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
                C = P.correlation_blocks(u)[k]
                return np.array(np.broadcast_to(C, (bucket.size, bucket.n, bucket.n))[g])
        raise AssertionError(group)  # pragma: no cover - every level has a bucket

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
    def ngroups(self) -> pd.Series:
        """Groups of each random-effects grouping level, outermost first (``lme``), or of the residual
        structure (``gls`` with a grouped structure); empty for ``gls`` with independent rows or one
        whole-data group."""
        if self.design.blocks:
            # one entry per grouping level, outermost first (nlme's "Number of Groups")
            return pd.Series({b.factor.name: int(b.nlevels) for b in self._level_blocks()}, dtype=int, name="ngroups")
        name = self.model.layout.name
        if name is None:
            return pd.Series(dtype=int, name="ngroups")
        return pd.Series({name: int(self.model.layout.ngroups)}, dtype=int, name="ngroups")

    @property
    def df_model(self) -> int:
        """Number of estimated parameters: fixed effects, theta, correlation, variance, sigma."""
        return self.design.p + self.model.problem.size + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood (REML log-likelihood for REML fits, with nlme's constants)."""
        return -0.5 * self._s.deviance

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
    def fitted_levels(self) -> pd.DataFrame:
        """Fitted values at every grouping level, nlme's ``fitted(fit, level = 0:Q)``.

        Column ``fixed`` is X beta (level 0); the column of level k (named by its grouping factor,
        outermost first) adds the BLUPs of levels 1..k. The last column is :attr:`fitted`.
        """
        cols = {"fixed": self._s.fitted_marginal}
        for name, values in zip(self.level_names, self._s.fitted_levels, strict=True):
            cols[name] = values
        return pd.DataFrame({k: self._align(v, k) for k, v in cols.items()})

    def residuals_at(self, level: int) -> pd.Series:
        """Response residuals at grouping level ``level`` (0 = population, ``len(level_names)`` =
        innermost, the default of :meth:`residuals`), nlme's ``residuals(fit, level = level)``."""
        from memoe.marginal.predict import check_level_number

        k = check_level_number(level, len(self.level_names))
        fitted = self.fitted_levels.iloc[:, k]
        return (self._align(self.design.y, "y") - fitted).rename("resid")

    def _residuals(self, kind: str) -> pd.Series:
        """nlme's ``residuals(fit, type = ...)`` at the innermost level (``marginal``: level 0).

        ``pearson``: the response residual over its SD sigma * s (variance function); ``normalized``:
        the Pearson residuals of each group whitened by the lower Cholesky factor of the group's
        residual correlation C_i = L_i L_i' (L_i^{-1} r_i, nlme's ``recalc`` with the ``corFactor``),
        batched over the groups of one size; ``marginal``: y - X beta.
        """
        y = self.design.y
        if kind == "marginal":
            return self._align(y - self._s.fitted_marginal, "resid_marginal")
        pearson = (y - self._s.fitted_conditional) / (self.sigma * self._s.ratios)
        if kind == "pearson":
            return self._align(pearson, "resid_pearson")
        P = self.model.problem
        if P.cor is None:
            return self._align(pearson, "resid_normalized")
        lay = self.model.layout
        _, u, _ = P.split(self._s.params)
        pieces = []
        for bucket, C in zip(lay.buckets, P.correlation_blocks(u), strict=True):
            C = np.ascontiguousarray(np.broadcast_to(C, (bucket.size, bucket.n, bucket.n)))
            r = pearson[bucket.rows][:, :, None]
            pieces.append(batched_forward_solve(batched_cholesky(C), r)[:, :, 0])
        return self._align(lay.scatter(pieces, self.nobs), "resid_normalized")

    def _augment_data(self) -> pd.DataFrame:
        """The used columns on the input's index (dropped rows NaN: the fit keeps only the kept rows)."""
        frame = self.design.frame
        return frame.data.reindex(frame.index)

    def _population_prediction(self, newdata: pd.DataFrame | None) -> pd.Series:
        return self.predict(newdata, level=0)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
        level: float | None = None,
        interval: str | None = None,
    ) -> pd.Series | pd.DataFrame:
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
            The residual correlation does not enter (as in nlme; :meth:`predict_subject` uses it).
        type : {"response", "link"}
            The same (identity link).
        allow_new_levels : bool
            ``False``: a group not in the fit raises
            :class:`~memoe.core.design.newdata.NewLevelError`; ``True``: it gets ``X beta``.
        level : int or float, optional
            An integer: nlme's grouping level, ``0`` (``re_form=None``) to the number of grouping levels
            Q (``re_form="full"``); with nested levels (outermost first) ``level=k`` adds the BLUPs of
            levels 1..k, as nlme's ``predict(fit, level = k)``. Give ``level`` or ``re_form``, not both.
            A number strictly between 0 and 1: the coverage of ``interval`` (default 0.95), as the
            ``level`` of the other families' ``predict``.
        interval : {None, "confidence", "prediction"}
            ``None``: the Series. Otherwise a DataFrame ``fit, se_fit, lower, upper`` with normal
            quantiles. Population level: ``se_fit^2 = x' V_beta x``; conditional (``lme``):
            ``Var(x' beta_hat + z' b_hat - x' beta - z' b)``, exact with the residual structure
            and, for nested levels, the correlation of a group's BLUPs with those of the groups
            containing it (see :mod:`memoe.marginal.predict`). A prediction interval adds the variance of a new
            observation not explained by the prediction: ``z' G z`` of the random effects left out and
            the residual variance ``sigma^2 s^2`` (variance function included; its correlation with the
            group's observed residuals is ignored here, :meth:`predict_subject` conditions on it).
            ``V_beta`` is :meth:`vcov`; the variance parameters are treated as known.

        Returns
        -------
        pandas.Series or pandas.DataFrame
            Indexed like ``newdata``; NaN where a needed value is missing or infinite (with a warning).
        """
        from memoe.inference.prediction import check_interval
        from memoe.marginal.predict import _resolve_level, predict_interval_marginal, predict_marginal

        coverage = 0.95
        if isinstance(level, (float, np.floating)) and 0.0 < level < 1.0:
            coverage, level = level, None
            if interval is None:
                raise PredictArgumentError(
                    f"level={coverage!r} is a coverage, which needs interval='confidence' or 'prediction'; "
                    f"nlme's grouping level is an integer 0 .. {max(len(self.level_names), 1)}"
                )
        interval, conf_level = check_interval(interval, coverage)
        if interval is None:
            return predict_marginal(self, newdata, re_form, type, allow_new_levels, level)

        check_type(type)
        re_form, keep = _resolve_level(re_form, level, len(self.level_names))
        return predict_interval_marginal(self, newdata, re_form, interval, conf_level, allow_new_levels, keep)

    def predict_subject(
        self,
        history: pd.DataFrame,
        times,
        interval: str = "prediction",
        level: float = 0.95,
        time: str | None = None,
    ) -> pd.DataFrame:
        """Dynamic prediction of subjects from their observed rows, with the residual correlation.

        The target rows of each subject (group of the residual structure) are predicted by the
        conditional normal given the subject's ``history`` rows under the fitted marginal model
        ``V_i = Z_i G Z_i' + sigma^2 S_i C_i S_i`` (AR(1), CAR(1), exponential with nugget, ...):
        seed 001's ``E[Omega_i(t) | Y_i]`` with the serial process ``W_i(t)``, plug-in estimates.
        ``interval="prediction"``: ``sd`` of a new observation ``y_i(t)``; ``"confidence"``: of the
        latent ``x' beta + Omega_i(t)`` (the measurement error, i.e. the nugget share of the residual
        variance -- all of it without a correlation structure, ``1 - Rho`` for compound symmetry --
        left out). The structure's coordinate of the target rows is their time column (CAR1, Exp),
        visit column (AR1 / Symm with ``visit``), or else their position after the history rows.
        An array of ``times`` sets the structure's time column (or ``time=``) on copies of each
        subject's last history row. See :meth:`memoe.lmm.LmmResult.predict_subject` for the rest.
        """
        from memoe.inference.prediction import predict_subject
        from memoe.marginal.predict import subject_model

        return predict_subject(subject_model(self), history, times, interval=interval, level=level, time=time)

    # ------------------------------------------------------------------ tables
    @cached_property
    def df_coef(self) -> np.ndarray:
        """Denominator df per coefficient: N - p for ``gls``, nlme's containment df for ``lme``."""
        if not self.design.blocks:
            return np.full(self.design.p, float(self.nobs - self.design.p))

        shim = SimpleNamespace(design=self.design)
        return containment_df(shim, fixed_terms(shim)).coef

    @staticmethod
    def _normalize_ddf(ddf: str, allowed: tuple[str, ...] = _DDF) -> str:
        """The canonical ddf name (``"KR"``, ``"Kenward-Roger"``, ``"kenward_roger_linear"``, ... accepted)."""
        key = str(ddf).strip().lower().replace("_", "-").replace(" ", "-") if isinstance(ddf, str) else None
        name = _DDF_ALIASES.get(key) if key is not None else None
        if name is None or name not in allowed:
            raise ArgumentError(f"ddf={ddf!r} is not available here for gls/lme fits; choose one of {list(allowed)}")
        return name

    @classmethod
    def _check_ddf(cls, ddf: str, robust: str | None) -> str:
        name = cls._normalize_ddf(ddf)
        if robust is not None and name not in ("nlme", "asymptotic"):
            raise ArgumentError(
                f"robust={robust!r} cannot be combined with ddf={ddf!r} (its df and covariance are those of "
                "the model-based covariance); use ddf='nlme' or 'asymptotic'"
            )
        return name

    def coef_table(self, ddf: str = "nlme", robust: str | None = None, information: str = "expected") -> pd.DataFrame:
        """The t table with the standard columns ``estimate, std_error, statistic, df, p_value``.

        Parameters
        ----------
        ddf : {"nlme", "satterthwaite", "kenward-roger", "kenward-roger-linear", "asymptotic"}
            ``"nlme"`` (default): nlme's ``summary(fit)$tTable``: df N - p for ``gls`` and nlme's
            containment df for ``lme``; for ``lme`` ML fits the SEs carry nlme's sqrt(N / (N - p)).
            ``"satterthwaite"``: SEs from sigma^2 (X' W^-1 X)^-1 and Satterthwaite df, as lmerTest and
            R's mmrm (:mod:`memoe.marginal.satterthwaite`). ``"kenward-roger"`` (also ``"kr"``,
            ``"Kenward-Roger"``): the Kenward-Roger adjusted SEs and df, as pbkrtest and R's mmrm;
            ``"kenward-roger-linear"`` (``"Kenward-Roger-Linear"``): without the second-derivative term,
            as mmrm's variant of that name (REML fits only; :mod:`memoe.marginal.kenward_roger`).
            ``"asymptotic"``: the model-based SEs, normal reference (df inf).
        robust : {"CR0", "CR1", "CR1S", "CR2", "CR3"}, optional
            Cluster-robust SEs (:meth:`vcov`), with ``ddf="nlme"`` (its df) or ``"asymptotic"``.
        information : {"expected", "observed"}
            Kenward-Roger only: the information matrix of the variance parameters (:meth:`kenward_roger`;
            ``"observed"`` with ``ddf="kenward-roger-linear"`` reproduces R's mmrm ``"Kenward-Roger-Linear"``).

        Returns
        -------
        pandas.DataFrame
            ``attrs["statistic"]`` is ``"t"`` (``"z"`` for ``"asymptotic"``), ``attrs["ddf"]`` the df method
            (and ``attrs["robust"]`` the sandwich type when ``robust`` is given).
        """
        ddf = self._check_ddf(ddf, robust)
        est = self.fixef.to_numpy()
        names = self.design.fixef_names
        if ddf in KR_VARIANTS:
            kr = self.kenward_roger(linear=ddf == "kenward-roger-linear", information=information)
            se = np.sqrt(np.clip(np.diag(kr.PhiA), 0.0, None))
            df = kr_df_1d(kr, np.eye(len(est)))
            return coef_frame(est, se, names, statistic="t", df=df, ddf=ddf)
        if robust is not None:
            se = np.sqrt(np.clip(np.diag(self.vcov(robust=robust).to_numpy()), 0.0, None))
            if ddf == "asymptotic":
                out = coef_frame(est, se, names, statistic="z", ddf="asymptotic")
            else:
                out = coef_frame(est, se, names, statistic="t", df=np.asarray(self.df_coef, dtype=float), ddf="nlme")
            out.attrs["robust"] = str(robust).upper()
            return out
        if ddf == "nlme":
            se = np.sqrt(np.diag(self.vcov_tests))
            return coef_frame(est, se, names, statistic="t", df=np.asarray(self.df_coef, dtype=float), ddf="nlme")
        inputs = self._satterthwaite
        se = np.sqrt(np.diag(inputs.C))
        if ddf == "asymptotic":
            return coef_frame(est, se, names, statistic="z", ddf="asymptotic")

        df = satterthwaite_df(inputs, np.eye(len(est)))
        return coef_frame(est, se, names, statistic="t", df=df, ddf="satterthwaite")

    def _confint_wald(
        self, level: float, ddf: str = "nlme", robust: str | None = None, information: str = "expected"
    ) -> pd.DataFrame:
        """Wald intervals of the fixed effects; with ``ddf="nlme"`` those of nlme's ``intervals``.

        nlme's ``intervals`` use the t table's df with the SEs of ``vcov`` (not the N / (N - p)
        inflated ones its ``summary`` prints for ``lme`` ML fits).
        """
        ddf = self._check_ddf(ddf, robust)
        if ddf != "nlme":
            return wald_interval(self.coef_table(ddf=ddf, robust=robust, information=information), level)
        est = self.fixef.to_numpy()
        se = np.sqrt(np.clip(np.diag(self.vcov(robust=robust).to_numpy()), 0.0, None))
        q = stats.t.ppf(0.5 + level / 2.0, np.asarray(self.df_coef, dtype=float))
        out = pd.DataFrame({"lower": est - q * se, "upper": est + q * se}, index=self.design.fixef_names)
        out.attrs["level"] = level
        out.attrs["method"] = "wald"
        return out

    @cached_property
    def _satterthwaite(self):
        return satterthwaite_inputs(self)

    @cached_property
    def _kr_cache(self) -> dict:
        return {}

    def kenward_roger(self, linear: bool = False, information: str = "expected"):
        """The Kenward-Roger adjusted covariance of the fixed effects and the pieces of its df.

        Parameters
        ----------
        linear : bool
            ``False``: with the second-derivative term (R's mmrm ``"Kenward-Roger"``); ``True``:
            without it (mmrm's ``"Kenward-Roger-Linear"``, independent of the parameterisation).
        information : {"expected", "observed"}
            The information matrix whose inverse is the covariance W of the variance parameters:
            ``"expected"`` as pbkrtest (and ``memoe.lmm``), ``"observed"`` (the Hessian of the REML
            criterion) as R's mmrm and SAS.

        Returns
        -------
        memoe.inference.kenward_roger.KenwardRoger
            ``PhiA`` the adjusted covariance (pbkrtest's ``vcovAdj``), ``Phi`` the model-based one,
            ``P`` and ``W`` (see :mod:`memoe.marginal.kenward_roger` for the parameterisation).

        Examples
        --------
        >>> fit = memoe.gls("distance ~ age * Sex", orth, correlation=Symm("Subject"),
        ...                 weights=VarIdent("age")).fit()                                   # doctest: +SKIP
        >>> fit.kenward_roger().PhiA                                                          # doctest: +SKIP
        """
        if information not in self._kr_cache:
            self._kr_cache[information] = kr_pieces(self, information=information)
        return kenward_roger_marginal(
            self._kr_cache[information], "kenward-roger-linear" if linear else "kenward-roger"
        )

    def _f_test(
        self, L: np.ndarray, rhs: np.ndarray, ddf: str, information: str = "expected"
    ) -> tuple[float, int, float, float]:
        """(F, numerator df, denominator df, p) of ``L beta = rhs`` (``L`` of full row rank)."""
        beta = self.fixef.to_numpy()
        if ddf in KR_VARIANTS:
            kr = self.kenward_roger(linear=ddf == "kenward-roger-linear", information=information)
            res = kr_ftest(kr, L, beta, rhs)
            fstat, q, den = res.F, res.ndf, res.ddf
        else:
            # L beta = rhs  <=>  L (beta - b0) = 0 for any b0 with L b0 = rhs
            b0 = np.linalg.lstsq(L, rhs, rcond=None)[0]
            fstat, q, den = satterthwaite_f(self._satterthwaite, L, beta - b0)
            if ddf == "asymptotic":
                den = np.inf
        p = float(stats.chi2.sf(q * fstat, q)) if not np.isfinite(den) else float(stats.f.sf(fstat, q, den))
        return float(fstat), int(q), float(den), p

    def test(self, hypothesis, ddf: str = "satterthwaite", information: str = "expected") -> pd.DataFrame:
        """F test of ``L beta = rhs`` (lmerTest's ``contestMD``, pbkrtest's ``KRmodcomp``).

        Parameters
        ----------
        hypothesis : str, array-like, pandas Series / DataFrame, dict or ``(L, rhs)``
            As :meth:`memoe.results.LmmResult.test`: ``"SexFemale = 0, age:SexFemale = 0"`` or a
            contrast matrix with one column per coefficient.
        ddf : {"satterthwaite", "kenward-roger", "kenward-roger-linear", "asymptotic"}
            ``"satterthwaite"``: Wald F with the model-based covariance and Satterthwaite df
            (Fai & Cornelius). ``"kenward-roger"`` / ``"kenward-roger-linear"``: Wald F with the
            adjusted covariance, scaled, with Kenward-Roger's df (R's mmrm ``df_md`` and pbkrtest's
            ``KRmodcomp``; ``F value`` is the scaled statistic). ``"asymptotic"``: chi-square / q.
        information : {"expected", "observed"}
            Kenward-Roger only (:meth:`kenward_roger`).

        Returns
        -------
        pandas.DataFrame
            One row: ``F value, NumDF, DenDF, Pr(>F)``.
        """
        ddf = self._normalize_ddf(ddf, ("satterthwaite", *KR_VARIANTS, "asymptotic"))
        names = list(self.design.fixef_names)
        hyp = as_hypothesis(hypothesis, names)
        L, rhs = reduce_rank(hyp)
        fstat, q, den, p = self._f_test(L, rhs, ddf, information)
        out = pd.DataFrame(
            {"F value": [fstat], "NumDF": [q], "DenDF": [den], "Pr(>F)": [p]}, index=pd.Index([hyp.label])
        )
        out.attrs["ddf"] = ddf
        return out

    def anova(self, type: str | None = None, ddf: str = "nlme", information: str = "expected") -> pd.DataFrame:
        """F tests by term.

        Parameters
        ----------
        type : {"sequential", "marginal"}, optional
            Default ``"sequential"`` with ``ddf="nlme"`` (nlme's ``anova(fit)``), else ``"marginal"``.
        ddf : {"nlme", "satterthwaite", "kenward-roger", "kenward-roger-linear", "asymptotic"}
            ``"nlme"``: nlme's ``anova(fit, type = ...)`` (N - p or containment df). The others test
            each term's coefficients = 0 (``type="marginal"`` only, each term adjusted for all others,
            as lmerTest's type III on these columns) with :meth:`test`'s method.
        information : {"expected", "observed"}
            Kenward-Roger only (:meth:`kenward_roger`).

        Returns
        -------
        pandas.DataFrame
            Index = term labels; columns ``numDF, denDF, F-value, p-value`` (nlme's).
        """
        ddf = self._normalize_ddf(ddf)
        if ddf == "nlme":
            return anova_table(self, type="sequential" if type is None else type)
        type = "marginal" if type is None else type
        if type != "marginal":
            raise ArgumentError(
                f"anova(type={type!r}) with ddf={ddf!r}: only type='marginal' is available with this ddf "
                "(sequential tests use nlme's df: ddf='nlme')"
            )
        labels, cols, _ = _term_columns(self)
        p = self.design.p
        rows = []
        for idx in cols:
            L = np.eye(p)[idx]
            rows.append(self._f_test(L, np.zeros(len(idx)), ddf, information))
        out = pd.DataFrame(
            {
                "numDF": [r[1] for r in rows],
                "denDF": [r[2] for r in rows],
                "F-value": [r[0] for r in rows],
                "p-value": [r[3] for r in rows],
            },
            index=labels,
        )
        out.attrs["ddf"] = ddf
        return out

    def intervals(self, level: float = 0.95) -> pd.DataFrame:
        """Approximate confidence intervals of all parameters, as nlme's ``intervals(fit, which = "all")``.

        Columns ``lower, est., upper`` (nlme's); the ``fixed`` rows equal :meth:`confint` at ``level``.
        """

        return intervals(self, level=check_level(level))

    def _ran_pars(self) -> pd.DataFrame:
        """broom.mixed's variance parameters, then the residual structure's.

        ``lme``: ``sd__<term>`` and ``cor__<term1>.<term2>`` of the grouping factor; every fit:
        ``sd__Observation`` (sigma) in group ``Residual``, followed by the correlation parameters on
        nlme's natural scale under their nlme names (``Phi``, ``range``, ``nugget``, ``cor(1,2)``,
        ``Rho``) and the SD ratios of the variance function as ``varIdent(<by>=<level>)``, all in group
        ``Residual``.
        """
        rows: list[tuple[str, str, float]] = []
        vc = self.varcorr
        for r in vc.itertuples(index=False):
            if r.grp == "Residual":
                continue
            if r.var2 is None or pd.isna(r.var2):
                rows.append((r.grp, f"sd__{r.var1}", float(r.sdcor)))
            else:
                rows.append((r.grp, f"cor__{r.var1}.{r.var2}", float(r.sdcor)))
        rows.append(("Residual", "sd__Observation", float(self.sigma)))
        rows += [("Residual", str(k), float(v)) for k, v in self.cor_params.items()]
        if len(self.var_params):
            term = self.model.problem.var.term
            rows += [("Residual", term(str(k)), float(v)) for k, v in self.var_params.items()]
        return self._ran_pars_inference(pd.DataFrame(rows, columns=["group", "term", "estimate"]))

    @cached_property
    def varcomp(self) -> dict:
        """nlme's ``apVar`` on the natural scale: {(part, param): (estimate, std_error, kind)}
        (:func:`memoe.inference.varcomp.marginal_varcomp`)."""
        from memoe.inference.varcomp import marginal_varcomp

        return marginal_varcomp(self)

    def _ran_pars_inference(self, rp: pd.DataFrame) -> pd.DataFrame:
        """``rp`` with delta-method SEs, Wald z and boundary-aware p-values (:mod:`memoe.inference.varcomp`)."""
        from memoe.inference.varcomp import VarCompCov, add_varcomp_inference

        var = self.model.problem.var
        lookup = {}
        for (part, param), value in self.varcomp.items():
            if part.startswith("reStruct"):
                term = self._re_term(part, param)
            elif part == "varStruct":
                term = var.term(param)
            elif part == "sigma":
                term = "sd__Observation"
            else:
                term = param
            lookup[term] = value
        keys = [self._rp_key(g, t) for g, t in zip(rp["group"], rp["term"], strict=True)]
        se = np.array([lookup.get(t, (np.nan, np.nan, "other"))[1] for t in keys], dtype=float)
        kind = np.array([lookup.get(t, (np.nan, np.nan, "other"))[2] for t in keys], dtype=object)
        return add_varcomp_inference(rp, VarCompCov(rp["estimate"].to_numpy(float), se, kind))

    def coef(self) -> dict[str, pd.DataFrame]:
        """Subject-specific coefficients, nlme's ``coef.lme``: {grouping factor: levels x fixed effects}
        (``gls``: {}). With nested levels the coefficients of a level-k group add the BLUPs of levels
        1..k (nlme's ``coef(fit, level = k)``), outermost level first."""
        from memoe.inference.coefficients import subject_coefficients

        coefs = subject_coefficients(self.fixef, self.ranef)
        if not self.nested:
            return coefs
        # nlme's coef(fit, level = k): a group of level k also carries the BLUPs of the groups that
        # contain it (levels 1..k-1), found through any one of its rows
        blocks = self._level_blocks()
        fixef = self.fixef.to_numpy()
        out: dict[str, pd.DataFrame] = {}
        for k, blk in enumerate(blocks):
            frame = coefs[blk.factor.name]
            first = np.full(blk.nlevels, -1, dtype=np.int64)
            first[blk.factor.codes[::-1]] = np.arange(len(blk.factor.codes))[::-1]
            for outer in blocks[:k]:
                outer_coef = coefs[outer.factor.name].to_numpy() - fixef[None, :]
                frame = frame + outer_coef[outer.factor.codes[first]]
            out[blk.factor.name] = frame
        return out

    def icc(self, by_group: bool = False):
        """Adjusted and conditional ICC (Nakagawa et al. 2017); ``lme`` only (gls has no random effects)."""
        from memoe.inference.variance_decomposition import icc

        return icc(self, by_group=by_group)

    def r2(self) -> pd.Series:
        """Nakagawa-Schielzeth marginal and conditional R² (gls: both equal var_fixed / total)."""
        from memoe.inference.variance_decomposition import r2

        return r2(self)

    def _ran_pars_confint(self, rp: pd.DataFrame, level: float) -> pd.DataFrame:
        """Intervals of the variance parameters from nlme's ``intervals`` (Wald on nlme's unconstrained
        scales, mapped back); the reference stratum's SD ratio is fixed at 1 and gets NaN."""
        iv = self.intervals(level)
        var = self.model.problem.var
        keys = [self._rp_key(g, t) for g, t in zip(rp["group"], rp["term"], strict=True)]
        for (part, param), row in iv.iterrows():
            if part.startswith("reStruct"):
                term = self._re_term(part, param)
            elif part == "corStruct":
                term = param
            elif part == "varStruct":
                term = var.term(param)
            elif part == "sigma":
                term = "sd__Observation"
            else:  # "fixed": tidy's fixed rows use confint
                continue
            hit = np.array([k == term for k in keys], dtype=bool)
            rp.loc[hit, "conf_low"] = float(row["lower"])
            rp.loc[hit, "conf_high"] = float(row["upper"])
        return rp

    def _re_term(self, part: str, param: str) -> str:
        """tidy's key of an ``intervals`` / ``varcomp`` random-effects row: ``sd(Days)`` -> ``sd__Days``,
        ``cor((Intercept),Days)`` -> ``cor__(Intercept).Days``; prefixed ``<factor>|`` for nested levels."""
        inner = param[param.index("(") + 1 : -1]
        term = f"sd__{inner}" if param.startswith("sd(") else "cor__" + ".".join(inner.split(",", 1))
        return f"{part[len('reStruct.'):]}|{term}" if part.startswith("reStruct.") else term

    def _rp_key(self, group: str, term: str) -> str:
        """The key of a ``_ran_pars`` row in :meth:`_re_term`'s convention."""
        if self.nested and group in self.level_names:
            return f"{group}|{term}"
        return term

    def summary(self, ddf: str = "nlme"):
        """nlme's ``print(summary(fit))``: a :class:`~memoe.marginal.summary.MarginalSummary` whose ``str``
        is the text and ``tables`` the DataFrames; ``ddf`` as :meth:`coef_table` (the coefficient table's
        SEs and df)."""
        return MarginalSummary(self, ddf=self._normalize_ddf(ddf))

    def __repr__(self) -> str:
        return (
            f"<MarginalResult {self.kind} {self.method}: {self.model.formula!r}, loglik={self.loglik:.4f}, "
            f"nobs={self.nobs}>"
        )

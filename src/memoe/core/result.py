"""The result interface shared by every fitted model (LMM, GLMM, gls, lme, GEE, MEMoE, MoE).

One name and one type per concept, whatever the family:

=============================  =====================================================================
``params``, ``bse``            Series of the model's coefficients and their standard errors
``vcov(robust=None)``          labelled DataFrame; ``robust`` in the family's :attr:`robust_types`
``confint(level, method)``     DataFrame with ``lower`` and ``upper`` columns
``coef_table(...)``            columns ``estimate, std_error, statistic, df, p_value``; ``attrs``
                               name the statistic (``"t"``, ``"z"``, ``"chisq"``) and the df method
``summary()``                  a :class:`~memoe.core.summary.Summary` (R-style text, ``.tables``)
``fitted``, ``resid``          Series aligned to the input rows (NaN where a row was dropped)
``residuals(type=...)``        Series; ``type`` in the family's :attr:`residual_types`
``predict(newdata, ...)``      Series indexed like ``newdata``
``loglik, aic, bic, nobs``     floats / int; ``ngroups`` a Series (empty without grouping)
``information_criteria()``     Series
``tidy()``, ``glance()``,      broom.mixed's three verbs, same column names in every family
``augment()``
``save(path)``                 one ``.memoe`` file (JSON + npz); ``memoe.load(path)`` reads it back
=============================  =====================================================================

A family subclasses :class:`FitResult` and writes only what differs: the abstract members below plus
the hooks :meth:`_ran_pars`, :meth:`_residuals`, :meth:`_confint_other` and :meth:`_augment_extra`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from memoe.core.arguments import check_level
from memoe.core.frames import to_pandas
from memoe.errors import ArgumentError, MemoeError

__all__ = [
    "COEF_COLUMNS",
    "GLANCE_COLUMNS",
    "TIDY_COLUMNS",
    "FitResult",
    "check_level",
    "coef_frame",
]

COEF_COLUMNS = ["estimate", "std_error", "statistic", "df", "p_value"]
TIDY_COLUMNS = ["effect", "group", "term", "estimate", "std_error", "statistic", "df", "p_value"]
GLANCE_COLUMNS = [
    "nobs",
    "ngroups",
    "sigma",
    "logLik",
    "AIC",
    "BIC",
    "deviance",
    "df_residual",
    "converged",
    "singular",
]
_STATISTICS = ("t", "z", "chisq")


def coef_frame(
    estimate: Iterable[float],
    std_error: Iterable[float],
    names: Iterable[str],
    statistic: str = "t",
    df: Iterable[float] | float | None = None,
    ddf: str = "",
) -> pd.DataFrame:
    """The standard coefficient table from estimates, standard errors and (for t tests) df.

    Parameters
    ----------
    estimate, std_error : array-like, shape (p,)
    names : the row labels (coefficient names)
    statistic : {"t", "z", "chisq"}
        ``t``: ``estimate / std_error`` against Student's t with ``df``; ``z``: against the standard normal
        (``df`` is infinite); ``chisq``: the Wald chi-square ``(estimate / std_error)^2`` on 1 df
        (geepack's layout).
    df : array-like or float, optional
        Denominator degrees of freedom of the t statistics.
    ddf : str
        How the df were obtained (stored in ``attrs["ddf"]`` and printed by the summaries).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COEF_COLUMNS`; ``attrs["statistic"]`` and ``attrs["ddf"]`` say which test was used.
    """
    if statistic not in _STATISTICS:
        raise ArgumentError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    est = np.asarray(list(estimate), dtype=float)
    se = np.asarray(list(std_error), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = est / se
    if statistic == "t":
        dfv = np.broadcast_to(np.asarray(np.inf if df is None else df, dtype=float), est.shape).copy()
        stat = ratio
        p = 2.0 * stats.t.sf(np.abs(ratio), dfv)
    elif statistic == "z":
        dfv = np.full(est.shape, np.inf)
        stat = ratio
        p = 2.0 * stats.norm.sf(np.abs(ratio))
    else:
        dfv = np.ones(est.shape)
        stat = ratio**2
        p = stats.chi2.sf(stat, 1.0)
    out = pd.DataFrame(
        {"estimate": est, "std_error": se, "statistic": stat, "df": dfv, "p_value": p}, index=list(names)
    )
    out.attrs["statistic"] = statistic
    out.attrs["ddf"] = ddf or ("asymptotic" if statistic != "t" else "")
    return out


class FitResult(ABC):
    """Base of every fitted model: the shared extractors, written once.

    Class attributes a family sets
    ------------------------------
    family : str
        ``"lmm"``, ``"glmm"``, ``"gls"``, ``"lme"``, ``"gee"``, ``"memoe"``, ``"moe"``.
    robust_types : tuple
        Accepted values of ``vcov(robust=...)``; ``None`` (model-based) is always first.
    residual_types : tuple of str
        Accepted values of ``residuals(type=...)``; the first is the default.
    confint_methods : tuple of str
        Accepted ``confint(method=...)`` values.
    """

    family: ClassVar[str] = ""
    robust_types: ClassVar[tuple[str | None, ...]] = (None,)
    residual_types: ClassVar[tuple[str, ...]] = ("response",)
    confint_methods: ClassVar[tuple[str, ...]] = ("wald",)

    # ------------------------------------------------------------------ what a family provides
    @property
    @abstractmethod
    def params(self) -> pd.Series:
        """The model's coefficients (fixed effects; for mixtures every parameter), labelled."""

    @abstractmethod
    def _vcov(self, robust: str | None) -> pd.DataFrame:
        """Covariance of :attr:`params` (model-based for ``None``); ``robust`` is already validated."""

    @abstractmethod
    def coef_table(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """The coefficient table with columns :data:`COEF_COLUMNS` (see :func:`coef_frame`)."""

    @property
    @abstractmethod
    def loglik(self) -> float:
        """Maximised log-likelihood (REML log-likelihood for REML fits)."""

    @property
    @abstractmethod
    def nobs(self) -> int:
        """Number of observations used (after dropping rows with missing values)."""

    @property
    @abstractmethod
    def df_model(self) -> int:
        """Number of estimated parameters (lme4's ``df`` of ``logLik``)."""

    @property
    @abstractmethod
    def fitted(self) -> pd.Series:
        """Fitted values aligned to the input rows (NaN where a row was dropped)."""

    @property
    @abstractmethod
    def resid(self) -> pd.Series:
        """Response residuals aligned to the input rows (NaN where a row was dropped)."""

    @abstractmethod
    def predict(self, newdata: pd.DataFrame | None = None, **kwargs: Any) -> pd.Series:
        """Predictions for ``newdata`` (the fitted data when ``None``)."""

    @abstractmethod
    def summary(self):
        """A :class:`~memoe.core.summary.Summary`."""

    # ------------------------------------------------------------------ defaults a family may override
    @property
    def converged(self) -> bool:
        return True

    @property
    def singular(self) -> bool:
        """Boundary (singular) fit: a random-effects covariance is not of full rank."""
        return False

    @property
    def sigma(self) -> float:
        """Residual standard deviation (NaN where the family has none)."""
        return math.nan

    @property
    def reml(self) -> bool:
        return False

    @property
    def n_dropped(self) -> int:
        """Rows removed for missing values."""
        return 0

    @property
    def ngroups(self) -> pd.Series:
        """Levels per grouping factor (empty without grouping)."""
        return pd.Series(dtype=int, name="ngroups")

    @property
    def deviance(self) -> float:
        """-2 log-likelihood (lme4 reports the REML criterion for REML fits, which this equals)."""
        return -2.0 * self.loglik

    @property
    def df_resid(self) -> float:
        return self.nobs - self.df_model

    @property
    def n_fixef(self) -> int:
        """Number of fixed-effects coefficients (the ``p`` of the REML sample-size convention)."""
        return len(self.params)

    # ------------------------------------------------------------------ covariance and intervals
    def vcov(self, robust: str | None = None) -> pd.DataFrame:
        """Covariance matrix of :attr:`params` as a labelled DataFrame.

        Parameters
        ----------
        robust : str, optional
            ``None`` for the model-based covariance; otherwise one of the family's :attr:`robust_types`
            (e.g. ``"CR0"``..``"CR3"`` cluster-robust sandwiches for mixed models, ``"sandwich"`` for
            GEE and mixtures).
        """
        key = robust
        if isinstance(robust, str):
            wanted = robust.strip().lower()
            key = next((r for r in self.robust_types if isinstance(r, str) and r.lower() == wanted), robust)
        if key not in self.robust_types:
            raise ArgumentError(
                f"robust={robust!r} is not available for {type(self).__name__}; "
                f"choose one of {list(self.robust_types)}"
            )
        return self._vcov(key)

    @property
    def bse(self) -> pd.Series:
        """Model-based standard errors of :attr:`params`."""
        v = self.vcov()
        return pd.Series(np.sqrt(np.clip(np.diag(v.to_numpy()), 0.0, None)), index=v.index, name="std_error")

    def confint(self, level: float = 0.95, method: str = "wald", **kwargs: Any) -> pd.DataFrame:
        """Confidence intervals with ``lower`` and ``upper`` columns.

        Parameters
        ----------
        level : float
            Coverage, strictly between 0 and 1.
        method : str
            ``"wald"`` (every family: estimate +- quantile x SE, with the df of :meth:`coef_table` when
            it uses t statistics), or one of the family's other :attr:`confint_methods`
            (``"profile"``, ``"bootstrap"``).
        """
        level = check_level(level)
        if not isinstance(method, str) or method.lower() not in self.confint_methods:
            raise ArgumentError(
                f"method={method!r} is not available for {type(self).__name__}; choose one of "
                f"{list(self.confint_methods)}"
            )
        method = method.lower()
        if method == "wald":
            return self._confint_wald(level, **kwargs)
        return self._confint_other(method, level, **kwargs)

    def _confint_wald(self, level: float, **kwargs: Any) -> pd.DataFrame:
        table = self.coef_table(**kwargs)
        return wald_interval(table, level)

    def _confint_other(self, method: str, level: float, **kwargs: Any) -> pd.DataFrame:
        raise MemoeError(f"confint(method={method!r}) is not implemented for {type(self).__name__}")

    # ------------------------------------------------------------------ criteria
    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.df_model

    @property
    def bic(self) -> float:
        """BIC with log(nobs), as lme4 (also for REML fits)."""
        return -2.0 * self.loglik + math.log(self.nobs) * self.df_model

    def information_criteria(self) -> pd.Series:
        """AIC, AICc, BIC, HQIC and CAIC with the sample-size convention stated (see
        :mod:`memoe.inference.criteria`)."""
        # deferred: importing memoe.inference runs its package __init__, whose modules build on this one
        from memoe.inference.criteria import information_criteria

        return information_criteria(self)

    # ------------------------------------------------------------------ residuals
    def residuals(self, type: str | None = None) -> pd.Series:
        """Residuals of the kind asked for, aligned to the input rows.

        Parameters
        ----------
        type : str, optional
            One of the family's :attr:`residual_types` (the first is the default): ``"response"``
            (y - fitted), ``"pearson"``, ``"deviance"``, ``"working"``, ``"normalized"``, ``"marginal"``
            where they apply.
        """
        kind = self.residual_types[0] if type is None else type
        if not isinstance(kind, str) or kind.lower() not in self.residual_types:
            raise ArgumentError(
                f"residuals(type={type!r}) is not available for {type_name(self)}; "
                f"choose one of {list(self.residual_types)}"
            )
        kind = kind.lower()
        if kind == "response":
            return self.resid
        return self._residuals(kind)

    def _residuals(self, kind: str) -> pd.Series:
        raise MemoeError(f"residuals(type={kind!r}) is not implemented for {type_name(self)}")

    # ------------------------------------------------------------------ broom verbs
    def _ran_pars(self) -> pd.DataFrame:
        """Variance parameters for :meth:`tidy`: columns ``group, term, estimate`` (and optionally
        ``std_error``), terms named as broom.mixed (``sd__(Intercept)``, ``cor__(Intercept).Days``,
        ``sd__Observation`` in group ``Residual``). Families without random effects return no rows."""
        return pd.DataFrame(columns=["group", "term", "estimate"])

    def _ran_pars_confint(self, rp: pd.DataFrame, level: float) -> pd.DataFrame:
        """``rp`` (the rows of :meth:`_ran_pars`) with ``conf_low`` and ``conf_high`` at ``level``:
        estimate +- z * std_error where ``std_error`` is given, NaN otherwise. A family with its own
        intervals for the variance parameters (e.g. nlme's ``intervals``) overrides this."""
        if "std_error" in rp:
            z = stats.norm.ppf(0.5 + level / 2.0)
            rp["conf_low"] = rp["estimate"] - z * rp["std_error"]
            rp["conf_high"] = rp["estimate"] + z * rp["std_error"]
        else:
            rp["conf_low"] = np.nan
            rp["conf_high"] = np.nan
        return rp

    def tidy(
        self,
        effects: str | Iterable[str] = ("fixed", "ran_pars"),
        conf_int: bool = False,
        level: float = 0.95,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """broom.mixed's ``tidy``: one row per parameter.

        Parameters
        ----------
        effects : str or sequence of {"fixed", "ran_pars"}
        conf_int : bool
            Add ``conf_low`` and ``conf_high`` (Wald intervals for the fixed effects).
        level : float
        **kwargs
            Passed to :meth:`coef_table` (e.g. ``ddf="satterthwaite"``).

        Returns
        -------
        pandas.DataFrame
            Columns ``effect, group, term, estimate, std_error, statistic, df, p_value`` (+ ``conf_low,
            conf_high``), a default integer index.
        """
        wanted = [effects] if isinstance(effects, str) else list(effects)
        bad = [e for e in wanted if e not in ("fixed", "ran_pars")]
        if bad or not wanted:
            raise ArgumentError(f"effects must be 'fixed' and/or 'ran_pars', got {effects!r}")
        level = check_level(level)
        parts = []
        if "fixed" in wanted:
            table = self.coef_table(**kwargs)
            fixed = table.reset_index(names="term")
            fixed.insert(0, "group", None)
            fixed.insert(0, "effect", "fixed")
            if conf_int:
                # the family's Wald intervals, so tidy's conf_low/conf_high equal confint()
                ci = self._confint_wald(level, **kwargs).reindex(table.index)
                fixed["conf_low"] = ci["lower"].to_numpy()
                fixed["conf_high"] = ci["upper"].to_numpy()
            parts.append(fixed)
        if "ran_pars" in wanted:
            rp = self._ran_pars().copy()
            if len(rp):
                rp.insert(0, "effect", "ran_pars")
                if conf_int and "conf_low" not in rp:
                    rp = self._ran_pars_confint(rp, level)
                parts.append(rp)
        columns = TIDY_COLUMNS + (["conf_low", "conf_high"] if conf_int else [])
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame(columns=columns)
        out = pd.concat(parts, ignore_index=True)
        for c in columns:
            if c not in out:
                out[c] = np.nan
        return out[columns]

    def glance(self) -> pd.DataFrame:
        """broom.mixed's ``glance``: one row of fit statistics.

        Columns ``nobs, ngroups, sigma, logLik, AIC, BIC, deviance, df_residual, converged, singular``;
        ``ngroups`` is the number of levels of the (first, largest) grouping factor and, with several
        factors, ``ngroups_<factor>`` columns follow for each.
        """
        ng = self.ngroups
        row: dict[str, Any] = {
            "nobs": int(self.nobs),
            "ngroups": int(ng.iloc[0]) if len(ng) else np.nan,
            "sigma": float(self.sigma),
            "logLik": float(self.loglik),
            "AIC": float(self.aic),
            "BIC": float(self.bic),
            "deviance": float(self.deviance),
            "df_residual": float(self.df_resid),
            "converged": bool(self.converged),
            "singular": bool(self.singular),
        }
        if len(ng) > 1:
            for name, value in ng.items():
                row[f"ngroups_{name}"] = int(value)
        return pd.DataFrame([row])

    def _augment_data(self) -> pd.DataFrame:
        """The data the model was fitted to (all input rows, original index)."""
        data = getattr(getattr(self, "model", None), "data", None)
        if isinstance(data, pd.DataFrame):
            return data
        frame = getattr(getattr(self, "design", None), "frame", None)
        if frame is not None and isinstance(getattr(frame, "data", None), pd.DataFrame):
            # the model frame (the used columns, as broom.mixed's augment), on every input row
            return model_frame_rows(frame)
        raise MemoeError(f"{type_name(self)} does not keep its data; pass newdata to augment()")

    def _augment_extra(self) -> dict[str, pd.Series]:
        """Extra per-row columns for :meth:`augment` on the fitted data (``.hat``, ``.cooksd``, ...)."""
        return {}

    def augment(self, newdata: pd.DataFrame | None = None) -> pd.DataFrame:
        """broom.mixed's ``augment``: the data with ``.fitted``, ``.resid`` and ``.fixed`` columns.

        ``.fitted`` is the family's default prediction (conditional on the random effects for mixed
        models), ``.fixed`` the population-level prediction, ``.resid`` the response residual (where the
        response is present). Rows dropped for missing values get NaN. The data are copied, never
        changed in place.
        """
        if newdata is None:
            out = self._augment_data().copy()
            out[".fitted"] = self.fitted.to_numpy()
            out[".resid"] = self.resid.to_numpy()
            out[".fixed"] = self._population_prediction(None).to_numpy()
            for name, values in self._augment_extra().items():
                out[name] = np.asarray(values)
            return out
        out = to_pandas(newdata, "newdata").copy()
        fitted = self.predict(out)
        out[".fitted"] = fitted.to_numpy()
        out[".fixed"] = self._population_prediction(out).to_numpy()
        response = getattr(self, "response_name", None)
        if response is not None and response in out:
            y = pd.to_numeric(out[response], errors="coerce").to_numpy(dtype=float)
            out[".resid"] = y - out[".fitted"].to_numpy(dtype=float)
        return out

    def _population_prediction(self, newdata: pd.DataFrame | None) -> pd.Series:
        """Prediction without random effects (the same as :meth:`predict` for marginal families)."""
        return self.predict(newdata, re_form=None)

    # ------------------------------------------------------------------ figures
    @property
    def plot(self):
        """The fit's figures: ``fit.plot.residuals()``, ``.qq()``, ``.trajectories()``, ... (see
        :class:`memoe.plot.PlotAccessor`; ``fit.plot.available()`` lists those that apply)."""
        from memoe.plot import PlotAccessor

        return PlotAccessor(self)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle).

        ``memoe.load(path)`` gives it back with the same numbers; see :mod:`memoe.persist`.
        """
        # deferred: memoe.core.persist registers every family's codec, and those import their result classes
        from memoe.core.persist import save

        save(self, path)


def wald_interval(table: pd.DataFrame, level: float) -> pd.DataFrame:
    """Wald intervals from a :func:`coef_frame` table: t quantiles where ``df`` is finite, normal else."""
    est = table["estimate"].to_numpy(dtype=float)
    se = table["std_error"].to_numpy(dtype=float)
    df = table["df"].to_numpy(dtype=float) if "df" in table else np.full(est.shape, np.inf)
    q = 0.5 + level / 2.0
    if table.attrs.get("statistic") == "t":
        crit = np.where(np.isfinite(df), stats.t.ppf(q, np.where(np.isfinite(df), df, 1.0)), stats.norm.ppf(q))
    else:
        crit = np.full(est.shape, stats.norm.ppf(q))
    out = pd.DataFrame({"lower": est - crit * se, "upper": est + crit * se}, index=table.index)
    out.attrs["level"] = level
    out.attrs["method"] = "wald"
    return out


def model_frame_rows(frame) -> pd.DataFrame:
    """A model frame's kept rows spread back over every input row (all-missing rows where one was dropped).

    ``frame`` is a :class:`memoe.core.design.frame.ModelFrame` (``data``, ``row_mask``, ``index``).
    """
    data = frame.data
    if len(data) == len(frame.index):
        return data
    mask = np.asarray(frame.row_mask, dtype=bool)
    # each dropped row borrows a kept row's position and is then blanked, so dtypes survive where they can
    pos = np.clip(np.cumsum(mask) - 1, 0, max(len(data) - 1, 0))
    out = data.iloc[pos].copy()
    out.index = frame.index
    return out.mask(np.repeat(~mask[:, None], out.shape[1], axis=1))


def type_name(obj: Any) -> str:
    return type(obj).__name__

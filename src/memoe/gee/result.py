"""The fitted GEE (geepack's ``geeglm`` object) on memoe's shared result interface.

Choices that differ from the likelihood-based families, on purpose:

* ``vcov()`` is geepack's sandwich (``vbeta``), the estimator's own covariance: ``robust`` in
  ``("sandwich", "naive", None)``, where ``None`` is the same as ``"sandwich"`` (the family's default)
  and ``"naive"`` the model-based ``A^-1`` (``vbeta.naiv``). ``bse``, ``coef_table()``, ``confint()``
  and ``tidy()`` use the sandwich unless given ``robust="naive"``.
* ``coef_table()`` carries geepack's Wald chi-square on 1 df (``attrs["statistic"] == "chisq"``).
* A GEE has no likelihood: ``loglik``, ``aic``, ``bic`` and ``deviance`` raise a
  :class:`~memoe.errors.MemoeError` pointing to :meth:`GEEResult.qic`; ``information_criteria()``
  returns geepack's QIC family of criteria instead, and ``glance()`` reports ``logLik``, ``AIC``,
  ``BIC`` and ``deviance`` as NaN with an extra ``QIC`` column.
"""

from __future__ import annotations

import copy
import math
import warnings
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from memoe.core.design.newdata import (
    PredictArgumentError,
    check_allow_new_levels,
    check_type,
    nonfinite_rows,
    parse_re_form,
    require_dataframe,
    warn_nonfinite,
)
from memoe.core.result import GLANCE_COLUMNS, FitResult, coef_frame
from memoe.errors import ConvergenceWarning, MemoeError
from memoe.gee.correlation import WorkingCorrelation
from memoe.gee.families import linkinv as _linkinv
from memoe.gee.families import mu_eta, quasi_loglik, variance
from memoe.gee.summary import GEESummary

__all__ = ["GEEResult"]

_NO_LIKELIHOOD = (
    "a GEE is not likelihood-based, so it has no {what}; compare GEE fits with fit.qic() "
    "(QIC, QICu, CIC; also fit.information_criteria())"
)


class GEEResult(FitResult):
    """A fitted GEE (geepack's ``geeglm`` object and its ``summary``).

    The shared interface (:class:`~memoe.core.result.FitResult`) with the GEE conventions of the module
    docstring, plus:

    Attributes
    ----------
    scale : float
        The dispersion phi (geepack's ``gamma``; its starting value when ``scale_fix``). For the gaussian
        family the residual variance with denominator N.
    scale_se : float
        Its sandwich standard error (NaN when fixed).
    alpha : pandas.Series
        Working-correlation parameters (``"alpha"``, or ``"alpha.1:2"``, ... for unstructured; empty
        for independence). ``alpha_se`` their standard errors; ``vcov_alpha`` their covariance.
    working_correlation : pandas.DataFrame
        The T x T working correlation over waves 1..T.
    max_cluster_size : int
    cluster_sizes : pandas.Series
        Rows per cluster, in cluster order.
    n_iter : int
        geepack's iterations (one beta, phi and alpha update each).

    Methods
    -------
    qic()
        geepack's ``QIC`` (QIC, QICu, Quasi Lik, CIC, params, QICC).

    Examples
    --------
    >>> import memoe
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="ar1").fit()
    >>> fit.coef_table().columns.tolist()
    ['estimate', 'std_error', 'statistic', 'df', 'p_value']
    >>> round(fit.scale, 4) > 0
    True
    """


    family: ClassVar[str] = "gee"
    robust_types: ClassVar[tuple[str | None, ...]] = ("sandwich", "naive", None)
    residual_types: ClassVar[tuple[str, ...]] = ("response", "pearson", "working")
    confint_methods: ClassVar[tuple[str, ...]] = ("wald",)

    def __init__(
        self,
        model: Any,  # the GEE that was fitted (not imported: memoe.gee.model imports this module)
        beta: np.ndarray,
        phi: float,
        alpha_vec: np.ndarray,
        converged: bool,
        n_iter: int,
        vbeta: np.ndarray,
        vbeta_naive: np.ndarray,
        vgamma: np.ndarray,
        valpha: np.ndarray,
    ) -> None:
        self.model = model
        self.beta = np.asarray(beta, dtype=float)
        self.phi = float(phi)
        self.alpha_vec = np.asarray(alpha_vec, dtype=float)
        self._converged = bool(converged)
        self.n_iter = int(n_iter)
        self.vbeta = vbeta
        self.vbeta_naive = vbeta_naive
        self.vgamma = vgamma
        self.valpha = valpha
        self._qic: dict | None = None

    # -- coefficients and covariances ---------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return self.model.names

    @cached_property
    def params(self) -> pd.Series:
        return pd.Series(self.beta, index=self.names, name="estimate")

    def vcov(self, robust: str | None = "sandwich") -> pd.DataFrame:
        """Covariance of :attr:`params`: geepack's sandwich by default.

        Parameters
        ----------
        robust : {"sandwich", "naive", None}
            ``"sandwich"`` (and ``None``, the family's default): the robust ``vbeta`` that geepack
            reports; ``"naive"``: the model-based ``vbeta.naiv``.
        """
        return super().vcov(robust)

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        v = self.vbeta_naive if robust == "naive" else self.vbeta
        return pd.DataFrame(v, index=self.names, columns=self.names)

    @property
    def scale(self) -> float:
        return float(self.phi)

    @property
    def scale_se(self) -> float:
        return float(np.sqrt(self.vgamma[0, 0]))

    @cached_property
    def alpha(self) -> pd.Series:
        return pd.Series(self.alpha_vec, index=self.model._corr.names(), name="alpha", dtype=float)

    @cached_property
    def vcov_alpha(self) -> pd.DataFrame:
        n = self.model._corr.names()
        return pd.DataFrame(self.valpha, index=n, columns=n)

    @cached_property
    def alpha_se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.valpha)), index=self.alpha.index, name="alpha_se", dtype=float)

    @cached_property
    def working_correlation(self) -> pd.DataFrame:
        return self.model._corr.full_matrix(self.alpha_vec)

    # -- sizes and fit statistics -------------------------------------------------------------

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def nobs(self) -> int:
        return self.model.nobs

    @property
    def ngroups(self) -> pd.Series:
        """Number of clusters, labelled by the group column."""
        return pd.Series({self.model.group: self.model.n_clusters}, name="ngroups", dtype=int)

    @property
    def df_model(self) -> int:
        """Number of mean-model coefficients (geepack's ``df.residual`` is ``nobs`` minus this)."""
        return len(self.beta)

    @property
    def sigma(self) -> float:
        """sqrt(scale) for the gaussian family (the residual SD, denominator N); NaN for the others,
        whose scale is an overdispersion factor (see :attr:`scale`)."""
        return math.sqrt(self.phi) if self.model.family == "gaussian" else math.nan

    @property
    def max_cluster_size(self) -> int:
        return int(self.model._sizes.max())

    @cached_property
    def cluster_sizes(self) -> pd.Series:
        return pd.Series(self.model._sizes, index=self.model._cluster_labels, name="size")

    @property
    def n_dropped(self) -> int:
        return self.model._frame.n_dropped

    @property
    def response_name(self) -> str:
        return self.model.response

    # -- no likelihood: QIC instead -----------------------------------------------------------

    @property
    def loglik(self) -> float:
        """Not defined: raises a :class:`~memoe.errors.MemoeError` (see :meth:`qic`)."""
        raise MemoeError(_NO_LIKELIHOOD.format(what="log-likelihood"))

    @property
    def aic(self) -> float:
        """Not defined: raises a :class:`~memoe.errors.MemoeError` (see :meth:`qic`)."""
        raise MemoeError(_NO_LIKELIHOOD.format(what="AIC"))

    @property
    def bic(self) -> float:
        """Not defined: raises a :class:`~memoe.errors.MemoeError` (see :meth:`qic`)."""
        raise MemoeError(_NO_LIKELIHOOD.format(what="BIC"))

    @property
    def deviance(self) -> float:
        """Not defined: raises a :class:`~memoe.errors.MemoeError` (see :meth:`qic`)."""
        raise MemoeError(_NO_LIKELIHOOD.format(what="deviance"))

    def information_criteria(self) -> pd.Series:
        """geepack's quasi-likelihood criteria (the same Series as :meth:`qic`), GEE's counterpart of AIC/BIC."""
        return self.qic()

    def qic(self) -> pd.Series:
        """geepack's ``QIC``: QIC, QICu, Quasi Lik, CIC, params, QICC (refits the independence model).

        Returns
        -------
        pandas.Series
        """
        if self._qic is None:
            m = self.model
            quasi = quasi_loglik(m.family, m._y, self._mu)
            if m.corstr == "independence":
                naive_indep = self.vbeta_naive
            else:
                # the same data and design with an independence working correlation (geepack refits)
                indep = copy.copy(m)
                indep.corstr = "independence"
                indep._corr = WorkingCorrelation("independence", m._T)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    naive_indep = indep.fit().vbeta_naive
            trace = float(np.trace(np.linalg.solve(naive_indep, self.vbeta)))
            params = len(self.beta)
            kpm = params + len(self.alpha_vec)
            qic = -2.0 * (quasi - trace)
            self._qic = {
                "QIC": qic,
                "QICu": -2.0 * (quasi - params),
                "Quasi Lik": quasi,
                "CIC": trace,
                "params": float(params),
                # geepack 1.3.9's QICC penalty divides by (clusters - kpm - 1): its reference value
                # 545.9172 = 543.0600 + 60 / 21 for Orthodont's 27 clusters and kpm = 5
                "QICC": qic + 2.0 * kpm * (kpm + 1) / (m.n_clusters - kpm - 1),
            }
        return pd.Series(self._qic, name="QIC")

    def glance(self) -> pd.DataFrame:
        """One row: ``nobs, ngroups, sigma, logLik, AIC, BIC, deviance, df_residual, converged, singular``
        (the likelihood columns NaN, ``singular`` False) and ``QIC``."""
        row: dict[str, Any] = {
            "nobs": int(self.nobs),
            "ngroups": int(self.model.n_clusters),
            "sigma": float(self.sigma),
            "logLik": math.nan,
            "AIC": math.nan,
            "BIC": math.nan,
            "deviance": math.nan,
            "df_residual": float(self.df_resid),
            "converged": bool(self.converged),
            "singular": False,
            "QIC": float(self.qic()["QIC"]),
        }
        return pd.DataFrame([row], columns=[*GLANCE_COLUMNS, "QIC"])

    def _ran_pars(self) -> pd.DataFrame:
        """The working correlation parameters (group ``working_correlation``) and the scale (group
        ``Residual``, term ``scale``) with geepack's sandwich standard errors."""
        rows = [
            {"group": "working_correlation", "term": name, "estimate": est, "std_error": se}
            for name, est, se in zip(self.alpha.index, self.alpha_vec, self.alpha_se.to_numpy(), strict=True)
        ]
        rows.append({"group": "Residual", "term": "scale", "estimate": self.scale, "std_error": self.scale_se})
        return pd.DataFrame(rows, columns=["group", "term", "estimate", "std_error"])

    # -- per-row output -----------------------------------------------------------------------

    def _per_row(self, values_sorted: np.ndarray, name: str) -> pd.Series:
        """Back to input row order, NaN for rows dropped for missing values (R's ``na.exclude``)."""
        m = self.model
        kept = np.empty(len(values_sorted))
        kept[m._order] = values_sorted
        return m._frame.align(kept, name)

    @cached_property
    def _mu(self) -> np.ndarray:
        return _linkinv(self.model.family, self.model._X @ self.beta)

    @cached_property
    def fitted(self) -> pd.Series:
        return self._per_row(self._mu, "fitted")

    @cached_property
    def resid(self) -> pd.Series:
        return self._per_row(self.model._y - self._mu, "resid")

    def _residuals(self, kind: str) -> pd.Series:
        """``pearson``: (y - mu) / sqrt(v(mu)) (not divided by the scale, as R's glm residuals);
        ``working``: (y - mu) / (d mu / d eta)."""
        m = self.model
        if kind == "pearson":
            return self._per_row((m._y - self._mu) / np.sqrt(variance(m.family, self._mu)), "pearson")
        return self._per_row((m._y - self._mu) / mu_eta(m.family, m._X @ self.beta), "working")

    def _augment_data(self) -> pd.DataFrame:
        data, frame = self.model.data, self.model._frame
        if data.index.equals(frame.index):
            return data
        # a loaded fit keeps only the used columns of the kept rows: dropped rows come back as NaN
        return frame.data.reindex(frame.index)

    def _population_prediction(self, newdata: pd.DataFrame | None) -> pd.Series:
        # a GEE is marginal: its predictions are the population-level ones
        return self.predict(newdata)

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "full",
        type: str = "response",
        allow_new_levels: bool = False,
    ) -> pd.Series:
        """Population-averaged predictions (geeglm's ``predict``), with the signature shared by every family.

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Rows to predict; ``None`` gives the fitted values of the data. Factor levels are matched
            by value (``8``, ``8.0`` and ``"8"`` are one level); a level not in the fit raises
            :class:`~memoe.core.design.newdata.NewLevelError`. The cluster column is not needed.
        re_form : {"full", None, "~0"}
            Accepted for a uniform call; a GEE has no random effects, so every value gives the same
            marginal mean. A formula of random-effects terms is refused.
        type : {"response", "link"}
            Mean scale or linear predictor.
        allow_new_levels : bool
            Accepted for a uniform call; clusters are not used in predictions (new factor levels of
            the fixed effects are always refused).

        Returns
        -------
        pandas.Series
            Indexed as ``newdata``; NaN where a predictor is missing or infinite (with a warning).
        """
        check_type(type)
        rf = parse_re_form(re_form)
        if rf not in ("full", None):
            raise PredictArgumentError(
                f"re_form {re_form!r}: a GEE has no random effects; use 'full' or None (the same marginal mean)"
            )
        check_allow_new_levels(allow_new_levels)
        if newdata is None:
            eta = self._per_row(self.model._X @ self.beta, "link")
            return eta if type == "link" else self.fitted
        newdata = require_dataframe(newdata)
        X = self.model._fixed.matrix_for(newdata)
        eta = warn_nonfinite(X @ self.beta, nonfinite_rows(X))
        out = eta if type == "link" else _linkinv(self.model.family, eta)
        return pd.Series(out, index=newdata.index, name="fitted" if type == "response" else "link")

    # -- tables -------------------------------------------------------------------------------

    def coef_table(self, robust: str | None = "sandwich") -> pd.DataFrame:
        """geepack's ``summary(geeglm)$coefficients`` in memoe's standard columns.

        Parameters
        ----------
        robust : {"sandwich", "naive", None}
            Sandwich standard errors (geepack's default ``std.err = "san.se"``; also ``None``) or the
            naive (model-based) ones.

        Returns
        -------
        pandas.DataFrame
            Columns ``estimate, std_error, statistic, df, p_value``: the statistic is geepack's Wald
            ``(estimate / std_error)^2`` referred to chi-square with 1 df (``attrs["statistic"] ==
            "chisq"``); ``attrs["vcov"]`` names the covariance used.
        """
        v = self.vcov(robust)
        se = np.sqrt(np.diag(v.to_numpy()))
        out = coef_frame(self.beta, se, self.names, statistic="chisq")
        out.attrs["vcov"] = "naive" if (isinstance(robust, str) and robust.strip().lower() == "naive") else "sandwich"
        return out

    def summary(self) -> GEESummary:
        """geepack's ``print(summary(geeglm))`` as a :class:`~memoe.gee.summary.GEESummary`."""
        return GEESummary(self)

    def __repr__(self) -> str:
        return (
            f"<GEEResult {self.model.formula!r} family={self.model.family} corstr={self.model.corstr} "
            f"nobs={self.nobs} ngroups={self.model.n_clusters}>"
        )

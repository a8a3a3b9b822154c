"""Per-group least-squares fits (lme4's ``lmList``): the first stage of a two-stage analysis.

``memoe.lmlist("Reaction ~ Days | Subject", data)`` fits ``Reaction ~ Days`` separately in every level
of ``Subject``. All groups are solved together: the rows are padded into one array of shape
(groups, max rows, p) and factored by one stacked QR (``numpy.linalg.qr`` over the leading axis), so
there is no Python loop over groups.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from memoe.core.design.fixed import RANK_TOL, model_matrix_with_contrasts
from memoe.core.design.frame import build_frame, numeric_response
from memoe.core.design.grouping import make_grouping_factor
from memoe.core.design.newdata import require_dataframe
from memoe.core.formula.parse import FormulaSpec, split_top_level
from memoe.core.frames import to_pandas
from memoe.core.result import FitResult
from memoe.errors import ArgumentError, DataError, FormulaError, FormulaTypeError

__all__ = ["LmList", "LmListResult", "lmlist"]

LOG_2PI = math.log(2.0 * math.pi)


def _split(formula: str) -> tuple[str, str, str]:
    """``"y ~ x | g"`` -> ``("y", "x", "g")``."""
    if not isinstance(formula, str):
        raise FormulaTypeError(f"formula must be a string such as 'y ~ x | g', got {type(formula).__name__}")
    sides = split_top_level(formula, "~", formula)
    if len(sides) != 2 or not sides[0][1].strip():
        raise FormulaError(f"formula {formula!r} must have the form 'response ~ terms | group'")
    rhs = sides[1][1]
    parts = split_top_level(rhs, "|", formula)
    if len(parts) != 2 or not parts[1][1].strip():
        raise FormulaError(
            f"formula {formula!r} needs one grouping factor after a top-level '|', e.g. 'Reaction ~ Days | Subject' "
            "(lme4's lmList syntax)"
        )
    terms = parts[0][1].strip() or "1"
    return sides[0][1].strip(), terms, parts[1][1].strip()


class LmList:
    """Separate linear models per level of a grouping factor (lme4's ``lmList``).

    Parameters
    ----------
    formula : str
        ``"response ~ terms | group"``; ``group`` a column or an interaction ``a:b``.
    data : pandas.DataFrame
        Rows with a missing value in a used column are dropped first (R's ``na.omit``).
    pool : bool, default True
        Standard errors of :meth:`LmListResult.coef_table` from the pooled residual SD (lme4's
        ``summary(lmList, pool = TRUE)``) or each group's own.

    Notes
    -----
    The model columns are built once on all rows (R's levels and contrasts); a column that is
    aliased within a group (a covariate constant in that group, a factor level absent from it, or too
    few rows) gets an ``NA`` coefficient there, as ``lm`` gives with its pivoted QR (criterion of R's
    ``dqrdc2``, tolerance 1e-7). lme4 fits each group on its own subset of the model frame, so a factor
    whose *reference* level is absent from a group is coded differently there by lme4.

    R equivalent
    ------------
    ``lme4::lmList(Reaction ~ Days | Subject, sleepstudy)`` (the model half; :func:`lmlist` fits it).

    Examples
    --------
    >>> import memoe
    >>> from memoe.lmm import LmList, LmListResult
    >>> model = LmList("Reaction ~ Days | Subject", memoe.datasets.load("sleepstudy"))
    >>> model.names
    ['(Intercept)', 'Days']
    >>> round(float(LmListResult(model).fixef["Days"]), 4)
    10.4673
    """

    def __init__(self, formula: str, data: pd.DataFrame, pool: bool = True) -> None:
        response, terms, group = _split(formula)
        if not isinstance(pool, (bool, np.bool_)):
            raise ArgumentError(f"pool must be True or False, got {pool!r}")
        data = to_pandas(data, "data")
        self.formula = formula
        self.pool = bool(pool)
        self.data_name = data.attrs.get("name") if isinstance(data, pd.DataFrame) else None
        group_factors = tuple(g.strip() for g in group.split(":"))
        spec = FormulaSpec(response=response, fixed=terms, random=(), text=formula)
        self.frame = build_frame(spec, data, extra=group_factors)
        fd = self.frame.data
        self.response = response
        self.y = numeric_response(fd, response)
        if not np.all(np.isfinite(self.y)):
            raise DataError(f"response {response!r} has {int((~np.isfinite(self.y)).sum())} non-finite values")
        self.spec = spec
        self.X, self.model_spec, self.names, self.contrasts = model_matrix_with_contrasts(terms, fd, what="the model")
        if self.X.shape[1] == 0:
            raise FormulaError(f"formula {formula!r} gives no coefficients to fit per group")
        self.factor = make_grouping_factor(fd, group_factors)

    @property
    def n(self) -> int:
        """Number of rows used."""
        return len(self.y)

    @property
    def terms(self) -> tuple:
        """No random-effects terms (the groups' coefficients are fixed per group)."""
        return ()


def _batched_ls(X: np.ndarray, y: np.ndarray, codes: np.ndarray, ngroups: int):
    """Least squares in every group at once, with R's aliasing rule.

    Returns
    -------
    beta : (G, p) with NaN for aliased columns
    cov : (G, p, p) ``(X_g' X_g)^-1`` over the estimable columns, NaN elsewhere
    rank : (G,) int
    """
    n, p = X.shape
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=ngroups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - np.repeat(starts, counts)
    nmax = max(int(counts.max()), p)
    Xp = np.zeros((ngroups, nmax, p))
    yp = np.zeros((ngroups, nmax))
    g_sorted = codes[order]
    Xp[g_sorted, pos] = X[order]
    yp[g_sorted, pos] = y[order]
    # R's dqrdc2: a column is aliased when its residual after the earlier columns is below tol x its
    # norm; |R_jj| of an unpivoted QR is that residual norm whatever happened to earlier columns
    norms = np.sqrt((Xp * Xp).sum(axis=1))
    R0 = np.linalg.qr(Xp, mode="r")
    diag = np.abs(np.diagonal(R0, axis1=1, axis2=2))
    keep = (diag >= RANK_TOL * norms) & (norms > 0)
    rank = keep.sum(axis=1)
    # kept columns first (stable), then a QR of the reordered rows: its leading rank x rank block
    # is the factor of the estimable columns
    perm = np.argsort(~keep, axis=1, kind="stable")
    Xq = np.take_along_axis(Xp, perm[:, None, :], axis=2)
    Q, R = np.linalg.qr(Xq, mode="reduced")
    qty = np.einsum("gnp,gn->gp", Q, yp)
    idx = np.arange(p)
    inside = idx[None, :] < rank[:, None]
    both = inside[:, :, None] & inside[:, None, :]
    Rm = np.where(both, R, 0.0)
    Rm[:, idx, idx] = np.where(inside, Rm[:, idx, idx], 1.0)
    rhs = np.where(inside, qty, 0.0)
    b_perm = np.linalg.solve(Rm, rhs[..., None])[..., 0]
    Rinv = np.linalg.solve(Rm, np.broadcast_to(np.eye(p), Rm.shape))
    cov_perm = Rinv @ np.swapaxes(Rinv, 1, 2)
    b_perm = np.where(inside, b_perm, np.nan)
    cov_perm = np.where(both, cov_perm, np.nan)
    inv = np.argsort(perm, axis=1)
    beta = np.take_along_axis(b_perm, inv, axis=1)
    cov = np.take_along_axis(np.take_along_axis(cov_perm, inv[:, :, None], axis=1), inv[:, None, :], axis=2)
    return beta, cov, rank, counts


class LmListResult(FitResult):
    """Per-group OLS fits (lme4's ``lmList4``).

    ``coef()`` is lme4's ``coef(lmList)`` (groups x coefficients, NaN where a coefficient is not
    estimable in a group); :meth:`coef_table` and :meth:`group_table` give lme4's
    ``summary(lmList)$coefficients`` (estimate, SE, t, p per group and coefficient, pooled residual SD
    by default); :meth:`confint` is ``confint(lmList)``; ``plot.intervals()`` draws the intervals per group.

    ``params`` flattens the coefficients as ``"<term>|<group>"``; ``fixef`` is lme4's ``fixef(lmList)``
    (the mean over groups of each coefficient). ``loglik`` is lme4's ``logLik(lmList)``: one Gaussian
    likelihood with separate coefficients per group and the common (pooled) residual variance, ML.

    Built by :func:`memoe.lmlist` (users do not construct it).

    Examples
    --------
    >>> import memoe
    >>> fits = memoe.lmlist("Reaction ~ Days | Subject", memoe.datasets.load("sleepstudy"))
    >>> fits.coef_table().loc["Days|308", ["estimate", "std_error"]].round(4).tolist()
    [21.7647, 2.8176]
    >>> round(fits.loglik, 4)
    -818.9351
    """

    family = "lmlist"
    confint_methods = ("wald",)

    def __init__(self, model: LmList) -> None:
        self.model = model
        # the shared interface reads the model frame (augment, alignment) from ``design.frame``
        self.design = model
        m = model
        G = m.factor.nlevels
        codes = m.factor.codes
        beta, cov, rank, counts = _batched_ls(m.X, m.y, codes, G)
        self.beta, self.cov_unscaled, self.rank, self.group_nobs = beta, cov, rank, counts
        fit = np.einsum("np,np->n", m.X, np.nan_to_num(beta)[codes])
        self._fitted = fit
        r = m.y - fit
        self.rss = np.bincount(codes, weights=r * r, minlength=G)
        p = m.X.shape[1]
        # lme4's pooledSD counts every coefficient of a group, estimable or not (length(coef(lm)))
        self.pooled_df = int((counts - p).sum())
        if self.pooled_df <= 0:
            raise DataError(
                f"no residual degrees of freedom to estimate the pooled SD: {m.X.shape[0]} rows in {G} groups "
                f"with {p} coefficients each (lme4: 'No degrees of freedom for estimating std. dev.')"
            )
        self.pooled_sd = math.sqrt(float(self.rss.sum()) / self.pooled_df)
        self.group_df = counts - rank
        with np.errstate(divide="ignore", invalid="ignore"):
            self.group_sigma = np.sqrt(self.rss / self.group_df)
        self.group_sigma[self.group_df <= 0] = np.nan

    # ------------------------------------------------------------------ coefficients
    @property
    def groups(self) -> pd.Index:
        return pd.Index(self.model.factor.levels, name=self.model.factor.name)

    def coef(self) -> pd.DataFrame:
        """lme4's ``coef(lmList)``: groups x coefficients (NaN where not estimable in a group)."""
        return pd.DataFrame(self.beta, index=self.groups, columns=self.model.names)

    @property
    def fixef(self) -> pd.Series:
        """lme4's ``fixef(lmList)``: the mean over groups of each coefficient (missing ones skipped)."""
        with np.errstate(invalid="ignore"):
            return pd.Series(np.nanmean(self.beta, axis=0), index=self.model.names, name="estimate")

    @property
    def params(self) -> pd.Series:
        vals = self.beta.ravel()
        return pd.Series(vals, index=self._param_names(), name="estimate")

    def _param_names(self) -> list[str]:
        return [f"{t}|{g}" for g in self.groups for t in self.model.names]

    def _se(self, pool: bool) -> np.ndarray:
        d = np.sqrt(np.diagonal(self.cov_unscaled, axis1=1, axis2=2))
        if pool:
            # lme4 rescales each group's summary.lm SEs by RSE / sigma_g: a group without residual df
            # (sigma_g = 0/0) keeps NA standard errors even when pooled
            se = d * self.pooled_sd
            se[self.group_df <= 0] = np.nan
            return se
        return d * self.group_sigma[:, None]

    def _vcov(self, robust: str | None) -> pd.DataFrame:
        G, p = self.beta.shape
        V = np.zeros((G * p, G * p))
        for_blocks = self.pooled_sd**2 * self.cov_unscaled
        idx = np.arange(G)[:, None] * p + np.arange(p)[None, :]
        V[idx[:, :, None], idx[:, None, :]] = for_blocks
        names = self._param_names()
        return pd.DataFrame(V, index=names, columns=names)

    def group_table(self, pool: bool | None = None) -> pd.DataFrame:
        """lme4's ``summary(lmList)$coefficients`` in long form.

        Parameters
        ----------
        pool : bool, optional
            Default the model's ``pool`` (True): SEs from the pooled residual SD and t tests on the
            pooled df (lme4's default); False: each group's own ``summary.lm``.

        Returns
        -------
        pandas.DataFrame
            Index (group, term); columns ``estimate, std_error, statistic, df, p_value``.
        """
        pool = self.model.pool if pool is None else bool(pool)
        se = self._se(pool)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.beta / se
        df = np.full(self.beta.shape, float(self.pooled_df)) if pool else np.repeat(
            self.group_df[:, None].astype(float), self.beta.shape[1], axis=1
        )
        with np.errstate(invalid="ignore"):
            pv = 2.0 * stats.t.sf(np.abs(t), np.where(df > 0, df, np.nan))
        index = pd.MultiIndex.from_product([self.groups, self.model.names], names=[self.groups.name, "term"])
        out = pd.DataFrame(
            {"estimate": self.beta.ravel(), "std_error": se.ravel(), "statistic": t.ravel(), "df": df.ravel(),
             "p_value": pv.ravel()}, index=index,
        )
        out.attrs.update({"statistic": "t", "ddf": "pooled" if pool else "group"})
        return out

    def coef_table(self, pool: bool | None = None) -> pd.DataFrame:
        """:meth:`group_table` with flat row names ``"<term>|<group>"`` (the shared table layout)."""
        tab = self.group_table(pool)
        out = tab.reset_index(drop=True)
        out.index = self._param_names()
        out.attrs.update(tab.attrs)
        return out

    def _confint_wald(self, level: float, parm=None, pool: bool = False, **kwargs: Any) -> pd.DataFrame:
        """lme4's ``confint(lmList)``: each group's ``confint.lm`` (its own SD and df) unless ``pool=True``.

        lme4's ``confint.lmList4`` looks for the pool setting where the object does not store it, so its
        intervals are the per-group ones; ``pool=True`` gives the pooled-SD intervals it meant to offer.
        """
        a = (1.0 - level) / 2.0
        if pool:
            se = self.pooled_sd * np.sqrt(np.diagonal(self.cov_unscaled, axis1=1, axis2=2))
            q = stats.t.ppf(1.0 - a, self.pooled_df)
        else:
            se = self._se(False)
            with np.errstate(invalid="ignore"):
                q = stats.t.ppf(1.0 - a, np.where(self.group_df > 0, self.group_df, np.nan))[:, None]
        lo, hi = self.beta - q * se, self.beta + q * se
        out = pd.DataFrame({"lower": lo.ravel(), "upper": hi.ravel()}, index=self._param_names())
        if parm is not None:
            out = out.loc[list(parm)]
        out.attrs.update({"level": level, "method": "wald", "pool": bool(pool)})
        return out

    def confint_frame(self, level: float = 0.95, pool: bool = False) -> pd.DataFrame:
        """:meth:`confint` in long form: index (group, term), columns ``estimate, lower, upper``."""
        ci = self.confint(level=level, pool=pool)
        index = pd.MultiIndex.from_product([self.groups, self.model.names], names=[self.groups.name, "term"])
        return pd.DataFrame(
            {"estimate": self.beta.ravel(), "lower": ci["lower"].to_numpy(), "upper": ci["upper"].to_numpy()},
            index=index,
        )

    # ------------------------------------------------------------------ fit statistics
    @property
    def sigma(self) -> float:
        """The pooled residual SD (lme4's ``sigma(lmList)``)."""
        return self.pooled_sd

    @cached_property
    def loglik(self) -> float:
        """lme4's ``logLik(lmList)`` (ML, pooled variance): ``-N/2 (log(2 pi) + 1 - log N + log RSS)``."""
        n = len(self.model.y)
        return -0.5 * n * (LOG_2PI + 1.0 - math.log(n) + math.log(float(self.rss.sum())))

    @property
    def df_model(self) -> int:
        """Estimable coefficients of all groups plus the residual variance (lme4's ``df``)."""
        return int(self.rank.sum()) + 1

    @property
    def nobs(self) -> int:
        return len(self.model.y)

    @property
    def n_dropped(self) -> int:
        return self.model.frame.n_dropped

    @property
    def ngroups(self) -> pd.Series:
        return pd.Series({self.model.factor.name: self.model.factor.nlevels}, name="ngroups", dtype=int)

    @property
    def r_squared(self) -> pd.Series:
        """Each group's ``summary.lm`` R^2: ``mss / (mss + rss)``, 0 when only the intercept is estimable."""
        m = self.model
        codes = m.factor.codes
        G = m.factor.nlevels
        f = self._fitted
        intercept = "(Intercept)" in m.names
        if intercept:
            mean = np.bincount(codes, weights=f, minlength=G) / np.maximum(self.group_nobs, 1)
            mss = np.bincount(codes, weights=(f - mean[codes]) ** 2, minlength=G)
        else:
            mss = np.bincount(codes, weights=f**2, minlength=G)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = mss / (mss + self.rss)
        r2[self.rank == int(intercept)] = 0.0
        return pd.Series(r2, index=self.groups, name="r_squared")

    # ------------------------------------------------------------------ per-row values
    @property
    def response_name(self) -> str:
        """The response as written in the formula (the column ``augment(newdata)`` reads)."""
        return self.model.response

    @property
    def fitted(self) -> pd.Series:
        return self.model.frame.align(self._fitted, "fitted")

    @property
    def resid(self) -> pd.Series:
        return self.model.frame.align(self.model.y - self._fitted, "resid")

    def predict(self, newdata: pd.DataFrame | None = None, re_form: str | None = "full") -> pd.Series:
        """Predictions from each row's own group fit (lme4's ``predict(lmList, newdata)``).

        Parameters
        ----------
        newdata : pandas.DataFrame, optional
            Default: the fitted rows. Predictions come back in ``newdata``'s row order (lme4 returns
            them grouped).
        re_form : {"full", None, "~0"}
            ``"full"``: each group's coefficients (coefficients not estimable in a group count as 0, as
            R's ``predict.lm`` on a rank-deficient fit; a group not in the fit raises
            :class:`~memoe.core.design.newdata.NewLevelError`); ``None`` / ``"~0"``: the mean
            coefficients :attr:`fixef` (the first-stage estimate of the population line).
        """
        from memoe.core.design.fixed import evaluate_matrix
        from memoe.core.design.newdata import group_codes, parse_re_form

        rf = parse_re_form(re_form)
        if rf not in ("full", None):
            raise ArgumentError(f"re_form must be 'full', None or '~0' for an lmList, got {re_form!r}")
        if newdata is None:
            if rf == "full":
                return self.fitted.rename("predicted")
            return self.model.frame.align(self.model.X @ np.nan_to_num(self.fixef.to_numpy()), "predicted")
        newdata = require_dataframe(newdata)
        X = evaluate_matrix(self.model.model_spec, newdata, "the model")
        if rf is None:
            return pd.Series(X @ np.nan_to_num(self.fixef.to_numpy()), index=newdata.index, name="predicted")
        codes = group_codes(self.model.factor.name, self.groups, newdata, False)
        ok = codes >= 0
        out = np.full(len(newdata), np.nan)
        out[ok] = np.einsum("np,np->n", X[ok], np.nan_to_num(self.beta)[codes[ok]])
        return pd.Series(out, index=newdata.index, name="predicted")

    def summary(self):
        """``summary(lmList)``: per-group coefficient tables with the pooled residual SD."""
        from memoe.lmm.lmlist_summary import LmListSummary

        return LmListSummary(self)

    @property
    def plot(self):
        """The fit's figures (:class:`memoe.plot.PlotAccessor`) plus ``fit.plot.intervals()``: the confidence
        intervals of every coefficient per group (lme4's ``plot(confint(lmList))``)."""
        from memoe.lmm.lmlist_summary import LmListPlotAccessor

        return LmListPlotAccessor(self)

    def __repr__(self) -> str:
        return f"<LmListResult {self.model.formula!r} groups={len(self.groups)} nobs={self.nobs}>"


def lmlist(formula: str, data: pd.DataFrame, pool: bool = True) -> LmListResult:
    """Fit a linear model per level of a grouping factor (lme4's ``lmList``).

    Parameters
    ----------
    formula : str
        ``"response ~ terms | group"``, e.g. ``"Reaction ~ Days | Subject"``.
    data : pandas.DataFrame
    pool : bool, default True
        Pooled residual SD for the coefficient tables (lme4's default).

    Returns
    -------
    LmListResult

    R equivalent
    ------------
    ``lme4::lmList(Reaction ~ Days | Subject, sleepstudy)``.

    Examples
    --------
    >>> import memoe
    >>> ss = memoe.datasets.load("sleepstudy")
    >>> fits = memoe.lmlist("Reaction ~ Days | Subject", ss)
    >>> round(float(fits.coef().loc["308", "Days"]), 4)
    21.7647
    >>> round(fits.sigma, 4)
    25.5918
    """
    return LmListResult(LmList(formula, data, pool=pool))

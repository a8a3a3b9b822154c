"""Generalised estimating equations (marginal models) with geepack's ``geeglm`` numbers.

``gee(formula, data, group, family, corstr, time).fit()`` reproduces R's
``geepack::geeglm(formula, id = group, waves = time, family = family, corstr = corstr)``:
the same estimating equations, the same moment estimators, the same starting values, the same
update order and the same stopping rule, so the estimates agree with geepack's to rounding (the
Orthodont references agree to ~1e-14), not merely to geepack's iteration tolerance.

Why not statsmodels' ``GEE``: it estimates the dispersion with ``N - p`` in the denominator and
the exchangeable and AR(1) correlations with other moment estimators and another iteration scheme.
On Orthodont (``distance ~ age * Sex``) statsmodels gives scale 5.0938 against geepack's 4.9052,
exchangeable alpha 0.6100 against 0.6178, and for AR(1) alpha 0.7396 against 0.7593 and
coefficients 1.4e-2 (relative) away. statsmodels is used for what it does identically: the
independence GLM that provides geepack's starting values.

geepack's algorithm (``geese.fit`` and ``gee_est`` in ``gee2.cc``), with Pearson residuals
``r = (y - mu) / sqrt(v(mu))``, ``D = diag(mu_eta / sqrt(v(mu))) X`` and the working correlation
``R(alpha)`` of each cluster, repeats until the largest absolute change is at most ``tol`` (1e-4):

1. beta: one Fisher-scoring step ``beta += (sum D' R^-1 D)^-1 sum D' R^-1 r`` (phi cancels);
2. scale: ``phi = sum r^2 / N`` at the new beta (denominator ``N``, not ``N - p``);
3. alpha: one Gauss-Newton step of ``sum_i sum_{j<k} dE'(r_ij r_ik / phi - rho_jk(alpha))``:
   exchangeable gives the mean of all within-cluster products ``r_ij r_ik / phi``; unstructured the
   mean per pair of waves; AR(1) (``rho = alpha^|w_j - w_k|``) the Gauss-Newton step with
   derivative ``lag * alpha^(lag - 1)`` (1 for lag 1).

Start: the independence GLM's coefficients (R's ``glm``), alpha = 0 and phi = mean of its squared
Pearson residuals. The robust covariance is the sandwich ``A^-1 (sum U_i U_i') A^-1`` with
``A = sum D' V^-1 D``, ``V = phi R`` and ``U_i = D_i' V_i^-1 r_i`` (no small-sample correction); the
naive covariance is ``A^-1``. The standard errors of phi and alpha are geepack's joint sandwich
over (beta, phi, alpha) (``gee_var``), including geepack's exact derivative terms.

Row order (what geepack assumes and what memoe does):

* geepack forms clusters from *runs* of equal ids in row order. memoe groups all rows of a group
  wherever they are: when the rows of a group are not contiguous it sorts them (stably) and warns
  with :class:`GEEOrderWarning`, because R would have split such a group into several clusters.
* ``time=None``: the rows of a cluster keep their order; the wave of a row is its position in the
  cluster (1, 2, ...), geepack's default ``waves``. AR(1) and unstructured correlations use it.
* ``time="col"``: rows are sorted by ``col`` within each cluster and the wave is the rank of the
  row's value among the distinct values of ``col`` in the data (geepack's
  ``waves = as.integer(as.factor(col))``), so gaps count in AR(1) lags. Repeated times within a
  cluster are an error.

Where memoe differs from geepack on purpose:

* ``Pr(>|W|)`` uses the chi-square survival function; geepack's ``1 - pchisq(W, 1)`` cancels to 0
  below ~1e-16 and loses relative accuracy below ~1e-12 (absolute agreement stays ~1e-16).
* Clusters of one row contribute nothing to the alpha equations in the covariance of alpha, as
  in the estimation (``update_alpha``). The geepack ``gee_var`` sources read for this module
  (not necessarily 1.3.9's) re-add the previous cluster's alpha contributions for each such
  cluster (``Hess``/``Grad`` declared outside the loop, ``HiandGi`` returns early); if 1.3.9 does
  so too, only ``alpha_se`` differs, and only with one-row clusters (no reference case has any).
* A correlation that no cluster can inform is an error (every cluster of one row; unstructured
  wave pairs never observed together); geepack's failing LU solve leaves zeros or garbage there.
* Unstructured correlation with ``time``: each pair of waves has its own parameter; geepack
  indexes a cluster-sized matrix by wave numbers, which is only defined for complete clusters.
* No prior weights, offsets, other links or jackknife variances (geeglm's ``weights``,
  ``offset``, ``std.err = "jack"``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats

from memoe.core.design.fixed import build_fixed
from memoe.core.design.frame import build_frame, numeric_response
from memoe.core.design.grouping import make_grouping_factor
from memoe.core.formula.parse import parse_formula
from memoe.core.rformat import format_pval, format_table, r_format, signif_stars
from memoe.core.vcov import VcovFrame
from memoe.errors import ConvergenceError, ConvergenceWarning, DataError, FormulaError, HypothesisError, MemoeWarning

__all__ = ["GEE", "GEEOrderWarning", "GEEResult", "gee"]

FAMILIES = ("gaussian", "binomial", "poisson")
LINKS = {"gaussian": "identity", "binomial": "logit", "poisson": "log"}
CORSTRS = ("independence", "exchangeable", "ar1", "unstructured")

_EPS = np.finfo(float).eps
# geepack clamps the logit linear predictor at -log(DBL_EPSILON) (famstr.cc)
_LOGIT_THRES = -math.log(_EPS)


class GEEOrderWarning(MemoeWarning):
    """The rows of a group were not contiguous; memoe grouped them (geepack would split them)."""


# ---------------------------------------------------------------------------------------------
# families: geepack's link and variance functions, with its clamps (famstr.cc)


def _linkinv(family: str, eta: np.ndarray) -> np.ndarray:
    if family == "gaussian":
        return eta
    if family == "binomial":
        e = np.exp(np.clip(eta, -_LOGIT_THRES, _LOGIT_THRES))
        return e / (1.0 + e)
    return np.maximum(_EPS, np.exp(eta))


def _mu_eta(family: str, eta: np.ndarray) -> np.ndarray:
    if family == "gaussian":
        return np.ones_like(eta)
    if family == "binomial":
        e = np.exp(np.clip(eta, -_LOGIT_THRES, _LOGIT_THRES))
        return np.where(np.abs(eta) >= _LOGIT_THRES, _EPS, e / (1.0 + e) ** 2)
    return np.maximum(_EPS, np.exp(eta))


def _variance(family: str, mu: np.ndarray) -> np.ndarray:
    if family == "gaussian":
        return np.ones_like(mu)
    if family == "binomial":
        return mu * (1.0 - mu)
    return mu


def _variance_mu(family: str, mu: np.ndarray) -> np.ndarray:
    if family == "gaussian":
        return np.zeros_like(mu)
    if family == "binomial":
        return 1.0 - 2.0 * mu
    return np.ones_like(mu)


def _quasi_loglik(family: str, y: np.ndarray, mu: np.ndarray) -> float:
    """geepack's ``QIC`` quasi-likelihood (scale and weights 1)."""
    if family == "gaussian":
        return float(np.sum((y - mu) ** 2) / -2.0)
    if family == "binomial":
        return float(np.sum(y * np.log(mu / (1.0 - mu)) + np.log(1.0 - mu)))
    return float(np.sum(y * np.log(mu) - mu))


# ---------------------------------------------------------------------------------------------
# clusters batched by size: every per-cluster computation is one batched array operation


@dataclass(frozen=True)
class _Batch:
    """All clusters of one size ``s``: (G, s, ...) arrays in sorted-row order."""

    rows: np.ndarray  # (G, s) positions in the sorted arrays
    X: np.ndarray  # (G, s, p)
    y: np.ndarray  # (G, s)
    waves: np.ndarray  # (G, s), 1-based
    pj: np.ndarray  # (m,) first index of each within-cluster pair j < k (geepack's order)
    pk: np.ndarray  # (m,) second index
    lag: np.ndarray  # (G, m) |w_k - w_j|
    pair_param: np.ndarray  # (G, m) unstructured parameter of each pair

    @property
    def s(self) -> int:
        return self.y.shape[1]


def _unstructured_index(a: np.ndarray, b: np.ndarray, T: int) -> np.ndarray:
    """Position of the wave pair (a, b), 1 <= a < b <= T, in geepack's order (1:2, 1:3, ..., 2:3, ...)."""
    a0 = a - 1
    return (a0 * (2 * T - a0 - 1)) // 2 + (b - a - 1)


def _make_batches(X: np.ndarray, y: np.ndarray, waves: np.ndarray, starts: np.ndarray, T: int) -> list[_Batch]:
    sizes = np.diff(np.r_[starts, len(y)])
    out = []
    for s in np.unique(sizes):
        first = starts[sizes == s]
        rows = first[:, None] + np.arange(s)[None, :]
        pj, pk = np.triu_indices(int(s), 1)
        w = waves[rows]
        lo, hi = np.minimum(w[:, pj], w[:, pk]), np.maximum(w[:, pj], w[:, pk])
        out.append(
            _Batch(
                rows=rows,
                X=X[rows],
                y=y[rows],
                waves=w,
                pj=pj,
                pk=pk,
                lag=(hi - lo).astype(float),
                pair_param=_unstructured_index(lo, hi, T) if len(pj) else np.zeros((len(first), 0), dtype=int),
            )
        )
    return out


class _Corr:
    """geepack's working correlations: R(alpha) per cluster and dR/dalpha per pair (``E``)."""

    def __init__(self, corstr: str, T: int) -> None:
        self.corstr = corstr
        self.T = T
        if corstr == "independence":
            self.q = 0
        elif corstr in ("exchangeable", "ar1"):
            self.q = 1
        else:
            self.q = T * (T - 1) // 2

    def names(self) -> list[str]:
        if self.corstr in ("exchangeable", "ar1"):
            return ["alpha"]
        if self.corstr == "unstructured":
            a, b = np.triu_indices(self.T, 1)
            return [f"alpha.{i + 1}:{j + 1}" for i, j in zip(a, b, strict=True)]
        return []

    def pair_rho(self, b: _Batch, alpha: np.ndarray) -> np.ndarray:
        """Working correlation of every within-cluster pair, (G, m)."""
        if self.corstr == "independence":
            return np.zeros(b.lag.shape)
        if self.corstr == "exchangeable":
            return np.full(b.lag.shape, alpha[0])
        if self.corstr == "ar1":
            return alpha[0] ** b.lag
        return alpha[b.pair_param]

    def matrix(self, b: _Batch, alpha: np.ndarray) -> np.ndarray:
        """R(alpha) of every cluster of the batch, (G, s, s)."""
        G, s = b.y.shape
        R = np.broadcast_to(np.eye(s), (G, s, s)).copy()
        if self.corstr != "independence" and s > 1:
            rho = self.pair_rho(b, alpha)
            R[:, b.pj, b.pk] = rho
            R[:, b.pk, b.pj] = rho
        return R

    def E(self, b: _Batch, alpha: np.ndarray) -> np.ndarray:
        """d rho_pair / d alpha, (G, m, q) (geepack's ``cor_rho`` times the identity correlation link)."""
        G, m = b.lag.shape
        if self.corstr == "exchangeable":
            return np.ones((G, m, 1))
        if self.corstr == "ar1":
            lag = b.lag
            # geepack special-cases lag 1 (avoids 0^0 when alpha is 0)
            d = np.where(lag == 1.0, 1.0, lag * alpha[0] ** np.maximum(lag - 1.0, 0.0))
            return d[:, :, None]
        E = np.zeros((G, m, self.q))
        if m:
            g_idx = np.repeat(np.arange(G), m)
            E[g_idx, np.tile(np.arange(m), G), b.pair_param.ravel()] = 1.0
        return E


# ---------------------------------------------------------------------------------------------
# the model


def gee(
    formula: str,
    data: pd.DataFrame,
    group: str,
    family: str = "gaussian",
    corstr: str = "independence",
    time: str | None = None,
    scale_fix: bool = False,
) -> GEE:
    """A marginal model fitted by generalised estimating equations, as R's ``geepack::geeglm``.

    Parameters
    ----------
    formula : str
        ``"y ~ x1 * f"``: response and fixed effects in memoe's (formulaic) syntax with R's
        treatment contrasts and coefficient names. No random-effects terms.
    data : pandas.DataFrame
    group : str
        Column of cluster ids (geeglm's ``id``).
    family : {"gaussian", "binomial", "poisson"}
        With its canonical link (identity, logit, log). Binomial responses are 0/1 (or proportions).
    corstr : {"independence", "exchangeable", "ar1", "unstructured"}
        Working correlation.
    time : str, optional
        Column ordering the rows within a cluster and giving their waves (geeglm's ``waves``);
        ``None`` keeps the row order (see the module docstring).
    scale_fix : bool
        Do not update the dispersion (geeglm's ``scale.fix = TRUE``). As in geepack's code,
        phi then stays at its starting value, the mean squared Pearson residual of the
        independence GLM (``geese.fit`` computes that start and never reads ``scale.value``; the
        C++ skips the scale update). For binary data this is close to, but not exactly, 1. This
        follows geepack's source; no R reference case covers it.

    Returns
    -------
    GEE
        Call :meth:`GEE.fit`.

    Raises
    ------
    FormulaError, DataError
        Naming the argument or column at fault.
    """
    return GEE(formula, data, group, family=family, corstr=corstr, time=time, scale_fix=scale_fix)


class GEE:
    """A GEE model: the data in cluster order and the design; :meth:`fit` estimates it.

    See :func:`gee` for the parameters.

    Attributes
    ----------
    names : list of str
        R's coefficient names (memoe's fixed-effects design: ``SexFemale``, ``age:SexFemale``).
    nobs, ngroups : int
        Rows used and clusters.
    family, link, corstr, group, time, formula, response
        As given (``link`` is the family's canonical link).
    """

    def __init__(
        self,
        formula: str,
        data: pd.DataFrame,
        group: str,
        family: str = "gaussian",
        corstr: str = "independence",
        time: str | None = None,
        scale_fix: bool = False,
    ) -> None:
        if family not in FAMILIES:
            raise DataError(f"family {family!r} is not supported; use one of {list(FAMILIES)}")
        if corstr not in CORSTRS:
            raise DataError(f"corstr {corstr!r} is not supported; use one of {list(CORSTRS)}")
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        for arg, col in (("group", group), ("time", time)):
            if col is None:
                continue
            if not isinstance(col, str) or col not in data.columns:
                shown = ", ".join(repr(c) for c in list(data.columns)[:12])
                raise DataError(f"unknown {arg} column {col!r}; the data have {shown}")
        spec = parse_formula(formula)
        if spec.random:
            raise FormulaError(
                f"formula {formula!r} has random-effects terms {[t.text for t in spec.random]}; a GEE is a "
                "marginal model: give the clusters with group= and drop the (... | ...) terms"
            )
        self.formula = formula
        self.family = family
        self.link = LINKS[family]
        self.corstr = corstr
        self.group = group
        self.time = time
        self.scale_fix = bool(scale_fix)

        extra = [group] + ([time] if time is not None and time != group else [])
        frame = build_frame(spec, data, extra=extra)
        kept = frame.data
        y = numeric_response(kept, spec.response)
        if not np.all(np.isfinite(y)):
            raise DataError(f"response {spec.response!r} has {int((~np.isfinite(y)).sum())} non-finite values")
        if family == "binomial" and (np.any(y < 0) or np.any(y > 1)):
            raise DataError(
                f"response {spec.response!r} must lie in [0, 1] for the binomial family (0/1 or proportions)"
            )
        if family == "poisson" and np.any(y < 0):
            raise DataError(f"response {spec.response!r} must be non-negative for the poisson family")
        fixed = build_fixed(spec.fixed, kept)

        # cluster order: first appearance (so contiguous data keep geepack's order exactly)
        gf = make_grouping_factor(kept, (group,))
        codes = gf.codes
        runs = 1 + int(np.count_nonzero(codes[1:] != codes[:-1]))
        first = np.full(gf.nlevels, len(codes), dtype=np.int64)
        np.minimum.at(first, codes, np.arange(len(codes)))
        cluster_rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[codes]
        if time is not None:
            tcol = kept[time]
            if not (pd.api.types.is_numeric_dtype(tcol) or isinstance(tcol.dtype, pd.CategoricalDtype)):
                tcol = tcol.astype(str)
            # dense rank of the time values: geeglm's waves = as.integer(as.factor(time))
            t_codes = make_grouping_factor(kept.assign(**{time: tcol}), (time,)).codes
            order = np.lexsort((np.arange(len(codes)), t_codes, cluster_rank))
        else:
            t_codes = None
            order = np.lexsort((np.arange(len(codes)), cluster_rank))
        if runs != gf.nlevels:
            warnings.warn(
                f"the rows of some groups in {group!r} are not contiguous ({runs} runs for {gf.nlevels} groups); "
                f"memoe groups them keeping their row order within the group, whereas geepack would treat each "
                f"run as a separate cluster: sort the data by {group!r} to get the same fit in R",
                GEEOrderWarning,
                stacklevel=3,
            )
        sorted_codes = cluster_rank[order]
        starts = np.r_[0, np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1]
        sizes = np.diff(np.r_[starts, len(order)])
        if t_codes is not None:
            ts = t_codes[order]
            dup = (ts[1:] == ts[:-1]) & (sorted_codes[1:] == sorted_codes[:-1])
            if np.any(dup):
                bad = gf.levels[codes[order][1:][dup][0]]
                raise DataError(
                    f"time column {time!r} repeats a value within group {bad!r} of {group!r}; "
                    "each row of a cluster needs its own time"
                )
            waves = ts + 1
        else:
            waves = np.arange(len(order)) - np.repeat(starts, sizes) + 1
        T = int(waves.max())
        if corstr == "unstructured":
            # every pair of waves must be observed together somewhere, else its correlation is not estimable
            seen = np.zeros((T, T), dtype=bool)
            for s in np.unique(sizes[sizes > 1]):
                idx = starts[sizes == s][:, None] + np.arange(s)
                w = waves[idx] - 1
                a, b = np.triu_indices(int(s), 1)
                seen[np.minimum(w[:, a], w[:, b]), np.maximum(w[:, a], w[:, b])] = True
            a, b = np.triu_indices(T, 1)
            missing = [f"{i + 1}:{j + 1}" for i, j in zip(a, b, strict=True) if not seen[i, j]]
            if missing:
                what = f"time column {time!r}" if time is not None else f"row positions within {group!r}"
                raise DataError(
                    f"unstructured working correlation: the waves ({what}) {missing[:5]} never occur together "
                    "in a cluster, so their correlations cannot be estimated"
                )

        self.names = list(fixed.names)
        self._fixed = fixed
        self.response = spec.response
        self._order = order
        self._X = np.ascontiguousarray(fixed.X[order])
        self._y = y[order]
        self._waves = waves
        self._starts = starts
        self._sizes = sizes
        self._T = T
        self._frame = frame
        self._cluster_labels = gf.levels[codes[order][starts]]
        self._batches = _make_batches(self._X, self._y, waves, starts, T)
        self._corr = _Corr(corstr, T)

    @property
    def nobs(self) -> int:
        return len(self._y)

    @property
    def ngroups(self) -> int:
        return len(self._starts)

    # -- the pieces of geepack's iteration --------------------------------------------------

    def _pieces(self, b: _Batch, beta: np.ndarray):
        eta = b.X @ beta
        mu = _linkinv(self.family, eta)
        v = _variance(self.family, mu)
        root_v = np.sqrt(v)
        D = (_mu_eta(self.family, eta) / root_v)[..., None] * b.X
        pr = (b.y - mu) / root_v
        return mu, v, D, pr

    def _pearson(self, beta: np.ndarray) -> np.ndarray:
        mu = _linkinv(self.family, self._X @ beta)
        return (self._y - mu) / np.sqrt(_variance(self.family, mu))

    def _start(self) -> tuple[np.ndarray, float]:
        """geeglm's start: R's ``glm`` coefficients and the mean squared Pearson residual."""
        # the narrow imports avoid statsmodels.api's 0.8 s import of unrelated modules
        from statsmodels.genmod import families
        from statsmodels.genmod.generalized_linear_model import GLM

        fam = {"gaussian": families.Gaussian, "binomial": families.Binomial, "poisson": families.Poisson}[self.family]
        with warnings.catch_warnings():
            # statsmodels warns on e.g. non-integer binomial counts; geepack accepts proportions
            warnings.simplefilter("ignore")
            res = GLM(self._y, self._X, family=fam()).fit(tol=1e-10, maxiter=100)
        beta = np.asarray(res.params, dtype=float)
        if not np.all(np.isfinite(beta)):
            raise ConvergenceError("the independence GLM that gives the starting values did not converge")
        return beta, float(np.mean(self._pearson(beta) ** 2))

    def _beta_step(self, beta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        p = len(beta)
        H = np.zeros((p, p))
        G = np.zeros(p)
        for b in self._batches:
            _, _, D, pr = self._pieces(b, beta)
            RiD = np.linalg.solve(self._corr.matrix(b, alpha), D)
            H += np.einsum("gsa,gsb->ab", D, RiD)
            G += np.einsum("gsa,gs->a", RiD, pr)
        return _solve(H, G, "the mean model (beta)")

    def _alpha_step(self, pr: np.ndarray, phi: float, alpha: np.ndarray) -> np.ndarray:
        q = self._corr.q
        H = np.zeros((q, q))
        G = np.zeros(q)
        for b in self._batches:
            if b.s == 1:
                continue
            r = pr[b.rows]
            z = r[:, b.pj] * r[:, b.pk] / phi
            E = self._corr.E(b, alpha)
            H += np.einsum("gma,gmb->ab", E, E)
            G += np.einsum("gma,gm->a", E, z - self._corr.pair_rho(b, alpha))
        if not H.any():
            raise DataError(f"every cluster of {self.group!r} has one row: the correlation cannot be estimated")
        return _solve(H, G, "the working correlation (alpha)")

    def fit(self, tol: float = 1e-4, maxiter: int = 25) -> GEEResult:
        """Estimate the model with geepack's algorithm.

        Parameters
        ----------
        tol : float
            Stop when the largest absolute change of beta, phi and alpha in one iteration is at most
            ``tol`` (geepack's ``geese.control(epsilon = 1e-4)``). A smaller value gives the exact
            root of the estimating equations; 1e-4 reproduces geepack's reported numbers.
        maxiter : int
            geepack's ``maxit`` (25). Not converging warns (:class:`~memoe.errors.ConvergenceWarning`).

        Returns
        -------
        GEEResult
        """
        # with scale_fix phi keeps this start (geepack: gm from the GLM, update_gamma skipped)
        beta, phi = self._start()
        alpha = np.zeros(self._corr.q)
        converged = False
        n_iter = 0
        for n_iter in range(1, maxiter + 1):  # noqa: B007 - n_iter is reported
            d_beta = self._beta_step(beta, alpha)
            beta = beta + d_beta
            pr = self._pearson(beta)
            d_phi = 0.0
            if not self.scale_fix:
                # geepack's Fisher step for the scale with identity link: phi_new = mean(r^2)
                d_phi = float(np.mean(pr**2)) - phi
                phi = phi + d_phi
            d_alpha = self._alpha_step(pr, phi, alpha) if self._corr.q else np.zeros(0)
            alpha = alpha + d_alpha
            delta = max(float(np.max(np.abs(d_beta))), abs(d_phi), float(np.max(np.abs(d_alpha), initial=0.0)))
            if delta <= tol:
                converged = True
                break
        if not converged:
            warnings.warn(
                f"GEE did not converge in {maxiter} iterations (geepack's error code 1); the last change was "
                f"{delta:.3g} > tol = {tol:g}",
                ConvergenceWarning,
                stacklevel=2,
            )
        if not np.all(np.isfinite(beta)):
            raise ConvergenceError("GEE iterations diverged (non-finite coefficients)")
        var = self._variance(beta, phi, alpha)
        return GEEResult(model=self, beta=beta, phi=phi, alpha_vec=alpha, converged=converged, n_iter=n_iter, **var)

    def _variance(self, beta: np.ndarray, phi: float, alpha: np.ndarray) -> dict:
        """geepack's ``gee_var``: the joint sandwich over (beta, phi, alpha), blocks as ``HiandGi``."""
        p, q = len(beta), self._corr.q
        est_phi, est_alpha = not self.scale_fix, q > 0
        A = np.zeros((p, p))
        B = np.zeros((1, p))
        C = np.zeros((1, 1))
        Dm = np.zeros((q, p))
        Em = np.zeros((q, 1))
        F = np.zeros((q, q))
        U1s, U2s, U3s = [], [], []
        for b in self._batches:
            _, v, D, pr = self._pieces(b, beta)
            v_mu = _variance_mu(self.family, _linkinv(self.family, b.X @ beta))
            R = self._corr.matrix(b, alpha)
            ViD = np.linalg.solve(R, D) / phi
            A += np.einsum("gsa,gsb->ab", D, ViD)
            U1s.append(np.einsum("gsa,gs->ga", ViD, pr))
            G = len(pr)
            if est_phi:
                C += b.s / (2.0 * phi) * G
                f = -2.0 * pr / np.sqrt(v) - pr**2 / v * v_mu
                B += np.einsum("gs,gsa->a", -1.0 / (2.0 * phi) * f, D)[None, :]
                U2s.append(np.sum(pr**2 - phi, axis=1, keepdims=True) / (2.0 * phi))
            else:
                U2s.append(np.zeros((G, 1)))
            if est_alpha and b.s > 1:
                pj, pk = b.pj, b.pk
                z = pr[:, pj] * pr[:, pk] / phi
                E = self._corr.E(b, alpha)
                F += np.einsum("gma,gmb->ab", E, E)
                # geepack's getZ_Beta, verbatim: -r_j D_j - r_k D_k - r_j r_k (v'_j/sqrt(v_j) D_j + ...)/2,
                # scaled by 1/phi (it uses each residual with its own row of D)
                w = v_mu / np.sqrt(v)
                foo = w[:, pj, None] * D[:, pj] + w[:, pk, None] * D[:, pk]
                bar = (
                    -pr[:, pj, None] * D[:, pj]
                    - pr[:, pk, None] * D[:, pk]
                    - 0.5 * (pr[:, pj] * pr[:, pk])[..., None] * foo
                )
                Dm += np.einsum("gma,gmb->ab", E, -bar / phi)
                U3s.append(np.einsum("gma,gm->ga", E, z - self._corr.pair_rho(b, alpha)))
                if est_phi:
                    # getZ_Gamma: -z/2 (1/phi + 1/phi) with the identity scale link
                    Em += np.einsum("gma,gm->a", E, z / phi)[:, None]
            else:
                U3s.append(np.zeros((G, q)))
        U1 = np.concatenate(U1s)
        U2 = np.concatenate(U2s)
        U3 = np.concatenate(U3s)
        Ai = _inv(A, "the naive covariance of beta")
        vbeta = Ai @ (U1.T @ U1) @ Ai
        out = {"vbeta": vbeta, "vbeta_naive": Ai, "vgamma": np.full((1, 1), np.nan), "valpha": np.zeros((q, q))}
        Bi = np.zeros((1, p))
        Ci = np.zeros((1, 1))
        L11, L12, L22 = U1.T @ U1, U1.T @ U2, U2.T @ U2
        if est_phi:
            Ci = np.linalg.inv(C)
            Bi = -Ci @ B @ Ai
            out["vgamma"] = (Bi @ L11 + Ci @ L12.T) @ Bi.T + (Bi @ L12 + Ci @ L22) @ Ci.T
        if est_alpha:
            Fi = _inv(F, "the covariance of alpha")
            Ei = -Fi @ Em @ Ci if est_phi else np.zeros((q, 1))
            Di = -Fi @ (Dm @ Ai + Em @ Bi) if est_phi else -Fi @ Dm @ Ai
            L13, L23, L33 = U1.T @ U3, U2.T @ U3, U3.T @ U3
            out["valpha"] = (
                (Di @ L11 + Ei @ L12.T + Fi @ L13.T) @ Di.T
                + (Di @ L12 + Ei @ L22 + Fi @ L23.T) @ Ei.T
                + (Di @ L13 + Ei @ L23 + Fi @ L33) @ Fi.T
            )
        return out


def _solve(H: np.ndarray, G: np.ndarray, what: str) -> np.ndarray:
    try:
        out = np.linalg.solve(H, G)
    except np.linalg.LinAlgError:
        raise ConvergenceError(f"singular estimating equations for {what}") from None
    return out


def _inv(H: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.inv(H)
    except np.linalg.LinAlgError:
        raise ConvergenceError(f"singular information matrix for {what}") from None


# ---------------------------------------------------------------------------------------------
# the result


@dataclass(eq=False)
class GEEResult:
    """A fitted GEE (geepack's ``geeglm`` object and its ``summary``).

    Attributes
    ----------
    params, fixef : pandas.Series
        Coefficients with R's names.
    vcov, vcov_naive : pandas.DataFrame
        Robust (sandwich, geepack's ``vbeta``) and model-based (``vbeta.naiv``) covariances;
        ``vcov`` is callable as in memoe's LMM results (``fit.vcov(robust="naive")``).
    bse, bse_naive : pandas.Series
        Their standard errors.
    scale : float
        The dispersion phi (geepack's ``gamma``; its starting value when ``scale_fix``). For the gaussian family the
        residual variance with denominator N.
    scale_se : float
        Its sandwich standard error (NaN when fixed).
    alpha : pandas.Series
        Working-correlation parameters (``"alpha"``, or ``"alpha.1:2"``, ... for unstructured; empty
        for independence). ``alpha_se`` their standard errors; ``vcov_alpha`` their covariance.
    working_correlation : pandas.DataFrame
        The T x T working correlation over waves 1..T.
    nobs, ngroups, max_cluster_size : int
    cluster_sizes : pandas.Series
        Rows per cluster, in cluster order.
    fitted, resid, resid_pearson : pandas.Series
        Mean, response residual y - mu and Pearson residual, aligned to the input rows (NaN where a
        row was dropped for missing values).
    converged : bool
    n_iter : int
        geepack's iterations (one beta, phi and alpha update each).
    n_dropped : int
        Rows dropped for missing values in the response, covariates, group or time.

    Methods
    -------
    coef_table(robust=True)
        geepack's coefficient table (Estimate, Std.err, Wald, Pr(>|W|)).
    summary()
        Text as R's ``print(summary(geeglm))``.
    qic()
        geepack's ``QIC`` (QIC, QICu, Quasi Lik, CIC, params, QICC).
    predict(newdata=None, type="response")
        Population-averaged means (or linear predictors).
    """

    model: GEE
    beta: np.ndarray
    phi: float
    alpha_vec: np.ndarray
    converged: bool
    n_iter: int
    vbeta: np.ndarray
    vbeta_naive: np.ndarray
    vgamma: np.ndarray
    valpha: np.ndarray
    _qic: dict | None = field(default=None, repr=False)

    # -- coefficients and covariances ---------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return self.model.names

    @cached_property
    def params(self) -> pd.Series:
        return pd.Series(self.beta, index=self.names, name="Estimate")

    @property
    def fixef(self) -> pd.Series:
        return self.params

    @cached_property
    def vcov(self) -> VcovFrame:
        """geepack's sandwich (``vbeta``); like memoe's LMM results it is callable:
        ``fit.vcov(robust="naive")`` is the model-based matrix, ``"sandwich"`` / ``"CR0"`` this one."""
        frame = pd.DataFrame(self.vbeta, index=self.names, columns=self.names)
        return VcovFrame.wrap(frame, self._vcov_by_name)

    def _vcov_by_name(self, robust: str | None = None) -> pd.DataFrame:
        key = (robust or "sandwich").lower()
        if key in ("sandwich", "san.se", "cr0", "robust"):
            return pd.DataFrame(self.vbeta, index=self.names, columns=self.names)
        if key in ("naive", "model"):
            return self.vcov_naive.copy()
        raise HypothesisError(f"unknown covariance {robust!r} for a GEE; use 'sandwich' (CR0) or 'naive'")

    @cached_property
    def vcov_naive(self) -> pd.DataFrame:
        return pd.DataFrame(self.vbeta_naive, index=self.names, columns=self.names)

    @cached_property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vbeta)), index=self.names, name="Std.err")

    @cached_property
    def bse_naive(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vbeta_naive)), index=self.names, name="Std.err (naive)")

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
        T = self.model._T
        w = np.arange(1, T + 1)
        a = self.alpha_vec
        cs = self.model.corstr
        if cs == "independence":
            R = np.eye(T)
        elif cs == "exchangeable":
            R = np.where(np.eye(T, dtype=bool), 1.0, a[0])
        elif cs == "ar1":
            R = a[0] ** np.abs(np.subtract.outer(w, w)).astype(float)
        else:
            R = np.eye(T)
            i, j = np.triu_indices(T, 1)
            R[i, j] = a
            R[j, i] = a
        return pd.DataFrame(R, index=w, columns=w)

    # -- sizes and per-row output -------------------------------------------------------------

    @property
    def nobs(self) -> int:
        return self.model.nobs

    @property
    def ngroups(self) -> int:
        return self.model.ngroups

    @property
    def max_cluster_size(self) -> int:
        return int(self.model._sizes.max())

    @cached_property
    def cluster_sizes(self) -> pd.Series:
        return pd.Series(self.model._sizes, index=self.model._cluster_labels, name="size")

    @property
    def n_dropped(self) -> int:
        return self.model._frame.n_dropped

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

    @cached_property
    def resid_pearson(self) -> pd.Series:
        m = self.model
        return self._per_row((m._y - self._mu) / np.sqrt(_variance(m.family, self._mu)), "resid_pearson")

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
        from memoe.core.design.newdata import (
            PredictArgumentError,
            check_allow_new_levels,
            check_type,
            nonfinite_rows,
            parse_re_form,
            require_dataframe,
            warn_nonfinite,
        )

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
        require_dataframe(newdata)
        X = self.model._fixed.matrix_for(newdata)
        eta = warn_nonfinite(X @ self.beta, nonfinite_rows(X))
        out = eta if type == "link" else _linkinv(self.model.family, eta)
        return pd.Series(out, index=newdata.index, name="fitted" if type == "response" else "link")

    # -- tables -------------------------------------------------------------------------------

    def coef_table(self, robust: bool = True) -> pd.DataFrame:
        """geepack's ``summary(geeglm)$coefficients``: Estimate, Std.err, Wald, Pr(>|W|).

        Parameters
        ----------
        robust : bool
            Sandwich standard errors (geepack's default ``std.err = "san.se"``); ``False`` uses the
            naive (model-based) ones.

        Returns
        -------
        pandas.DataFrame
            Wald = (Estimate / Std.err)^2 referred to chi-square with 1 df.
        """
        se = self.bse if robust else self.bse_naive
        wald = (self.params / se) ** 2
        return pd.DataFrame(
            {
                "Estimate": self.params,
                "Std.err": se.to_numpy(),
                "Wald": wald.to_numpy(),
                "Pr(>|W|)": stats.chi2.sf(wald.to_numpy(), 1),
            },
            index=self.names,
        )

    def qic(self) -> pd.Series:
        """geepack's ``QIC``: QIC, QICu, Quasi Lik, CIC, params, QICC (refits the independence model).

        Returns
        -------
        pandas.Series
        """
        if self._qic is None:
            m = self.model
            quasi = _quasi_loglik(m.family, m._y, self._mu)
            if m.corstr == "independence":
                naive_indep = self.vbeta_naive
            else:
                # the same data and design with an independence working correlation (geepack refits)
                indep = copy.copy(m)
                indep.corstr = "independence"
                indep._corr = _Corr("independence", m._T)
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
                "QICC": qic + 2.0 * kpm * (kpm + 1) / (self.ngroups - kpm - 1),
            }
        return pd.Series(self._qic, name="QIC")

    def summary(self) -> str:
        """Text in the layout of R's ``print(summary(geeglm))`` (geepack 1.3.x, ``digits = 4``)."""
        m = self.model
        ct = self.coef_table()
        digits = 4
        # printCoefmat: estimates and SEs rounded jointly to `digits` significant digits of the
        # smallest of them, the Wald column to 3 decimals, then R's format() with `digits`
        cs = ct[["Estimate", "Std.err"]].to_numpy()
        finite = np.abs(cs[np.isfinite(cs) & (cs != 0)])
        digmin = 1 + (math.floor(math.log10(finite.min())) if len(finite) else 0)
        cs_text = r_format(np.round(cs, max(1, digits - digmin)).ravel(), digits)
        stars = [s.strip() for s in signif_stars(ct["Pr(>|W|)"])]
        width = max(map(len, stars))
        coef = pd.DataFrame(
            {
                "Estimate": cs_text[0::2],
                "Std.err": cs_text[1::2],
                "Wald": r_format(np.round(ct["Wald"].to_numpy(), max(1, min(5, digits - 1))), digits),
                "Pr(>|W|)": format_pval(ct["Pr(>|W|)"].to_numpy(), max(1, min(5, digits - 1))),
                "": [st.ljust(width) for st in stars],
            },
            index=ct.index,
        )
        time = f", time = {m.time}" if m.time is not None else ""
        lines = [
            "",
            "Call:",
            f'gee(formula = {m.formula}, group = {m.group}, family = {m.family}, corstr = "{m.corstr}"{time})',
            "",
            " Coefficients:",
            format_table(coef),
            "---",
            "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1",
            "",
            f"Correlation structure = {m.corstr} ",
        ]
        if m.scale_fix:
            lines += ["Scale is fixed.", ""]
        else:
            sc = pd.DataFrame(
                {"Estimate": r_format([self.scale], digits), "Std.err": r_format([self.scale_se], digits)},
                index=["(Intercept)"],
            )
            lines += ["Estimated Scale Parameters:", "", format_table(sc)]
        if m.corstr != "independence":
            al = pd.DataFrame(
                {
                    "Estimate": r_format(self.alpha.to_numpy(), digits),
                    "Std.err": r_format(self.alpha_se.to_numpy(), digits),
                },
                index=self.alpha.index,
            )
            lines += ["  Link = identity ", "", "Estimated Correlation Parameters:", format_table(al)]
        lines.append(f"Number of clusters:   {self.ngroups}  Maximum cluster size: {self.max_cluster_size} ")
        if self.n_dropped:
            lines.append(f"({self.n_dropped} rows dropped for missing values)")
        if not self.converged:
            lines.append(f"Warning: not converged in {self.n_iter} iterations")
        return "\n".join(lines)

    def save(self, path) -> None:
        """Save the fit to one ``.memoe`` file (JSON + npz in a zip, no pickle); see :func:`memoe.persist.save`.

        ``memoe.persist.load(path)`` gives it back with the same numbers.
        """
        from memoe.persist import save

        save(self, path)

    def __repr__(self) -> str:
        return (
            f"<GEEResult {self.model.formula!r} family={self.model.family} corstr={self.model.corstr} "
            f"nobs={self.nobs} ngroups={self.ngroups}>"
        )

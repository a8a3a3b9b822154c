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

The package: this module holds the model and the iteration; :mod:`~memoe.gee.clusters` the row order
and the batches of clusters, :mod:`~memoe.gee.correlation` the working correlations,
:mod:`~memoe.gee.families` geepack's link and variance functions, :mod:`~memoe.gee.variance` the
covariances, :mod:`~memoe.gee.result` and :mod:`~memoe.gee.summary` the fitted model and its print
layout, :mod:`~memoe.gee.validation` the argument checks.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from memoe.core.design.fixed import build_fixed
from memoe.core.design.frame import build_frame, numeric_response
from memoe.core.formula.parse import parse_formula
from memoe.core.frames import to_pandas
from memoe.errors import ArgumentTypeError, ConvergenceError, ConvergenceWarning, FormulaError, caller_stacklevel
from memoe.gee.clusters import GEEOrderWarning, cluster_layout, make_batches
from memoe.gee.correlation import WorkingCorrelation
from memoe.gee.families import LINKS, linkinv, pearson_pieces, variance
from memoe.gee.result import GEEResult
from memoe.gee.validation import (
    check_columns,
    check_family_corstr,
    check_fit_arguments,
    check_response,
    check_scale_fix,
)
from memoe.gee.variance import gee_variance, solve_or_raise

__all__ = ["GEE", "GEEOrderWarning", "GEEResult", "gee"]


def gee(
    formula: str,
    data: Any,
    group: str,
    family: str = "gaussian",
    corstr: str = "independence",
    time: str | None = None,
    scale_fix: bool = False,
    contrasts: dict[str, str] | None = None,
) -> GEE:
    """A marginal model fitted by generalised estimating equations, as R's ``geepack::geeglm``.

    Parameters
    ----------
    formula : str
        ``"y ~ x1 * f"``: response and fixed effects in memoe's (formulaic) syntax with R's
        contrasts (see ``contrasts``) and coefficient names. No random-effects terms.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
    group : str
        Column of cluster ids (geeglm's ``id``). Rows with a missing id are dropped, as rows with a
        missing response or covariate.
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
    contrasts : dict, optional
        R's ``contrasts=``: factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"``.
        Default (None) is R's: treatment for unordered factors, poly for ordered Categoricals.

    Returns
    -------
    GEE
        Call :meth:`GEE.fit`.

    Raises
    ------
    ArgumentError, ArgumentTypeError
        An argument of the wrong type or value (``family``, ``corstr``, ``group``, ``time``, ``scale_fix``).
    FormulaError, DataError
        Naming the term or column at fault (unknown column, non-numeric, constant or out-of-support
        response, repeated times, a correlation no cluster can inform).

    R equivalent
    ------------
    ``geepack::geeglm(formula, family, data, id = group, waves = time, corstr = corstr)``.

    Examples
    --------
    >>> import memoe
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.gee("distance ~ age * Sex", orth, group="Subject", corstr="exchangeable").fit()
    >>> round(float(fit.alpha.iloc[0]), 4)
    0.6178
    """
    return GEE(
        formula, data, group, family=family, corstr=corstr, time=time, scale_fix=scale_fix, contrasts=contrasts
    )


class GEE:
    """A GEE model: the data in cluster order and the design; :meth:`fit` estimates it.

    Parameters
    ----------
    formula, data, group, family, corstr, time, scale_fix, contrasts
        As :func:`gee` (which builds this class).

    Attributes
    ----------
    names : list of str
        R's coefficient names (memoe's fixed-effects design: ``SexFemale``, ``age:SexFemale``).
    nobs, n_clusters : int
        Rows used and clusters.
    family, link, corstr, group, time, formula, response
        As given (``link`` is the family's canonical link).
    data : pandas.DataFrame
        The data as given (converted to pandas), for :meth:`GEEResult.augment`.

    R equivalent
    ------------
    ``geepack::geeglm(...)``; see :func:`gee`.

    Examples
    --------
    >>> import memoe
    >>> model = memoe.GEE("distance ~ age", memoe.datasets.load("Orthodont"), group="Subject", corstr="ar1")
    >>> model.n_clusters
    27
    """


    def __init__(
        self,
        formula: str,
        data: Any,
        group: str,
        family: str = "gaussian",
        corstr: str = "independence",
        time: str | None = None,
        scale_fix: bool = False,
        contrasts: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(formula, str):
            raise ArgumentTypeError(f"formula must be a string such as 'y ~ x', got {type(formula).__name__}")
        data = to_pandas(data, "data")
        family, corstr = check_family_corstr(family, corstr)
        check_columns(data, group, time)
        self.scale_fix = check_scale_fix(scale_fix)
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
        self.data = data

        extra = [group] + ([time] if time is not None else [])
        frame = build_frame(spec, data, extra=extra)
        kept = frame.data
        y = numeric_response(kept, spec.response)
        check_response(y, spec.response, family)
        fixed = build_fixed(spec.fixed, kept, contrasts)
        if not fixed.names:
            raise FormulaError(f"formula {formula!r} has no fixed-effects columns; a GEE needs at least one (e.g. 1)")
        layout = cluster_layout(kept, group, time, corstr)

        self.names = list(fixed.names)
        self._fixed = fixed
        # the contrast of every factor (R's default or the argument); the codec saves it
        self.contrasts: dict[str, str] = dict(fixed.contrasts)
        self.response = spec.response
        self._order = layout.order
        self._X = np.ascontiguousarray(fixed.X[layout.order])
        self._y = y[layout.order]
        self._waves = layout.waves
        self._starts = layout.starts
        self._sizes = layout.sizes
        self._T = layout.T
        self._frame = frame
        self._cluster_labels = layout.labels
        self._batches = make_batches(self._X, self._y, layout.waves, layout.starts, layout.T)
        self._corr = WorkingCorrelation(corstr, layout.T)

    @property
    def nobs(self) -> int:
        return len(self._y)

    @property
    def n_clusters(self) -> int:
        return len(self._starts)

    # -- the pieces of geepack's iteration --------------------------------------------------

    def _pearson(self, beta: np.ndarray) -> np.ndarray:
        mu = linkinv(self.family, self._X @ beta)
        return (self._y - mu) / np.sqrt(variance(self.family, mu))

    def _start(self) -> tuple[np.ndarray, float]:
        """geeglm's start: R's ``glm`` coefficients and the mean squared Pearson residual."""
        # the narrow imports avoid statsmodels.api's 0.8 s import of unrelated modules
        from statsmodels.genmod import families
        from statsmodels.genmod.generalized_linear_model import GLM

        fam = {"gaussian": families.Gaussian, "binomial": families.Binomial, "poisson": families.Poisson}[self.family]
        try:
            with warnings.catch_warnings():
                # statsmodels warns on e.g. non-integer binomial counts; geepack accepts proportions
                warnings.simplefilter("ignore")
                res = GLM(self._y, self._X, family=fam()).fit(tol=1e-10, maxiter=100)
            beta = np.asarray(res.params, dtype=float)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            # e.g. perfect separation: statsmodels' own exception types would leak to the user
            raise ConvergenceError(
                f"the independence GLM that gives the starting values failed ({type(exc).__name__}: {exc})"
            ) from None
        if not np.all(np.isfinite(beta)):
            raise ConvergenceError("the independence GLM that gives the starting values did not converge")
        return beta, float(np.mean(self._pearson(beta) ** 2))

    def _beta_step(self, beta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        p = len(beta)
        H = np.zeros((p, p))
        G = np.zeros(p)
        for b in self._batches:  # one pass per distinct cluster size
            _, _, D, pr = pearson_pieces(self.family, b.X, b.y, beta)
            RiD = np.linalg.solve(self._corr.matrix(b, alpha), D)
            H += np.einsum("gsa,gsb->ab", D, RiD)
            G += np.einsum("gsa,gs->a", RiD, pr)
        return solve_or_raise(H, G, "the mean model (beta)")

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
        return solve_or_raise(H, G, "the working correlation (alpha)")

    def fit(self, tol: float = 1e-4, maxiter: int = 25) -> GEEResult:
        """Estimate the model with geepack's algorithm.

        Parameters
        ----------
        tol : float
            Stop when the largest absolute change of beta, phi and alpha in one iteration is at most
            ``tol`` (geepack's ``geese.control(epsilon = 1e-4)``). A smaller value gives the exact
            root of the estimating equations; 1e-4 reproduces geepack's reported numbers.
        maxiter : int
            geepack's ``maxit`` (25), at least 1. Not converging warns
            (:class:`~memoe.errors.ConvergenceWarning`).

        Returns
        -------
        GEEResult

        Raises
        ------
        ArgumentError, ArgumentTypeError
            ``tol`` not a positive number, ``maxiter`` not a positive integer.
        ConvergenceError
            Singular estimating equations or diverging iterations.
        """
        tol, maxiter = check_fit_arguments(tol, maxiter)
        # with scale_fix phi keeps this start (geepack: gm from the GLM, update_gamma skipped)
        beta, phi = self._start()
        alpha = np.zeros(self._corr.q)
        converged = False
        n_iter = 0
        delta = np.inf
        with np.errstate(divide="raise", invalid="raise", over="raise"):
            try:
                for n_iter in range(1, maxiter + 1):  # noqa: B007 - n_iter is reported
                    beta, phi, alpha, delta = self._iterate(beta, phi, alpha)
                    if delta <= tol:
                        converged = True
                        break
            except FloatingPointError:
                raise ConvergenceError(
                    f"GEE iterations diverged at iteration {n_iter} (overflow or a zero scale); "
                    "check the response and the design"
                ) from None
        if not converged:
            warnings.warn(
                f"GEE did not converge in {maxiter} iterations (geepack's error code 1); the last change was "
                f"{delta:.3g} > tol = {tol:g}",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )
        if not np.all(np.isfinite(beta)):
            raise ConvergenceError("GEE iterations diverged (non-finite coefficients)")
        var = self._variance(beta, phi, alpha)
        return GEEResult(model=self, beta=beta, phi=phi, alpha_vec=alpha, converged=converged, n_iter=n_iter, **var)

    def _iterate(
        self, beta: np.ndarray, phi: float, alpha: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray, float]:
        """One geepack iteration: the beta, phi and alpha updates and the largest absolute change."""
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
        return beta, phi, alpha, delta

    def _variance(self, beta: np.ndarray, phi: float, alpha: np.ndarray) -> dict[str, np.ndarray]:
        """geepack's covariances at (beta, phi, alpha); see :func:`memoe.gee.variance.gee_variance`."""
        return gee_variance(self, beta, phi, alpha)

    def __repr__(self) -> str:
        return (
            f"<GEE {self.formula!r} family={self.family} corstr={self.corstr} "
            f"nobs={self.nobs} clusters={self.n_clusters}>"
        )

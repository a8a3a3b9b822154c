"""Between- and within-subject variance and the ICC, as the variance-components figure and the report show them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from memoe.errors import MemoeError
from memoe.plot._view import FitView

__all__ = ["variance_components_table"]


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _term_covariance(varcorr: pd.DataFrame, name: str, columns: tuple[str, ...]) -> np.ndarray:
    """The covariance matrix of one random-effects term from the rows of ``as.data.frame(VarCorr)``."""
    q = len(columns)
    G = np.zeros((q, q))
    pos = {c: i for i, c in enumerate(columns)}
    for var1, var2, vcov in varcorr.loc[varcorr["grp"] == name, ["var1", "var2", "vcov"]].itertuples(index=False):
        i = pos[var1]
        j = i if _is_missing(var2) else pos[var2]
        G[i, j] = G[j, i] = vcov
    return G


def _latent_within(fit, between: float) -> tuple[float, str]:
    """The distribution-specific (latent-scale) residual variance of a GLMM (Nakagawa, Johnson & Schielzeth 2017)."""
    fam = fit.response_family
    name, link = getattr(fam, "name", "?"), getattr(getattr(fam, "link", None), "name", "?")
    if name == "binomial":
        if link == "logit":
            return math.pi**2 / 3.0, "pi^2/3 (logit)"
        if link == "probit":
            return 1.0, "1 (probit)"
        if link == "cloglog":
            return math.pi**2 / 6.0, "pi^2/6 (cloglog)"
    if name == "poisson" and link == "log":
        # lognormal approximation: log(1 + 1/lambda), lambda the mean count at the average linear predictor
        eta0 = float(np.mean(fit.design.X @ np.asarray(fit.fixef))) if fit.design.p else 0.0
        lam = math.exp(eta0 + 0.5 * between)
        return math.log1p(1.0 / lam), "log(1 + 1/lambda) (Poisson, lognormal approximation)"
    raise MemoeError(
        f"variance components on the latent scale are not defined here for the {name} family with the {link} link; "
        "they are available for binomial (logit, probit, cloglog) and poisson (log) GLMMs"
    )


def variance_components_table(fit) -> pd.DataFrame:
    """Between-subject variance of each random-effects term, the within (residual) variance, and their shares.

    The variance a term adds to an observation is ``z' G z`` for the row's random-effects covariates
    ``z``; with random slopes it varies with ``z``, so the mean over the fitted rows is used (Johnson 2014's
    extension of the ICC to random slopes). For a random-intercept model this is the intercept variance,
    and ``icc = var_between / (var_between + var_within)``. GLMMs use the latent-scale residual variance.

    Parameters
    ----------
    fit : FitResult
        A fit with random effects (LMM, GLMM, lme); not a MEMoE (each expert has its own variances).

    Returns
    -------
    pandas.DataFrame
        Index: the terms' names (lme4's VarCorr names) and ``"Residual"``; columns ``variance`` and
        ``share`` (variance over the total). ``attrs["icc"]`` is the total between share;
        ``attrs["within"]`` says how the within variance was obtained.

    Examples
    --------
    >>> import memoe
    >>> fit = memoe.lmm("Reaction ~ Days + (1 | Subject)", memoe.datasets.load("sleepstudy")).fit()
    >>> vc = memoe.plot.variance_components_table(fit)
    >>> round(float(vc.attrs["icc"]), 3)
    0.589

    """
    view = FitView(fit)
    view.require_ranef("variance_components")
    if view.family == "memoe":
        raise MemoeError(
            "variance_components does not apply to a MEMoE: each expert has its own random-effects covariance "
            "and residual variance (see fit.ranef_cov and fit.sigmas)"
        )
    d = fit.design
    vc = fit.varcorr
    rows: dict[str, float] = {}
    for term in d.terms:
        G = _term_covariance(vc, term.name, tuple(term.columns))
        Z = d.blocks[term.block].Z[:, term.offset : term.offset + len(term.columns)]
        # mean of z' G z over the rows, without forming an (n, q, q) array
        rows[term.name] = float(np.mean(np.einsum("ij,jk,ik->i", Z, G, Z)))
    between = sum(rows.values())
    if view.family == "glmm":
        within, how = _latent_within(fit, between)
    else:
        within, how = float(fit.sigma) ** 2, "sigma^2"
    rows["Residual"] = within
    out = pd.DataFrame({"variance": pd.Series(rows)})
    total = out["variance"].sum()
    out["share"] = out["variance"] / total
    out.index.name = "component"
    out.attrs["icc"] = between / total
    out.attrs["within"] = how
    return out

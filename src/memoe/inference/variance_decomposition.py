"""Variance decomposition of a mixed model: ICC and R² (Nakagawa & Schielzeth 2013; Johnson 2014;
Nakagawa, Johnson & Schielzeth 2017), as R's ``performance::icc`` and ``performance::r2_nakagawa``.

The total variance of an observation on the latent (link) scale is split into

* ``var_fixed``: the sample variance (``n - 1`` denominator, as R's ``var``) of the fixed-effects linear
  predictor ``X beta`` over the fitted rows;
* ``var_random``: per random-effects term, the mean over the fitted rows of ``z_ij' Sigma z_ij`` (Johnson
  2014's extension to random slopes, as ``performance``: ``sum(diag(Z Sigma Z')) / n``); for a random
  intercept this is its variance;
* ``var_residual``: ``sigma^2`` for an LMM / lme / gls (the variance function's SD ratios are ignored, as
  ``performance`` does); for a GLMM the distribution-specific variance on the latent scale: binomial
  logit ``pi^2 / 3``, probit ``1``, cloglog ``pi^2 / 6``; Poisson log ``log(1 + 1 / lambda)`` (the
  "lognormal" approximation of Nakagawa et al. 2017) with ``lambda = exp(beta_0)``, ``beta_0`` the
  model's fixed intercept (``performance`` refits the null model and uses its intercept; the two agree
  when the fixed part is an intercept only; without an intercept the mean of ``X beta`` is used).

Then

* adjusted ICC ``= var_random / (var_random + var_residual)``;
* conditional ICC ``= var_random / (var_fixed + var_random + var_residual)``;
* marginal R² ``= var_fixed / (var_fixed + var_random + var_residual)``;
* conditional R² ``= (var_fixed + var_random) / (var_fixed + var_random + var_residual)``.

With ``by_group=True`` each grouping factor's ``var_random_g`` replaces the numerator (denominators keep
the sum over all factors, as ``performance::icc(by_group = TRUE)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from memoe.errors import FamilyError, MemoeError

__all__ = ["VarianceDecomposition", "expert_decomposition", "icc", "r2", "variance_decomposition"]

ICC_FORMULA = (
    "adjusted = var_random / (var_random + var_residual); "
    "conditional = var_random / (var_fixed + var_random + var_residual)"
)
R2_FORMULA = (
    "marginal = var_fixed / (var_fixed + var_random + var_residual); "
    "conditional = (var_fixed + var_random) / (var_fixed + var_random + var_residual)"
)


@dataclass(frozen=True)
class VarianceDecomposition:
    """The variance components of the Nakagawa decomposition (latent scale for GLMMs).

    Attributes
    ----------
    var_fixed : float
    var_random : pandas.Series
        One entry per grouping factor (the sum over its terms).
    var_residual : float
    residual_note : str
        How ``var_residual`` was obtained.
    """

    var_fixed: float
    var_random: pd.Series
    var_residual: float
    residual_note: str
    notes: list[str] = field(default_factory=list)

    @property
    def var_random_total(self) -> float:
        return float(self.var_random.sum())

    @property
    def total(self) -> float:
        return self.var_fixed + self.var_random_total + self.var_residual

    def as_series(self) -> pd.Series:
        return pd.Series(
            {"var_fixed": self.var_fixed, "var_random": self.var_random_total, "var_residual": self.var_residual},
            name="variance",
        )


def _var_fixed(design, beta: np.ndarray) -> float:
    if design.p == 0 or design.n < 2:
        return 0.0
    eta = design.X @ np.asarray(beta, dtype=float)
    return float(np.var(eta, ddof=1))


def _term_variance(Z: np.ndarray, cov: np.ndarray) -> float:
    """Mean over rows of ``z_i' Sigma z_i`` (Johnson 2014): one (n, q) product, no loop over subjects."""
    return float(np.mean(np.einsum("ij,ij->i", Z @ cov, Z)))


def _random_lme4(design, covariances: list[np.ndarray]) -> pd.Series:
    """Per grouping factor, the summed Johnson variances of its terms (lme4-style designs)."""
    out: dict[str, float] = {}
    for t, cov in zip(design.terms, covariances, strict=True):
        blk = design.blocks[t.block]
        Z = np.asarray(blk.Z[:, t.offset : t.offset + t.q], dtype=float)
        out[t.group] = out.get(t.group, 0.0) + _term_variance(Z, np.asarray(cov, dtype=float))
    return pd.Series(out, name="var_random", dtype=float)


def _glmm_residual(fit) -> tuple[float, str]:
    fam = fit.response_family
    link = fam.link.name
    if fam.name == "binomial":
        table = {"logit": (math.pi**2 / 3.0, "pi^2/3"), "probit": (1.0, "1"), "cloglog": (math.pi**2 / 6.0, "pi^2/6")}
        if link not in table:
            raise FamilyError(
                f"no latent-scale distribution variance for the binomial family with link {link!r}; "
                "ICC and R² are available for the logit, probit and cloglog links"
            )
        value, text = table[link]
        return value, f"binomial {link}: distribution-specific variance {text} (latent scale)"
    if fam.name == "poisson":
        if link != "log":
            raise FamilyError(
                f"no latent-scale distribution variance for the Poisson family with link {link!r}; "
                "ICC and R² are available for the log link"
            )
        names = list(fit.design.fixef_names)
        beta = np.asarray(fit.state.beta, dtype=float)
        if "(Intercept)" in names:
            b0 = float(beta[names.index("(Intercept)")])
            src = "exp of the fixed intercept"
        else:
            b0 = float(np.mean(fit.design.X @ beta)) if fit.design.p else 0.0
            src = "exp of the mean fixed linear predictor (no intercept)"
        lam = math.exp(b0)
        return math.log1p(1.0 / lam), (
            f"poisson log: lognormal approximation log(1 + 1/lambda), lambda = {lam:.6g} ({src}); "
            "performance uses the intercept of the null model"
        )
    raise FamilyError(f"no latent-scale distribution variance for the {fam.name!r} family")


def variance_decomposition(fit) -> VarianceDecomposition:
    """The Nakagawa decomposition of ``fit`` (LmmResult, GlmmResult, MarginalResult lme/gls).

    Raises
    ------
    MemoeError
        For a family without this decomposition (GEE, mixtures: use the per-expert fits).
    """
    # dispatch on the shared interface's family name: importing the result classes here would make
    # every result module depend on this one and back
    if getattr(fit, "family", None) == "lmm":
        d = fit.design
        return VarianceDecomposition(
            var_fixed=_var_fixed(d, fit.state.beta),
            var_random=_random_lme4(d, fit.term_covariances()),
            var_residual=float(fit.sigma) ** 2,
            residual_note="residual variance sigma^2",
        )
    if getattr(fit, "family", None) == "glmm":
        d = fit.design
        res, note = _glmm_residual(fit)
        return VarianceDecomposition(
            var_fixed=_var_fixed(d, fit.state.beta),
            var_random=_random_lme4(d, fit.term_covariances()),
            var_residual=res,
            residual_note=note,
        )
    if getattr(fit, "family", None) in ("gls", "lme"):
        d = fit.design
        rand = pd.Series(dtype=float, name="var_random")
        if getattr(fit, "nested", False):
            # nested lme: one variance per grouping level, as for the LMM's several factors
            rand = _random_lme4(d, fit.term_covariances())
        elif d.blocks:
            blk = d.blocks[0]
            rand = pd.Series(
                {blk.factor.name: _term_variance(np.asarray(blk.Z, dtype=float), fit.ranef_cov.to_numpy())},
                name="var_random",
                dtype=float,
            )
        notes = []
        if len(getattr(fit, "var_params", ())):
            notes.append("the variance function's SD ratios are not included in var_residual (as performance)")
        return VarianceDecomposition(
            var_fixed=_var_fixed(d, fit.fixef.to_numpy()),
            var_random=rand,
            var_residual=float(fit.sigma) ** 2,
            residual_note="residual variance sigma^2",
            notes=notes,
        )
    raise MemoeError(
        f"ICC and R² are not defined for {type(fit).__name__}; they need a mixed model "
        "(LmmResult, GlmmResult, lme/gls MarginalResult)"
    )


def _weighted_var(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted variance with the reliability-weights (n - 1)-type correction (R's ``cov.wt``)."""
    sw = w.sum()
    if sw <= 0:
        return math.nan
    m = float(w @ x) / sw
    denom = sw - float(w @ w) / sw
    return float(w @ (x - m) ** 2) / denom if denom > 0 else 0.0


def expert_decomposition(fit) -> pd.DataFrame:
    """Per-expert Nakagawa decomposition of a MEMoE / MoE fit: rows experts, columns ``var_fixed,
    var_random, var_residual``.

    Each expert's components are averaged over the rows with weights the posterior probability that the
    row's subject belongs to that expert (``tau_ik``): ``var_fixed`` the weighted variance of
    ``X beta_k``, ``var_random`` the weighted mean of ``z' G_k z``, ``var_residual = sigma_k^2``.
    """
    md = fit.model.mdesign
    est = fit.estimates
    X = np.asarray(md.design.X, dtype=float)
    tau = np.asarray(fit._estep.tau, dtype=float)[np.asarray(md.codes)]
    rows = []
    for k in range(fit.k):
        w = tau[:, k]
        eta = X @ np.asarray(est.beta[k], dtype=float) if X.shape[1] else np.zeros(len(w))
        vf = _weighted_var(eta, w)
        vr = 0.0
        if md.z_names:
            Z = np.asarray(md.Z, dtype=float)
            vr = float(w @ np.einsum("ij,ij->i", Z @ np.asarray(est.G[k], dtype=float), Z)) / w.sum()
        rows.append((vf, vr, float(est.sigma[k]) ** 2))
    out = pd.DataFrame(
        rows, columns=["var_fixed", "var_random", "var_residual"], index=pd.Index(range(1, fit.k + 1), name="expert")
    )
    out.attrs["weights"] = "posterior class probabilities of each row's subject"
    return out


def _is_mixture(fit) -> bool:
    return getattr(fit, "family", None) in ("memoe", "moe")


def _mixture_icc(fit) -> pd.DataFrame:
    vd = expert_decomposition(fit)
    if not fit.model.mdesign.z_names:
        raise MemoeError("a MoE without random effects has no ICC; fit a MEMoE with a (terms | subject) part")
    out = pd.DataFrame(
        {
            "adjusted": vd["var_random"] / (vd["var_random"] + vd["var_residual"]),
            "conditional": vd["var_random"] / vd.sum(axis=1),
        }
    )
    out.attrs.update({"formula": ICC_FORMULA, "per": "expert", "components": vd.to_dict(), **vd.attrs})
    return out


def icc(fit, by_group: bool = False) -> pd.Series | pd.DataFrame:
    """Adjusted and conditional ICC (``performance::icc``); for a MEMoE one row per expert
    (:func:`expert_decomposition`).

    Parameters
    ----------
    fit : a mixed-model result with random effects
    by_group : bool
        ``False``: a Series ``adjusted, conditional``. ``True``: a DataFrame with one row per grouping
        factor (that factor's variance in the numerator, all variance components in the denominators).

    Returns
    -------
    pandas.Series or pandas.DataFrame
        ``attrs["formula"]`` states the formulas, ``attrs["var_residual"]`` how the residual variance was
        obtained, ``attrs["components"]`` the variances.
    """
    if not isinstance(by_group, (bool, np.bool_)):
        from memoe.errors import ArgumentTypeError

        raise ArgumentTypeError(f"by_group must be True or False, got {by_group!r}")
    if _is_mixture(fit):
        return _mixture_icc(fit)
    vd = variance_decomposition(fit)
    if len(vd.var_random) == 0:
        raise MemoeError(
            f"{type(fit).__name__} has no random effects: the ICC needs a grouping factor (fit an lme/LMM)"
        )
    denom_adj = vd.var_random_total + vd.var_residual
    denom_cond = vd.total
    if by_group:
        out: pd.Series | pd.DataFrame = pd.DataFrame(
            {"adjusted": vd.var_random / denom_adj, "conditional": vd.var_random / denom_cond}
        )
        out.index.name = "group"
    else:
        out = pd.Series(
            {"adjusted": vd.var_random_total / denom_adj, "conditional": vd.var_random_total / denom_cond},
            name="icc",
        )
    out.attrs.update(
        {
            "formula": ICC_FORMULA,
            "var_residual": vd.residual_note,
            "var_random": "mean over the fitted rows of z' Sigma z per term (Johnson 2014)",
            "components": vd.as_series().to_dict(),
            "notes": list(vd.notes),
        }
    )
    return out


def r2(fit) -> pd.Series | pd.DataFrame:
    """Nakagawa-Schielzeth marginal and conditional R² (``performance::r2_nakagawa``).

    Returns
    -------
    pandas.Series
        ``marginal, conditional``; ``attrs`` as :func:`icc`. A gls fit (no random effects) has equal
        marginal and conditional R². For a mixture: a DataFrame with one row per expert
        (:func:`expert_decomposition`).
    """
    if _is_mixture(fit):
        vd_k = expert_decomposition(fit)
        tot = vd_k.sum(axis=1)
        out_k = pd.DataFrame(
            {"marginal": vd_k["var_fixed"] / tot, "conditional": (vd_k["var_fixed"] + vd_k["var_random"]) / tot}
        )
        out_k.attrs.update({"formula": R2_FORMULA, "per": "expert", "components": vd_k.to_dict(), **vd_k.attrs})
        return out_k
    vd = variance_decomposition(fit)
    total = vd.total
    out = pd.Series(
        {"marginal": vd.var_fixed / total, "conditional": (vd.var_fixed + vd.var_random_total) / total}, name="r2"
    )
    out.attrs.update(
        {
            "formula": R2_FORMULA,
            "var_residual": vd.residual_note,
            "components": vd.as_series().to_dict(),
            "notes": list(vd.notes),
        }
    )
    return out

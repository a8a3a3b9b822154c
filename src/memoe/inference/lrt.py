"""Likelihood-ratio comparison of nested mixed models, as lme4's ``anova(m0, m1, ...)``.

Rows are the models ordered by their number of parameters; each row is compared with the previous
one: ``Chisq = 2 max(0, logLik_k - logLik_{k-1})`` on ``Df = npar_k - npar_{k-1}`` degrees of freedom.
REML fits are refitted by ML first (REML likelihoods of models with different fixed effects are not
comparable), unless ``refit=False`` and the fixed effects are identical. ``boundary=True`` replaces the
chi-square reference by the chi-bar-square mixture that applies when the smaller model puts a
variance on the boundary (see :mod:`memoe.inference.chibar`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import pandas as pd

from memoe.core.arguments import check_bool
from memoe.core.rformat import format_column, table_with_notes
from memoe.errors import MemoeWarning, ModelComparisonError, caller_stacklevel
from memoe.inference.chibar import ChiBarSquare, boundary_null, random_structure
from memoe.inference.compare_mixtures import REFIT_MESSAGE, compare_mixtures
from memoe.marginal.correlation import AR1, CompSymm, Symm

__all__ = ["REFIT_MESSAGE", "ComparisonTable", "compare", "nesting"]

COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)", "null"]


class ComparisonTable(pd.DataFrame):
    """lme4's ``anova`` table (a DataFrame) that prints its data, models and notes as well.

    Columns: ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)`` as lme4, ``null`` (the reference
    distribution of the row's statistic) and, with ``boundary=True``, ``Pr(>Chisq) naive`` (the plain
    chi-square p-value, for contrast). ``notes``, ``fits`` (the fits compared, refitted if need be,
    in row order) and ``nested`` (per row: whether the previous row's model is nested in it; None for the
    first row) are attributes.
    """

    _metadata: ClassVar[list[str]] = ["header", "notes", "fits", "nested"]

    @property
    def _constructor(self):
        # slices and arithmetic give plain DataFrames (the notes would no longer describe them)
        return pd.DataFrame

    def __str__(self) -> str:
        show = pd.DataFrame(index=self.index)
        show["npar"] = [str(int(v)) for v in self["npar"]]
        for c in ("AIC", "BIC", "logLik", "deviance", "Chisq"):
            show[c] = _fmt_column(self[c].to_numpy(dtype=float))
        show["Df"] = ["" if not np.isfinite(v) else str(int(v)) for v in self["Df"]]
        p_cols = ["Pr(>Chisq)"] + (["Pr(>Chisq) naive"] if "Pr(>Chisq) naive" in self.columns else [])
        for c in p_cols:
            show[c] = [_fmt_p(v) for v in self[c]]
        show["null"] = [str(v) if v else "" for v in self["null"]]
        return table_with_notes(show, getattr(self, "header", None), getattr(self, "notes", None))

    def __repr__(self) -> str:
        return self.__str__()


def _fmt_column(values: np.ndarray) -> list[str]:
    """Common decimals per column, 5 significant digits for the largest entry (R's ``format``)."""
    return [s if np.isfinite(v) else "" for s, v in zip(format_column(values, 5), values, strict=True)]


def _fmt_p(v: float) -> str:
    if v is None or not np.isfinite(v):
        return ""
    return "< 2.2e-16" if v < 2.2e-16 else f"{v:.4g}"


def _check_same_data(fits: list, names: list[str]) -> None:
    """Refuse fits to different observations; the message says what differs."""
    d0 = fits[0].design
    for fit, name in zip(fits[1:], names[1:], strict=True):
        d = fit.design
        what = f"{names[0]!r} and {name!r}"
        if d.n != d0.n:
            raise ModelComparisonError(
                f"models were fitted to different data: {what} use {d0.n} and {d.n} observations "
                f"({d0.frame.n_dropped} and {d.frame.n_dropped} rows dropped for missing values); "
                "fit all models to the same rows"
            )
        idx0, idx = d0.frame.data.index, d.frame.data.index
        if not idx0.equals(idx):
            n_diff = int(np.sum(idx0.to_numpy() != idx.to_numpy())) if len(idx0) == len(idx) else len(idx0)
            raise ModelComparisonError(
                f"models were fitted to different data: {what} use different rows ({n_diff} row labels differ); "
                "fit all models to the same rows"
            )
        if not np.array_equal(d0.y, d.y):
            bad = ~np.isclose(d0.y, d.y, rtol=0, atol=0)
            r0, r1 = d0.spec.response, d.spec.response
            resp = f"responses {r0!r} and {r1!r}" if r0 != r1 else f"response {r0!r}"
            raise ModelComparisonError(
                f"models were fitted to different data: {what} have different {resp} values in {int(bad.sum())} of "
                f"{d.n} rows (max abs difference {np.max(np.abs(d0.y - d.y)):.4g})"
            )


def _family(fit) -> str:
    """``"gaussian/identity"`` for LMM and marginal fits, ``"binomial/logit"`` etc. for GLMMs."""
    # GLMM / GLM results keep the response family in response_family (their `family` is "glmm")
    fam = getattr(fit, "response_family", None)
    if fam is None:
        return "gaussian/identity"
    link = getattr(getattr(fam, "link", None), "name", "?")
    return f"{getattr(fam, 'name', type(fam).__name__)}/{link}"


def _in_span(A: np.ndarray, B: np.ndarray) -> bool:
    """Every column of A lies in the column space of B (relative residual of the projection below 1e-7)."""
    if A.shape[1] == 0:
        return True
    if B.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(B, A, rcond=None)
    res = np.linalg.norm(A - B @ coef, axis=0)
    # lstsq's residual is round-off of order eps * cond(B) * |A|; 1e-7 leaves room for cond(B) up to ~1e8
    return bool(np.all(res <= 1e-7 * np.maximum(np.linalg.norm(A, axis=0), 1e-300)))


def _random_nested(small, big) -> tuple[bool, str]:
    """The smaller fit's random-effects covariance model is a special case of the larger one's.

    By parameter meaning (the same (group, column) variances and covariances, as lme4 names them), or
    else per grouping factor by column space: the smaller model's columns for a factor lie in the span
    of the larger model's columns for it, and the larger model has one unstructured block there (an
    unstructured covariance contains every covariance of columns in its span, e.g. ``(f | g)`` and
    ``(0 + f | g)`` are the same model).
    """
    s0, s1 = random_structure(small), random_structure(big)
    if s0.variances <= s1.variances and s0.covariances <= s1.covariances:
        return True, ""
    d0, d1 = small.design, big.design
    for b0 in d0.blocks:
        g = b0.factor.name
        cands = [b for b in d1.blocks if b.factor.name == g]
        terms = [t for t in d1.terms if t.group == g]
        unstructured = len(terms) == 1 and len(cands) == 1
        if not (unstructured and np.array_equal(cands[0].factor.codes, b0.factor.codes) and _in_span(b0.Z, cands[0].Z)):
            only = sorted(f"{gg}:{c}" for gg, c in s0.variances - s1.variances if gg == g) or [g]
            return False, f"random effects {', '.join(only)} of the smaller model are not in the larger one"
    return True, ""


def _residual_nested(small, big) -> tuple[bool, str]:
    """Residual correlation / variance structures (gls / lme fits): None, equal, or AR1/CompSymm inside Symm."""
    c0 = getattr(small.model, "correlation", None)
    c1 = getattr(big.model, "correlation", None)
    if c0 is not None and c0 != c1:
        inside_symm = (
            isinstance(c1, Symm) and isinstance(c0, AR1 | CompSymm) and c0.group == c1.group
            and getattr(c0, "visit", None) == c1.visit
        )
        if not inside_symm:
            return False, f"residual correlations {c0!r} and {c1!r} are not nested"
    w0, w1 = getattr(small.model, "weights", None), getattr(big.model, "weights", None)
    if w0 is not None and w0 != w1:
        return False, f"variance functions {w0!r} and {w1!r} are not nested"
    return True, ""


def nesting(small, big) -> tuple[bool, str]:
    """Whether ``small`` is a special case of ``big`` (same family; fixed effects, random effects and
    residual structure each contained), and if not, why.

    Parameters
    ----------
    small, big : fitted models
        ``small`` has no more parameters than ``big``.

    Returns
    -------
    nested : bool
    reason : str
        Empty when nested.
    """
    f0, f1 = _family(small), _family(big)
    if f0 != f1:
        return False, f"different response families ({f0} and {f1})"
    X0, X1 = small.design.X, big.design.X
    if not _in_span(X0, X1):
        coef, *_ = np.linalg.lstsq(X1, X0, rcond=None) if X1.shape[1] else (np.zeros((0, X0.shape[1])),)
        res = np.linalg.norm(X0 - X1 @ coef, axis=0) if X1.shape[1] else np.linalg.norm(X0, axis=0)
        names = [n for n, r, a in zip(small.design.fixef_names, res, np.linalg.norm(X0, axis=0), strict=True)
                 if r > 1e-7 * max(a, 1e-300)]
        return False, f"fixed effects {names} of the smaller model are not in the span of the larger model's"
    ok, why = _random_nested(small, big)
    if not ok:
        return ok, why
    return _residual_nested(small, big)


def _same_fixed(fits: list) -> bool:
    X0, names0 = fits[0].design.X, list(fits[0].design.fixef_names)
    return all(
        list(f.design.fixef_names) == names0 and f.design.X.shape == X0.shape and np.allclose(f.design.X, X0)
        for f in fits[1:]
    )


def _unpack(fits: tuple, names: list[str] | None) -> tuple[list, list[str]]:
    if len(fits) == 1 and isinstance(fits[0], Mapping):
        mapping = fits[0]
        return list(mapping.values()), [str(k) for k in mapping]
    fits_l = list(fits)
    if names is None:
        names = [f"model{i + 1}" for i in range(len(fits_l))]
    if len(names) != len(fits_l):
        raise ModelComparisonError(f"{len(names)} names for {len(fits_l)} models")
    return fits_l, [str(n) for n in names]


def compare(*fits, boundary: bool = False, refit: bool = True, names: list[str] | None = None) -> ComparisonTable:
    """Likelihood-ratio tests of nested linear mixed models (lme4's ``anova(m0, m1, ...)``).

    Parameters
    ----------
    *fits : LmmResult, or one dict ``{name: fit}``
        At least two fits to the same observations; a dict names the rows.
    boundary : bool, default False
        Use the chi-bar-square null distribution for variances tested on the boundary (e.g.
        ``0.5 chi2(0) + 0.5 chi2(1)`` for one added variance); the ``null`` column and a note say which
        distribution each row used, and ``Pr(>Chisq) naive`` keeps the plain chi-square p-value.
    refit : bool, default True
        Refit REML fits by ML before comparing (with a warning, as lme4's message). With ``refit=False``
        REML fits are compared as they are, which is valid only when all fixed effects are identical.
    names : list of str, optional
        Row names (default ``model1, model2, ...`` in the order given).

    Returns
    -------
    ComparisonTable
        Rows ordered by ``npar``; columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq), null``.

    Raises
    ------
    ModelComparisonError
        Fewer than two models, different data, REML fits with different fixed effects and ``refit=False``,
        a mix of REML and ML fits with ``refit=False``, or (``boundary=True``) non-nested random effects.

    Warns
    -----
    MemoeWarning
        When two consecutive models are not nested (see :func:`nesting`): their row keeps AIC, BIC and
        logLik but no Chisq or p-value, and a note says why (lme4's ``anova`` would report a chi-square
        p-value that has no meaning).

    R equivalent
    ------------
    ``anova(fit0, fit1, ...)`` for ``merMod`` objects (lme4), which refits REML fits with ML.

    Notes
    -----
    ``Chisq = 2 max(0, logLik_k - logLik_{k-1})``, ``Df = npar_k - npar_{k-1}``; the p-value is missing when
    ``Df = 0``. AIC and BIC are lme4's (BIC with ``log(nobs)``, also for REML fits). Under H0 the plain
    chi-square reference is conservative when a variance is on the boundary: the statistic is then
    zero with probability about 1/2 (Self & Liang 1987; Stram & Lee 1994).

    Examples
    --------
    >>> m0 = memoe.lmm("Reaction ~ Days + (1 | Subject)", df).fit(reml=False)  # doctest: +SKIP
    >>> m1 = memoe.lmm("Reaction ~ Days + (Days || Subject)", df).fit(reml=False)  # doctest: +SKIP
    >>> memoe.compare(m0, m1, boundary=True)  # doctest: +SKIP
    """
    boundary = check_bool(boundary, "boundary")
    refit = check_bool(refit, "refit")
    fits_l, names_l = _unpack(fits, names)
    if any(getattr(f, "family", None) in ("memoe", "moe") for f in fits_l):
        # criteria only: no regular LRT for K
        return compare_mixtures(fits_l, names_l, boundary=boundary, refit=refit)
    if len(fits_l) < 2:
        raise ModelComparisonError("compare() needs at least two fitted models")
    dup = sorted({n for n in names_l if names_l.count(n) > 1})
    if dup:
        raise ModelComparisonError(f"model names must be distinct; {dup} repeated")
    for f, n in zip(fits_l, names_l, strict=True):
        if getattr(f, "family", None) == "gee":
            raise ModelComparisonError(
                f"{n!r} is a GEE fit: a GEE is not likelihood-based (no log-likelihood), so it cannot enter a "
                "likelihood-ratio test or an AIC/BIC table; compare GEE fits with fit.qic() (QIC, QICu, CIC)"
            )
        if type(f).__name__ == "MEMoEResult":
            raise ModelComparisonError(
                f"{n!r} is a mixture of experts: mixtures with different numbers of experts are not nested in the "
                "regular sense (the LRT has no chi-square null); compare them with memoe.select_k (BIC, ICL)"
            )
        if not hasattr(f, "loglik") or not hasattr(f, "design"):
            raise ModelComparisonError(
                f"{n!r} is not a fitted likelihood model ({type(f).__name__}); compare() takes LMM, GLMM, gls and "
                "lme fits"
            )
    _check_same_data(fits_l, names_l)

    notes: list[str] = []
    reml = [bool(f.reml) for f in fits_l]
    if any(reml):
        if refit:
            warnings.warn(REFIT_MESSAGE, MemoeWarning, stacklevel=caller_stacklevel())
            fits_l = [_refit_ml(f, n) if r else f for f, n, r in zip(fits_l, names_l, reml, strict=True)]
            notes.append(REFIT_MESSAGE)
        elif not all(reml):
            raise ModelComparisonError(
                "cannot compare REML and ML fits: "
                + ", ".join(f"{n}={'REML' if r else 'ML'}" for n, r in zip(names_l, reml, strict=True))
                + "; use refit=True"
            )
        elif not _same_fixed(fits_l):
            raise ModelComparisonError(
                "REML likelihoods of models with different fixed effects are not comparable "
                "(the REML criterion depends on X); use refit=True to compare ML fits"
            )
        else:
            notes.append("REML fits with identical fixed effects compared by their REML likelihoods (refit=False)")

    npar = np.array([f.df_model for f in fits_l], dtype=int)
    order = np.argsort(npar, kind="stable")
    fits_o = [fits_l[i] for i in order]
    names_o = [names_l[i] for i in order]
    # GLMMs of Gamma-type families: lme4's logLik carries R's aic "+ 2" for the profiled dispersion; the
    # comparison uses the log-likelihood itself, which is what a GLM's logLik is (comparable_loglik)
    llk = np.array([getattr(f, "comparable_loglik", f.loglik) for f in fits_o])
    if any(v != f.loglik for v, f in zip(llk, fits_o, strict=True)):
        notes.append(
            "logLik of the GLMMs with a dispersion (Gamma, inverse Gaussian, Gaussian) is shown without lme4's "
            "aic '+ 2', so that it compares with a GLM's logLik (R's glm); AIC / BIC are lme4's"
        )
    npar = npar[order]
    dllk = np.diff(llk)
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, dllk)])
    df = np.concatenate([[np.nan], np.diff(npar).astype(float)])

    p = np.full(len(fits_o), np.nan)
    p_naive = np.full(len(fits_o), np.nan)
    nulls: list[str] = [""]
    nested: list[bool | None] = [None]
    not_nested: list[str] = []
    for k in range(1, len(fits_o)):
        dk = int(df[k])
        if boundary and dk > 0:
            boundary_null(fits_o[k - 1], fits_o[k], dk)  # refuses non-nested random effects, as documented
        ok, why = nesting(fits_o[k - 1], fits_o[k])
        nested.append(ok)
        if not ok:
            # lme4's anova would still report a chi-square p-value here; it has no meaning for non-nested models
            chisq[k] = np.nan
            nulls.append("")
            msg = (
                f"{names_o[k - 1]} and {names_o[k]} are not nested ({why}): the likelihood-ratio test is not valid, "
                "no p-value; compare them by AIC / BIC"
            )
            notes.append(msg)
            not_nested.append(msg)
            continue
        if dk == 0:
            nulls.append("")
            notes.append(f"{names_o[k - 1]} and {names_o[k]} have the same number of parameters: no test")
            continue
        p_naive[k] = float(ChiBarSquare.plain(dk).sf(chisq[k]))
        if boundary:
            null, reason = boundary_null(fits_o[k - 1], fits_o[k], dk)
            notes.append(f"{names_o[k - 1]} vs {names_o[k]}: {reason}")
        else:
            null = ChiBarSquare.plain(dk)
        p[k] = float(null.sf(chisq[k]))
        nulls.append(str(null))
        if dllk[k - 1] < -1e-6 * max(1.0, abs(llk[k])):
            notes.append(
                f"{names_o[k]} has a lower log-likelihood than {names_o[k - 1]} although it has more parameters: "
                "the models are not nested, or a fit did not converge"
            )
    if not_nested:
        warnings.warn("; ".join(not_nested), MemoeWarning, stacklevel=caller_stacklevel())
    if not boundary and any(np.isfinite(p)):
        notes.append(
            "p-values from chi2(Df); conservative when the smaller model puts a variance on the boundary "
            "(use boundary=True)"
        )

    table = ComparisonTable(
        {
            "npar": npar,
            "AIC": [f.aic for f in fits_o],
            "BIC": [f.bic for f in fits_o],
            "logLik": llk,
            "deviance": -2.0 * llk,
            "Chisq": chisq,
            "Df": df,
            "Pr(>Chisq)": p,
            "null": nulls,
        },
        index=pd.Index(names_o),
    )
    if boundary:
        table.insert(len(COLUMNS) - 1, "Pr(>Chisq) naive", p_naive)
    data_name = getattr(fits_o[0].model, "data_name", None)
    header = [f"Data: {data_name}"] if data_name else []
    header.append("Models:")
    header.extend(f"{n}: {f.model.formula}" for n, f in zip(names_o, fits_o, strict=True))
    table.header = header
    table.notes = notes
    table.fits = fits_o
    table.nested = nested
    return table


def _refit_ml(fit, name: str):
    """The ML refit of a REML fit (ModelComparisonError if the fit cannot be refitted, e.g. loaded from disk)."""
    model = getattr(fit, "model", None)
    if model is None or not hasattr(model, "fit"):
        raise ModelComparisonError(
            f"{name!r} is a REML fit that cannot be refitted by ML here (no model attached); refit it with "
            "reml=False, or pass refit=False if the fixed effects are identical"
        )
    return model.fit(reml=False)

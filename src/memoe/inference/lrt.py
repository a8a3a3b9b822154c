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

from memoe.errors import MemoeWarning, ModelComparisonError
from memoe.inference.chibar import ChiBarSquare, boundary_null

__all__ = ["REFIT_MESSAGE", "ComparisonTable", "compare"]

REFIT_MESSAGE = "refitting model(s) with ML (instead of REML)"
COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)", "null"]


class ComparisonTable(pd.DataFrame):
    """lme4's ``anova`` table (a DataFrame) that prints its data, models and notes as well.

    Columns: ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)`` as lme4, ``null`` (the reference
    distribution of the row's statistic) and, with ``boundary=True``, ``Pr(>Chisq) naive`` (the plain
    chi-square p-value, for contrast). ``notes`` and ``fits`` (the fits compared, refitted if need be,
    in row order) are attributes.
    """

    _metadata: ClassVar[list[str]] = ["header", "notes", "fits"]

    @property
    def _constructor(self):
        # slices and arithmetic give plain DataFrames (the notes would no longer describe them)
        return pd.DataFrame

    def __str__(self) -> str:
        from memoe.core.rformat import format_table

        show = pd.DataFrame(index=self.index)
        show["npar"] = [str(int(v)) for v in self["npar"]]
        for c in ("AIC", "BIC", "logLik", "deviance", "Chisq"):
            show[c] = _fmt_column(self[c].to_numpy(dtype=float))
        show["Df"] = ["" if not np.isfinite(v) else str(int(v)) for v in self["Df"]]
        p_cols = ["Pr(>Chisq)"] + (["Pr(>Chisq) naive"] if "Pr(>Chisq) naive" in self.columns else [])
        for c in p_cols:
            show[c] = [_fmt_p(v) for v in self[c]]
        show["null"] = [str(v) if v else "" for v in self["null"]]
        lines = list(getattr(self, "header", None) or [])
        lines.append(format_table(show))
        notes = getattr(self, "notes", None) or []
        if notes:
            lines.append("")
            lines.extend(f"Note: {n}" for n in notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.__str__()


def _fmt_column(values: np.ndarray) -> list[str]:
    """Common decimals per column, 5 significant digits for the largest entry (R's ``format``)."""
    from memoe.core.rformat import format_column

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
    fits_l, names_l = _unpack(fits, names)
    if any(getattr(f, "family", None) in ("memoe", "moe") for f in fits_l):
        from memoe.inference.compare_mixtures import compare_mixtures  # criteria only: no regular LRT for K

        return compare_mixtures(fits_l, names_l, boundary=boundary, refit=refit)
    if len(fits_l) < 2:
        raise ModelComparisonError("compare() needs at least two fitted models")
    for f, n in zip(fits_l, names_l, strict=True):
        if not hasattr(f, "loglik") or not hasattr(f, "design"):
            raise ModelComparisonError(f"{n!r} is not a fitted mixed model ({type(f).__name__})")
    _check_same_data(fits_l, names_l)

    notes: list[str] = []
    reml = [bool(f.reml) for f in fits_l]
    if any(reml):
        if refit:
            warnings.warn(REFIT_MESSAGE, MemoeWarning, stacklevel=3)
            fits_l = [f.model.fit(reml=False) if r else f for f, r in zip(fits_l, reml, strict=True)]
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
    llk = np.array([f.loglik for f in fits_o])
    npar = npar[order]
    dllk = np.diff(llk)
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, dllk)])
    df = np.concatenate([[np.nan], np.diff(npar).astype(float)])

    p = np.full(len(fits_o), np.nan)
    p_naive = np.full(len(fits_o), np.nan)
    nulls: list[str] = [""]
    for k in range(1, len(fits_o)):
        dk = int(df[k])
        if dk == 0:
            nulls.append("")
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
    return table

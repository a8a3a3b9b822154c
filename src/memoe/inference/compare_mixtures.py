"""Comparing mixtures with different numbers of experts: a table of criteria, no chi-square test.

``memoe.compare(fit_k2, fit_k3)`` with MEMoE / MoE fits (and LMM fits, which are K = 1 mixtures) comes
here. The likelihood-ratio test of K against K + 1 experts is non-regular: under the smaller model the
extra expert's mixing proportion is on the boundary of the parameter space (zero) or its parameters are
not identified (two experts equal), so twice the log-likelihood gain does not follow a chi-square
distribution with the difference in parameters as df, and its p-value has no meaning (McLachlan 1987;
Hartigan 1985). The table reports the criteria used to choose K instead (BIC, ICL, AIC, entropy); the
null distribution of the LRT statistic can be calibrated by a parametric bootstrap (McLachlan 1987):
simulate from the smaller fit, refit both models, repeat.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
import pandas as pd

from memoe.core.rformat import format_column, table_with_notes
from memoe.errors import MemoeWarning, ModelComparisonError, caller_stacklevel

__all__ = [
    "NON_REGULAR_NOTE",
    "REFIT_MESSAGE",
    "MixtureComparison",
    "check_same_data",
    "compare_mixtures",
    "is_mixture",
]

#: the note and warning when REML fits are refitted by ML before a comparison (lme4's words); defined here,
#: the lower of the two comparison modules, so that :mod:`memoe.inference.lrt` imports it without a cycle
REFIT_MESSAGE = "refitting model(s) with ML (instead of REML)"

COLUMNS = ["k", "npar", "logLik", "AIC", "BIC", "ICL", "entropy"]

NON_REGULAR_NOTE = (
    "no likelihood-ratio p-value: the LRT for the number of experts is non-regular (under the smaller model "
    "the extra expert's proportion is on the boundary or its parameters are not identified), so 2 x the "
    "logLik gain is not chi-square distributed; choose K by BIC / ICL, or calibrate the LRT by a parametric "
    "bootstrap: memoe.bootstrap_lrt(fit_small, fit_large) (simulate from the smaller fit, refit both; McLachlan 1987)"
)
SAME_K_NOTE = (
    "no likelihood-ratio p-value: mixtures are not checked for nesting; test nested hypotheses within one "
    "fit with fit.test() (Wald) or compare the criteria"
)


def is_mixture(fit) -> bool:
    """A MEMoE or MoE fit (:class:`~memoe.moe.result.MEMoEResult`)."""
    return getattr(fit, "family", None) in ("memoe", "moe") and hasattr(fit, "posterior")


class MixtureComparison(pd.DataFrame):
    """Criteria of mixture fits (a DataFrame) that also prints the models and why there is no p-value.

    Columns ``k, npar, logLik, AIC, BIC, ICL, entropy``; rows ordered by ``k`` then ``npar``.
    ``header``, ``notes`` and ``fits`` (the fits compared, ML refits of REML LMM fits, in row order) are
    attributes; ``attrs["notes"]`` holds the notes too.
    """

    _metadata: ClassVar[list[str]] = ["header", "notes", "fits"]

    @property
    def _constructor(self):
        # slices give plain DataFrames (the notes would no longer describe them)
        return pd.DataFrame

    def __str__(self) -> str:
        show = pd.DataFrame(index=self.index)
        show["k"] = [str(int(v)) for v in self["k"]]
        show["npar"] = [str(int(v)) for v in self["npar"]]
        for c in ("logLik", "AIC", "BIC", "ICL"):
            show[c] = format_column(self[c].to_numpy(dtype=float), 5)
        show["entropy"] = [f"{v:.4f}" for v in self["entropy"]]
        return table_with_notes(show, getattr(self, "header", None), getattr(self, "notes", None))

    def __repr__(self) -> str:
        return self.__str__()


def _response(fit) -> tuple[np.ndarray, pd.Index, str]:
    """Response values, row labels and response name of the rows a fit used."""
    if is_mixture(fit):
        md = fit.model.mdesign
        return md.design.y, md.data.index, md.design.spec.response
    d = fit.design
    return d.y, d.frame.data.index, d.spec.response


def check_same_data(fits: list, names: list[str]) -> None:
    """Mixtures and Gaussian LMMs only, fitted to the same rows and response (else ModelComparisonError)."""
    for f, n in zip(fits, names, strict=True):
        # LMM fits are recognised by their family tag, not by class, so this module need not import memoe.lmm
        # (whose result imports memoe.inference)
        if not (is_mixture(f) or getattr(f, "family", None) == "lmm"):
            raise ModelComparisonError(
                f"{n!r} ({type(f).__name__}) cannot be compared with mixture fits: compare() takes MEMoE / MoE "
                "fits and LMM fits (memoe.lmm, a one-expert mixture) of the same response"
            )
    y0, idx0, r0 = _response(fits[0])
    for f, n in zip(fits[1:], names[1:], strict=True):
        y, idx, r = _response(f)
        what = f"{names[0]!r} and {n!r}"
        if len(y) != len(y0) or not idx.equals(idx0):
            raise ModelComparisonError(
                f"models were fitted to different data: {what} use {len(y0)} and {len(y)} observations "
                "(or different rows); fit all models to the same rows"
            )
        if not np.array_equal(y, y0):
            resp = f"responses {r0!r} and {r!r}" if r != r0 else f"response {r0!r}"
            raise ModelComparisonError(
                f"models were fitted to different data: {what} have different {resp} values in "
                f"{int(np.sum(y != y0))} of {len(y)} rows"
            )


def _describe(fit) -> str:
    if is_mixture(fit):
        m = fit.model
        gate = m.gating if m.gating is not None else "none"
        return f"{type(m).__name__}(k = {fit.k}): {m.formula}; gating {gate}"
    return f"LMM (k = 1): {fit.model.formula}"


def compare_mixtures(fits: list, names: list[str], boundary: bool = False, refit: bool = True) -> MixtureComparison:
    """Criteria table of mixture fits (and LMM fits as one-expert mixtures); no chi-square test.

    Parameters
    ----------
    fits : list
        At least two fits: :class:`~memoe.moe.result.MEMoEResult` (MEMoE, MoE) and/or
        :class:`~memoe.lmm.result.LmmResult`, all fitted to the same rows and response.
    names : list of str
        Row names.
    boundary : bool
        Must be False: the chi-bar-square of a variance on the boundary does not describe the number of
        mixture components.
    refit : bool
        Refit REML LMM fits by ML first (with a warning, as :func:`memoe.compare`); with False a REML
        fit is refused (REML and mixture likelihoods are not comparable).

    Returns
    -------
    MixtureComparison
        Columns ``k, npar, logLik, AIC, BIC, ICL, entropy``. ``BIC = -2 logLik + npar log(N)`` with N the
        number of subjects for every row (the mixtures' convention; an LMM's own ``bic`` uses log(nobs)),
        ``ICL = BIC + 2 x classification entropy`` (= BIC for K = 1), ``entropy`` the relative entropy
        (1 for K = 1). The notes say why there is no p-value (see the module docstring).

    Raises
    ------
    ModelComparisonError
        Fewer than two fits, a fit that is neither a mixture nor an LMM, different data, a REML LMM fit
        with ``refit=False``, or ``boundary=True``.
    """
    if len(fits) < 2:
        raise ModelComparisonError("compare() needs at least two fitted models")
    check_same_data(fits, names)
    if boundary:
        raise ModelComparisonError(
            "boundary=True (a chi-bar-square null for variances on the boundary) does not apply to mixtures: "
            "the LRT for the number of experts has no chi-square-type null; use a parametric bootstrap"
        )
    notes: list[str] = []
    fits = list(fits)
    reml = [not is_mixture(f) and bool(f.reml) for f in fits]
    if any(reml):
        if not refit:
            bad = [n for n, r in zip(names, reml, strict=True) if r]
            raise ModelComparisonError(
                f"{bad} are REML fits: a REML likelihood is not comparable with a mixture's likelihood; "
                "use refit=True or fit with reml=False"
            )
        warnings.warn(REFIT_MESSAGE, MemoeWarning, stacklevel=caller_stacklevel())
        fits = [f.model.fit(reml=False) if r else f for f, r in zip(fits, reml, strict=True)]
        notes.append(REFIT_MESSAGE)
    mixture = next(f for f in fits if is_mixture(f))
    n_subjects = mixture.n_subjects  # the same rows, so the same subjects in every fit
    log_n = math.log(n_subjects)

    rows = []
    for f in fits:
        ll = float(f.loglik)
        npar = int(f.df_model)
        bic = -2.0 * ll + log_n * npar
        if is_mixture(f):
            k, icl, ent = f.k, f.icl, f.entropy
        else:
            k, icl, ent = 1, bic, 1.0
        rows.append({"k": k, "npar": npar, "logLik": ll, "AIC": -2.0 * ll + 2.0 * npar, "BIC": bic, "ICL": icl,
                     "entropy": ent})
    frame = pd.DataFrame(rows, index=pd.Index(names))
    order = np.lexsort((frame["npar"].to_numpy(), frame["k"].to_numpy()))
    frame = frame.iloc[order]
    fits_o = [fits[i] for i in order]
    table = MixtureComparison(frame[COLUMNS])

    if any(not is_mixture(f) for f in fits_o):
        notes.append(
            f"BIC and ICL use log(N) with N = {n_subjects} subjects for every row (the mixtures' convention; "
            "an LMM's own bic uses log(nobs))"
        )
    notes.append(NON_REGULAR_NOTE if table["k"].nunique() > 1 else SAME_K_NOTE)
    notes.append(f"lowest BIC: {table['BIC'].idxmin()}; lowest ICL: {table['ICL'].idxmin()}")

    header = ["Models:"]
    header.extend(f"{n}: {_describe(f)}" for n, f in zip(table.index, fits_o, strict=True))
    table.header = header
    table.notes = notes
    table.fits = fits_o
    table.attrs["notes"] = list(notes)
    return table

"""Type I and type III F-test tables of the fixed-effects terms, as lmerTest's ``anova``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.errors import HypothesisError
from memoe.inference.anova_contrasts import type1_contrasts, type3_contrasts
from memoe.inference.contrasts import Hypothesis, reduce_rank
from memoe.inference.ddf import f_test, ingredient, normalize_ddf, note
from memoe.inference.frames import InferenceFrame

__all__ = ["anova", "term_contrasts"]

_TYPES = {"1": 1, "i": 1, "3": 3, "iii": 3}
_ROMAN = {1: "I", 3: "III"}
_METHOD_TITLE = {
    "satterthwaite": "Satterthwaite's method",
    "kenward-roger": "Kenward-Roger's method",
    "containment": "containment df",
    "residual": "residual df",
    "asymptotic": "asymptotic chi-square",
}
COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def _normalize_type(type) -> int:
    key = str(type).strip().lower()
    if key not in _TYPES:
        raise HypothesisError(f"unknown ANOVA type {type!r}; choose 1 ('I', sequential) or 3 ('III', marginal)")
    return _TYPES[key]


def term_contrasts(fit, type: int | str = 3) -> dict[str, np.ndarray]:
    """The contrast matrix (k, p) of each fixed-effects term (lmerTest's ``get_contrasts_type1/3``)."""
    t = _normalize_type(type)
    terms = ingredient(fit, "terms")
    if t != 1:
        return type3_contrasts(fit, terms)
    # lmerTest builds the sequential contrasts from the model matrix as given (unweighted X'X), also
    # with prior weights: undo the LMM's working sqrt(w) scaling of X
    raw = getattr(fit.design, "raw_rows", None)
    return type1_contrasts(fit.design.X if raw is None else raw(fit.design.X), terms)


def anova(fit, ddf: str = "satterthwaite", type: int | str = 3) -> InferenceFrame:
    """F tests of the fixed-effects terms.

    Parameters
    ----------
    fit : LmmResult
    ddf : {"satterthwaite", "kenward-roger", "containment", "residual", "asymptotic"}
        ``"containment"`` uses nlme's per-term df.
    type : {3, 1, "III", "I"}
        Type III: lmerTest's marginal contrasts (each term orthogonalised against the terms containing
        it, in treatment coding and mapped to the fit's coding); type I: sequential (Doolittle).

    R equivalent
    ------------
    ``lmerTest::anova(fit, type = 3, ddf = "Satterthwaite")`` (``"Kenward-Roger"`` as pbkrtest's).

    Returns
    -------
    InferenceFrame
        Rows = model terms (``"Days"``, ``"age:Sex"``; no intercept row), columns
        ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)`` with ``Mean Sq = F sigma^2`` and
        ``Sum Sq = NumDF Mean Sq`` (lmerTest's convention; for Kenward-Roger the unscaled F enters
        ``Mean Sq`` while ``F value`` and the p-value use the scaled F). Empty for an intercept-only
        model.

    Examples
    --------
    >>> import memoe
    >>> orth = memoe.datasets.load("Orthodont")
    >>> fit = memoe.lmm("distance ~ age * Sex + (age | Subject)", orth).fit()
    >>> memoe.inference.anova(fit, ddf="kenward-roger").index.tolist()
    ['age', 'Sex', 'age:Sex']
    """
    method = normalize_ddf(ddf)
    t = _normalize_type(type)
    if method == "kenward-roger":
        ingredient(fit, "kr")  # raises the REML-only error before any work
    contrasts = term_contrasts(fit, t)
    term_df = {}
    if method == "containment":
        terms = ingredient(fit, "terms")
        term_df = dict(zip(terms.labels, ingredient(fit, "containment").terms, strict=True))
    s2 = fit.sigma**2
    rows = []
    for label, Lt in contrasts.items():
        if Lt.shape[0] == 0:
            rows.append([np.nan] * len(COLUMNS))
            continue
        L, rhs = reduce_rank(Hypothesis(L=Lt, rhs=np.zeros(Lt.shape[0]), labels=[label] * Lt.shape[0]))
        res = f_test(fit, L, rhs, method, containment=term_df.get(label))
        # lmerTest: Mean Sq from the unscaled statistic, F value and p from the (KR-)scaled one
        ms = res.F_unscaled * s2
        rows.append([ms * res.ndf, ms, res.ndf, res.ddf, res.F, res.p])
    frame = pd.DataFrame(rows, index=pd.Index(list(contrasts), dtype=object), columns=COLUMNS)
    frame["NumDF"] = frame["NumDF"].astype(float)
    title = f"Type {_ROMAN[t]} Analysis of Variance Table with {_METHOD_TITLE[method]}"
    return InferenceFrame.build(frame, ddf=method, note=note(method, None), title=title, type=t)

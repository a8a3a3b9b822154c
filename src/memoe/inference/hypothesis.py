"""F tests of linear hypotheses ``L beta = rhs`` about the fixed effects."""

from __future__ import annotations

import pandas as pd

from memoe.inference.contrasts import as_hypothesis, reduce_rank
from memoe.inference.ddf import f_test, normalize_ddf, note
from memoe.inference.frames import InferenceFrame
from memoe.inference.tables import normalize_robust

__all__ = ["test"]


def test(fit, hypothesis, ddf: str = "satterthwaite", robust: str | None = None) -> InferenceFrame:
    """F test of a linear hypothesis about the fixed effects.

    Parameters
    ----------
    fit : LmmResult
    hypothesis : str, array-like, pandas Series / DataFrame, dict or ``(L, rhs)``
        ``"Days = 0"``, ``"Days = 2*x"``, ``"a - b = 0"``, several equations separated by commas, or a
        contrast vector / matrix with one column per coefficient (see :mod:`memoe.inference.contrasts`).
    ddf : {"satterthwaite", "kenward-roger", "containment", "residual", "asymptotic"}
        Satterthwaite follows lmerTest's ``contestMD`` (one t per eigenvector of ``L Phi L'``);
        Kenward-Roger pbkrtest's ``KRmodcomp`` (scaled F; REML fits only); ``"asymptotic"`` refers
        ``q F`` to chi-square(q) (DenDF shown as inf).
    robust : {"CR0", "CR1", "CR2", ...}, optional
        Cluster-robust covariance in the Wald statistic (df from ``ddf``'s model-based method).

    Returns
    -------
    InferenceFrame
        One row (indexed by the hypothesis) with ``F value, NumDF, DenDF, Pr(>F)``;
        ``attrs``: ``ddf`` (method), ``note``, ``L`` (the contrast as a DataFrame), ``rhs``, and
        ``F_scaling`` (Kenward-Roger's scale factor, 1 otherwise).

    R equivalent
    ------------
    ``lmerTest::contest(fit, L, ddf = "Satterthwaite")`` (``"Kenward-Roger"``: pbkrtest's ``KRmodcomp``).

    Raises
    ------
    HypothesisError
        Unknown coefficient (the message lists them), malformed or non-linear equation, contrast with
        the wrong number of columns, contradictory equations, Kenward-Roger on an ML fit.

    Examples
    --------
    >>> fit.test("Days = 0", ddf="kenward-roger")  # doctest: +SKIP
    F test of a linear hypothesis
                F value  NumDF  DenDF    Pr(>F)
    Days = 0  45.852972      1   17.0  0.000003
    ---
    Kenward-Roger's method: adjusted covariance, scaled F and its degrees of freedom (as pbkrtest)
    """
    method = normalize_ddf(ddf)
    robust = normalize_robust(robust)
    names = list(fit.fixef.index)
    hyp = as_hypothesis(hypothesis, names)
    L, rhs = reduce_rank(hyp)
    res = f_test(fit, L, rhs, method, robust)
    frame = pd.DataFrame(
        {"F value": [res.F], "NumDF": [res.ndf], "DenDF": [res.ddf], "Pr(>F)": [res.p]},
        index=pd.Index([hyp.label]),
    )
    return InferenceFrame.build(
        frame,
        ddf=method,
        note=note(method, robust),
        title="F test of a linear hypothesis",
        L=pd.DataFrame(hyp.L, index=hyp.labels, columns=names),
        rhs=hyp.rhs.copy(),
        F_scaling=res.scale,
        robust=robust,
    )

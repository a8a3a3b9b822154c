"""Wald tests of linear hypotheses about a MEMoE fit's natural-scale parameters.

A mixture fit has several parameters with the same term name (``x`` in every expert, ``w1`` in
every gating equation), so hypotheses name parameters as ``part[expert]:term``::

    "fixed[1]:x = fixed[2]:x"                   same effect of x in experts 1 and 2
    "gating[2]:w1 = 0, gating[3]:w1 = 0"        w1 does not move subjects between experts
    "sigma[1] = sigma[2]"                       equal residual SDs

The statistic is ``W = (L psi - r)' (L V L')^- (L psi - r)`` referred to chi-square with
``rank(L V L')`` degrees of freedom, with ``V`` the sandwich (``robust="sandwich"``, default) or the
inverse observed information (``robust=None``). Both are large-sample approximations; there is no
finite-sample df correction for mixtures, and hypotheses putting a variance on the boundary (an SD = 0)
are not Wald tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import chi2

from memoe.errors import HypothesisError
from memoe.inference.contrasts import as_hypothesis, reduce_rank
from memoe.inference.frames import InferenceFrame

__all__ = ["flat_names", "wald_test"]


def flat_names(index: pd.MultiIndex) -> list[str]:
    """``part[expert]:term`` labels (``sigma[k]`` for the residual SD) of the natural parameters."""
    out = []
    for part, expert, term in index:
        out.append(f"{part}[{expert}]" if part == "sigma" else f"{part}[{expert}]:{term}")
    return out


def wald_test(fit, hypothesis, robust: str | None = "sandwich") -> InferenceFrame:
    """Wald chi-square test of ``L psi = rhs`` for a fitted MEMoE.

    Parameters
    ----------
    fit : MEMoEResult
    hypothesis : str, array-like, pandas Series / DataFrame, dict or ``(L, rhs)``
        Equations in the ``part[expert]:term`` names (see the module docstring; ``fit.param_names``
        lists them), or a contrast with one column per natural parameter.
    robust : {"sandwich", None}
        Sandwich covariance (default) or the inverse observed information (None).

    Returns
    -------
    InferenceFrame
        One row with ``Chisq, Df, Pr(>Chisq)``; ``attrs``: ``L`` (DataFrame), ``rhs``, ``estimate``
        (``L psi``), ``vcov`` (which covariance).

    Raises
    ------
    HypothesisError
        Unknown parameter name (the message lists them), malformed equation, or a contrast whose
        covariance is zero (e.g. comparing parameters that the model constrains to be equal).
    """
    V = fit.vcov(robust=robust)  # validates robust; labelled part[expert]:term
    names = list(V.index)
    hyp = as_hypothesis(hypothesis, names)
    L, rhs = reduce_rank(hyp)
    psi = fit.params.to_numpy()
    diff = L @ psi - rhs
    Vn = V.to_numpy()
    M = L @ Vn @ L.T
    M = 0.5 * (M + M.T)
    evals, evecs = np.linalg.eigh(M)
    # Scale from the parameters' own variances: a difference of parameters the model ties together
    # has variance zero up to round-off, whatever the other eigenvalues are.
    scale = float(np.max((L**2) @ np.abs(np.diag(Vn)), initial=0.0))
    keep = evals > 1e-9 * max(scale, 1e-300)
    if not keep.any():
        raise HypothesisError(
            f"the hypothesis {hyp.label!r} has zero estimated variance; it compares parameters the model "
            "constrains (shared fixed effects, common covariance or residual variance)"
        )
    proj = evecs[:, keep].T @ diff
    stat = float(np.sum(proj**2 / evals[keep]))
    df = int(keep.sum())
    frame = pd.DataFrame(
        {"Chisq": [stat], "Df": [df], "Pr(>Chisq)": [float(chi2.sf(stat, df))]},
        index=pd.Index([hyp.label]),
    )
    which = "sandwich A^-1 B A^-1" if robust is not None else "inverse observed information"
    note = f"Wald chi-square test with the {which} covariance (large-sample approximation)"
    if df < L.shape[0]:
        note += f"; {L.shape[0] - df} equation(s) redundant under the model's constraints"
    return InferenceFrame.build(
        frame,
        ddf="asymptotic",
        note=note,
        title="Wald test of a linear hypothesis",
        L=pd.DataFrame(hyp.L, index=hyp.labels, columns=names),
        rhs=hyp.rhs.copy(),
        estimate=hyp.L @ psi,
        vcov="robust" if robust is not None else "model",
    )

"""The fixed-effects coefficient table with a choice of denominator degrees of freedom."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.inference.ddf import normalize_ddf, note, t_tests
from memoe.inference.frames import InferenceFrame

__all__ = ["coef_table", "normalize_robust"]


def normalize_robust(robust: str | None) -> str | None:
    """``"cr2"`` -> ``"CR2"``; ``None`` stays ``None`` (the sandwich module validates the type)."""
    return None if robust is None else str(robust).strip().upper()


def coef_table(fit, ddf: str = "residual", robust: str | None = None) -> InferenceFrame:
    """Estimates, standard errors, df, t statistics and two-sided p-values of the fixed effects.

    Parameters
    ----------
    fit : LmmResult
    ddf : {"residual", "containment", "satterthwaite", "kenward-roger", "asymptotic"}
        Denominator degrees of freedom (see :mod:`memoe.inference.ddf`). ``"kenward-roger"`` uses the
        adjusted covariance for the standard errors (as lmerTest's summary); ``"asymptotic"`` gives
        z statistics and normal p-values.
    robust : {"CR0", "CR1", "CR2", ...}, optional
        Cluster-robust covariance (:func:`memoe.inference.sandwich.vcov_cr`) for the standard errors;
        the df still come from ``ddf`` (not available with Kenward-Roger).

    Returns
    -------
    InferenceFrame
        Rows = coefficient names; columns ``Estimate, Std. Error, df, t value, Pr(>|t|)`` (``z value,
        Pr(>|z|)`` and no df for ``"asymptotic"``). ``attrs["ddf"]`` names the method and the printed
        table ends with a note saying which approximation was used.

    Notes
    -----
    Satterthwaite and Kenward-Roger need traces of the marginal covariance. With one grouping factor
    they are batched over its levels (no n x n matrix; 10,000 rows in ~20 ms). With several grouping
    factors (crossed or nested) one dense block of all random effects is used (size = levels x
    columns summed over factors, limited to 4,000), which suits moderate designs only.

    Examples
    --------
    >>> fit.coef_table(ddf="satterthwaite")  # doctest: +SKIP
                   Estimate  Std. Error         df    t value      Pr(>|t|)
    (Intercept)  251.405105    6.824554  17.000019  36.838321  1.170841e-17
    Days          10.467286    1.545789  16.999983   6.771482  3.263820e-06
    ---
    Satterthwaite's method for denominator degrees of freedom (as lmerTest)
    """
    method = normalize_ddf(ddf)
    robust = normalize_robust(robust)
    names = list(fit.fixef.index)
    p = len(names)
    res = t_tests(fit, np.eye(p), method, robust)
    if method == "asymptotic":
        cols = {"Estimate": res.estimate, "Std. Error": res.se, "z value": res.stat, "Pr(>|z|)": res.p}
    else:
        cols = {"Estimate": res.estimate, "Std. Error": res.se, "df": res.df, "t value": res.stat, "Pr(>|t|)": res.p}
    frame = pd.DataFrame(cols, index=pd.Index(names))
    return InferenceFrame.build(frame, ddf=method, note=note(method, robust), robust=robust)

"""The fixed-effects coefficient table with a choice of denominator degrees of freedom."""

from __future__ import annotations

import numpy as np

from memoe.core.result import coef_frame
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
        Rows = coefficient names; the standard columns ``estimate, std_error, statistic, df, p_value``
        (:func:`memoe.core.result.coef_frame`; ``df`` infinite and z statistics for ``"asymptotic"``).
        ``attrs["statistic"]`` is ``"t"`` or ``"z"``, ``attrs["ddf"]`` names the method, and the printed
        table ends with a note saying which approximation was used.

    Notes
    -----
    Satterthwaite and Kenward-Roger need traces of the marginal covariance. With one grouping factor
    they are batched over its levels (no n x n matrix; 10,000 rows in ~20 ms). With several grouping
    factors (crossed or nested) one dense block of all random effects is used (size = levels x
    columns summed over factors, limited to 4,000), which suits moderate designs only.

    R equivalent
    ------------
    ``summary(fit, ddf = "Satterthwaite")$coefficients`` from lmerTest (``"Kenward-Roger"``: pbkrtest;
    ``"asymptotic"``: lme4's ``summary(fit)$coefficients`` with normal p-values).

    Examples
    --------
    >>> fit.coef_table(ddf="satterthwaite")  # doctest: +SKIP
                   estimate  std_error         df  statistic       p_value
    (Intercept)  251.405105   6.824554  17.000019  36.838321  1.170841e-17
    Days          10.467286   1.545789  16.999983   6.771482  3.263820e-06
    ---
    Satterthwaite's method for denominator degrees of freedom (as lmerTest)
    """
    method = normalize_ddf(ddf)
    robust = normalize_robust(robust)
    names = list(fit.fixef.index)
    p = len(names)
    res = t_tests(fit, np.eye(p), method, robust)
    statistic = "z" if method == "asymptotic" else "t"
    frame = coef_frame(res.estimate, res.se, names, statistic=statistic, df=res.df, ddf=method)
    return InferenceFrame.build(frame, ddf=method, note=note(method, robust), robust=robust, statistic=statistic)

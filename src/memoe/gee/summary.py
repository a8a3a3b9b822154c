"""geepack's ``print(summary(geeglm))`` layout (geepack 1.3.x, ``digits = 4``) as a :class:`Summary`."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import pandas as pd

from memoe.core.design.contrasts import contrasts_footer
from memoe.core.result import FitResult
from memoe.core.rformat import SIGNIF_LEGEND, format_pval, format_table, r_format, signif_stars
from memoe.core.summary import Summary

__all__ = ["GEESummary"]

_DIGITS = 4


class GEESummary(Summary):
    """The summary of a :class:`~memoe.gee.result.GEEResult`.

    ``str()`` gives geepack's printed layout; :attr:`tables` holds ``coefficients`` (the standard
    :meth:`~memoe.gee.result.GEEResult.coef_table`), ``scale`` (empty when the scale is fixed),
    ``correlation`` (empty for independence) and ``clusters``.

    Examples
    --------
    >>> import memoe
    >>> orth = memoe.datasets.load("Orthodont")
    >>> summary = memoe.gee("distance ~ age", orth, group="Subject", corstr="exchangeable").fit().summary()
    >>> sorted(summary.tables)
    ['clusters', 'coefficients', 'correlation', 'scale']
    """


    def __init__(self, fit: FitResult) -> None:  # a GEEResult (which imports this module)
        self.fit = fit

    @cached_property
    def tables(self) -> dict[str, pd.DataFrame]:
        fit = self.fit
        scale = pd.DataFrame(columns=["estimate", "std_error"], dtype=float)
        if not fit.model.scale_fix:
            scale = pd.DataFrame({"estimate": [fit.scale], "std_error": [fit.scale_se]}, index=["(Intercept)"])
        correlation = pd.DataFrame({"estimate": fit.alpha, "std_error": fit.alpha_se}, index=fit.alpha.index)
        clusters = pd.DataFrame(
            {"n_clusters": [fit.model.n_clusters], "max_cluster_size": [fit.max_cluster_size], "nobs": [fit.nobs]}
        )
        return {"coefficients": fit.coef_table(), "scale": scale, "correlation": correlation, "clusters": clusters}

    def _coefficient_block(self) -> str:
        ct = self.tables["coefficients"]
        digits = _DIGITS
        # printCoefmat: estimates and SEs rounded jointly to `digits` significant digits of the
        # smallest of them, the Wald column to 3 decimals, then R's format() with `digits`
        cs = ct[["estimate", "std_error"]].to_numpy()
        finite = np.abs(cs[np.isfinite(cs) & (cs != 0)])
        digmin = 1 + (math.floor(math.log10(finite.min())) if len(finite) else 0)
        cs_text = r_format(np.round(cs, max(1, digits - digmin)).ravel(), digits)
        stars = [s.strip() for s in signif_stars(ct["p_value"])]
        width = max(map(len, stars))
        coef = pd.DataFrame(
            {
                "Estimate": cs_text[0::2],
                "Std.err": cs_text[1::2],
                "Wald": r_format(np.round(ct["statistic"].to_numpy(), max(1, min(5, digits - 1))), digits),
                "Pr(>|W|)": format_pval(ct["p_value"].to_numpy(), max(1, min(5, digits - 1))),
                "": [st.ljust(width) for st in stars],
            },
            index=ct.index,
        )
        return format_table(coef)

    def text(self) -> str:
        fit, m = self.fit, self.fit.model
        digits = _DIGITS
        time = f", time = {m.time}" if m.time is not None else ""
        lines = [
            "",
            "Call:",
            f'gee(formula = {m.formula}, group = {m.group}, family = {m.family}, corstr = "{m.corstr}"{time})',
            "",
            " Coefficients:",
            self._coefficient_block(),
            "---",
            SIGNIF_LEGEND,
            "",
            f"Correlation structure = {m.corstr} ",
        ]
        if m.scale_fix:
            lines += ["Scale is fixed.", ""]
        else:
            sc = pd.DataFrame(
                {"Estimate": r_format([fit.scale], digits), "Std.err": r_format([fit.scale_se], digits)},
                index=["(Intercept)"],
            )
            lines += ["Estimated Scale Parameters:", "", format_table(sc)]
        if m.corstr != "independence":
            al = pd.DataFrame(
                {
                    "Estimate": r_format(fit.alpha.to_numpy(), digits),
                    "Std.err": r_format(fit.alpha_se.to_numpy(), digits),
                },
                index=fit.alpha.index,
            )
            lines += ["  Link = identity ", "", "Estimated Correlation Parameters:", format_table(al)]
        lines.append(f"Number of clusters:   {m.n_clusters}  Maximum cluster size: {fit.max_cluster_size} ")
        if fit.n_dropped:
            lines.append(f"({fit.n_dropped} rows dropped for missing values)")
        if not fit.converged:
            lines.append(f"Warning: not converged in {fit.n_iter} iterations")
        contrasts = contrasts_footer(m.contrasts)
        if contrasts:
            lines.append(contrasts)
        return "\n".join(lines)

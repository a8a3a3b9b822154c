"""The summary and the figures of an :class:`~memoe.lmm.lmlist.LmListResult` (lme4's ``summary(lmList)`` and
``plot(confint(lmList))``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from memoe.core.summary import Summary

__all__ = ["LmListPlotAccessor", "LmListSummary"]


def _accessor_base():
    from memoe.plot import PlotAccessor

    return PlotAccessor


class LmListPlotAccessor:
    """``fit.plot`` of an lmList: the shared figures (residuals, qq, ...) and :meth:`intervals`."""

    def __init__(self, fit) -> None:
        self._fit = fit
        self._base = _accessor_base()(fit)

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def __dir__(self):
        return sorted(set(dir(self._base)) | {"intervals"})

    def available(self) -> list[str]:
        """Names of the figures that apply to this fit."""
        return [*self._base.available(), "intervals"]

    def intervals(self, level: float = 0.95, pool: bool = False, ax=None):
        """Per-group estimates and confidence intervals, one panel per coefficient, groups on the y axis.

        Parameters
        ----------
        level : float
        pool : bool
            Intervals from the pooled residual SD (default: each group's own ``confint.lm``, as lme4).
        ax : matplotlib Axes, optional
            Only for a model with one coefficient.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from memoe.plot._backend import new_figure

        fit = self._fit
        ci = fit.confint_frame(level=level, pool=pool)
        names = fit.model.names
        groups = fit.groups
        fig, axes = new_figure(1, len(names), figsize=(3.2 * len(names), 0.25 * len(groups) + 1.5), ax=ax)
        ypos = np.arange(len(groups))
        for a, term in zip(axes[0], names, strict=True):
            sub = ci.xs(term, level="term")
            a.hlines(ypos, sub["lower"], sub["upper"], color="C0")
            a.plot(sub["estimate"], ypos, "o", color="C0", ms=4)
            a.set_title(term)
            a.set_yticks(ypos)
            a.set_yticklabels([str(g) for g in groups])
        axes[0][0].set_ylabel(str(groups.name))
        return fig


class LmListSummary(Summary):
    """``summary(lmList)``: per-group coefficient tables with the pooled residual SD."""

    def __init__(self, fit) -> None:
        self.fit = fit

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {"coefficients": self.fit.group_table(), "coef": self.fit.coef()}

    def text(self) -> str:
        f = self.fit
        out = [f"Call: lmList(formula = {f.model.formula})", "Coefficients:"]
        tab = f.group_table()
        for term in f.model.names:
            sub = tab.xs(term, level="term")[["estimate", "std_error", "statistic", "p_value"]]
            sub.columns = ["Estimate", "Std. Error", "t value", "Pr(>|t|)"]
            out.append(f"   {term} ")
            out.append(sub.to_string(float_format=lambda v: f"{v:.6g}"))
        pooled = "pooled" if f.model.pool else "per-group"
        out.append("")
        out.append(f"Residual standard error: {f.pooled_sd:.6g} on {f.pooled_df} degrees of freedom ({pooled} SEs)")
        return "\n".join(out) + "\n"

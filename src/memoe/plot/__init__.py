"""Figures and reports of fitted models: ``fit.plot.<figure>()`` and ``memoe.report(fit, path)``.

matplotlib is imported only when a figure is drawn; figures are returned (never shown) and render with
Agg whatever the session's backend. See :class:`~memoe.plot.accessor.PlotAccessor` for the figures.
"""

from __future__ import annotations

from memoe.plot.accessor import PlotAccessor
from memoe.plot.components import variance_components_table
from memoe.plot.report import report, report_html

__all__ = ["PlotAccessor", "report", "report_html", "variance_components_table"]

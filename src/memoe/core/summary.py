"""The summary object every family returns from ``fit.summary()``.

``str(summary)`` is the R-style text (lme4, nlme or geepack layout, same numbers), ``summary.tables`` the
same content as labelled DataFrames for programs, and ``_repr_html_`` renders both in notebooks.
"""

from __future__ import annotations

import html
from abc import ABC, abstractmethod

import pandas as pd

__all__ = ["Summary", "observation_lines"]


def observation_lines(fit) -> list[str]:
    """lme4's ``Number of obs: n, groups:  g, m`` line, and the count of rows dropped for missing values.

    ``fit`` is a mixed-model result with ``nobs``, ``ngroups`` (a Series per grouping factor) and ``n_dropped``.
    """
    groups = ", ".join(f"{k}, {v}" for k, v in fit.ngroups.items())
    lines = [f"Number of obs: {fit.nobs}, groups:  {groups}"]
    if fit.n_dropped:
        lines.append(f"({fit.n_dropped} observation{'s' if fit.n_dropped != 1 else ''} deleted due to missingness)")
    return lines


class Summary(ABC):
    """Base of the family summaries: text for people, tables for programs.

    A family implements :meth:`text` and :attr:`tables`; ``print(fit.summary())`` prints the text.
    """

    @abstractmethod
    def text(self) -> str:
        """The R-style printed summary."""

    @property
    @abstractmethod
    def tables(self) -> dict[str, pd.DataFrame]:
        """The summary's tables by name (e.g. ``"coefficients"``, ``"random_effects"``)."""

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        parts = [f"<pre>{html.escape(self.text())}</pre>"]
        for name, table in self.tables.items():
            if isinstance(table, pd.DataFrame) and not table.empty:
                parts.append(f"<details><summary>{html.escape(name)}</summary>{table.to_html()}</details>")
        return "\n".join(parts)

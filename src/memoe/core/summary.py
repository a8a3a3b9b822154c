"""The summary object every family returns from ``fit.summary()``.

``str(summary)`` is the R-style text (lme4, nlme or geepack layout, same numbers), ``summary.tables`` the
same content as labelled DataFrames for programs, and ``_repr_html_`` renders both in notebooks.
"""

from __future__ import annotations

import html
from abc import ABC, abstractmethod

import pandas as pd

__all__ = ["Summary"]


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

"""The fixed-effects terms of a fitted model as R's ``terms`` object describes them.

lmerTest's ANOVA tables and nlme's containment degrees of freedom work term by term: which columns
of X belong to a term (``assign``), which variables a term involves and whether they are numeric,
and whether each factor of a term is contrast-coded or fully dummy-coded (R's ``factors``
attribute: 1 or 2). All of this is read from formulaic's ``ModelSpec.structure``; the per-factor
values (numeric column or level indicators) are re-evaluated on the model frame when a term
needs a different coding (type III contrasts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import model_matrix

__all__ = ["FixedTerm", "FixedTerms", "factor_values", "fixed_terms", "r_term_label"]

_C_WRAP = re.compile(r"\bC\(([A-Za-z_][A-Za-z0-9_.]*)(?:\s*,[^()]*(?:\([^()]*\))?[^()]*)?\)")


def r_term_label(label: str) -> str:
    """R's label of a formulaic term: ``C(g)`` -> ``g`` (as the coefficient names drop the wrapper)."""
    return _C_WRAP.sub(r"\1", label)


@dataclass(frozen=True)
class FixedTerm:
    """One fixed-effects term (the intercept excluded).

    Attributes
    ----------
    label : str
        R's term label, e.g. ``"age:Sex"``.
    columns : numpy.ndarray of int
        Indices of the term's columns among the kept columns of X.
    variables : tuple of str
        formulaic factor expressions of the term, in order.
    numeric : tuple of bool
        Per variable: numeric (True) or categorical.
    reduced : tuple of bool
        Per variable: R's ``factors`` entry is 1 (the term without the variable is in the model, so
        a factor is contrast-coded here) rather than 2.
    scoped : tuple of tuple of (str, bool)
        formulaic's scoped terms: the ``(variable, reduced)`` factors of each block of columns.
    """

    label: str
    columns: np.ndarray
    variables: tuple[str, ...]
    numeric: tuple[bool, ...]
    reduced: tuple[bool, ...]
    scoped: tuple[tuple[tuple[str, bool], ...], ...]

    @property
    def order(self) -> int:
        """Number of variables (R's ``attr(terms, "order")``)."""
        return len(self.variables)


@dataclass(frozen=True)
class FixedTerms:
    """All fixed-effects terms of a fit.

    Attributes
    ----------
    terms : list of FixedTerm
        In formula order, the intercept excluded.
    intercept : bool
        Whether the model has an intercept column.
    assign : numpy.ndarray of int, shape (p,)
        Term index of each kept column (-1 for the intercept).
    """

    terms: list[FixedTerm]
    intercept: bool
    assign: np.ndarray

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]


def fixed_terms(fit) -> FixedTerms:
    """Read the term structure of ``fit``'s fixed effects from its formulaic spec."""
    fixed = fit.design.fixed
    spec = fixed.spec
    kept = np.asarray(fixed.kept)
    position = np.full(len(spec.column_names), -1)
    position[kept] = np.arange(len(kept))
    kinds = {name: state[0] for name, state in spec.encoder_state.items()}
    terms: list[FixedTerm] = []
    assign = np.full(len(kept), -2)
    intercept = False
    start = 0
    for st in spec.structure:
        width = len(st.columns)
        cols_full = np.arange(start, start + width)
        start += width
        cols = position[cols_full]
        cols = cols[cols >= 0]
        variables = tuple(str(f.expr) for f in st.term.factors if str(f.expr) != "1")
        if not variables:
            intercept = intercept or len(cols) > 0
            assign[cols] = -1
            continue
        numeric = tuple(kinds.get(v) is not None and kinds[v].value == "numerical" for v in variables)
        scoped = tuple(tuple((str(sf.factor.expr), bool(sf.reduced)) for sf in sc.factors) for sc in st.scoped_terms)
        if len(cols) == 0:
            continue  # every column of the term aliased: R drops it from the tables too
        assign[cols] = len(terms)
        terms.append(
            FixedTerm(
                label=r_term_label(str(st.term)),
                columns=cols,
                variables=variables,
                numeric=numeric,
                reduced=(),
                scoped=scoped,
            )
        )
    # R's `factors` attribute: a variable is coded by contrasts (1) in a term when the term without
    # it is also in the model (the empty term counting when there is an intercept), else fully (2)
    present = {frozenset(t.variables) for t in terms}
    if intercept:
        present.add(frozenset())
    terms = [
        FixedTerm(
            label=t.label,
            columns=t.columns,
            variables=t.variables,
            numeric=t.numeric,
            reduced=tuple(frozenset(t.variables) - {v} in present for v in t.variables),
            scoped=t.scoped,
        )
        for t in terms
    ]
    return FixedTerms(terms=terms, intercept=intercept, assign=assign)


def factor_values(fit, variable: str, numeric: bool) -> np.ndarray:
    """Values of one formula variable on the model frame.

    Returns
    -------
    numpy.ndarray
        Shape (n,) for a numeric variable; (n, levels) full dummy indicators for a categorical one
        (levels in the fit's coding order).
    """
    data: pd.DataFrame = fit.design.frame.data
    mm = model_matrix(f"0 + {variable}", data, output="numpy", na_action="ignore")
    values = np.asarray(mm, dtype=float)
    if numeric:
        return values[:, 0]
    return values

"""``memoe.lmm(formula, data)``: the entry point that picks the in-memory or the Dask model.

Kept apart from :mod:`memoe.lmm.model` so that the Dask model (:mod:`memoe.dask.lmm`, a subclass of
:class:`~memoe.lmm.model.LMM`) can import the model without an import cycle.
"""

from __future__ import annotations

import pandas as pd

from memoe.core.linalg.threads import blas_threads
from memoe.lmm.model import LMM

__all__ = ["lmm"]

# Up to this many rows the design and the problem's set-up run with one BLAS thread: their products are tiny
# (X'X with p columns, per-level sums), and OpenBLAS waking a second thread for each costs more than the
# product when the other core is busy (school/class nesting, 3,000 rows: set-up 2-3x slower at load 3).
# Larger data keep the library's default (the set-up of 10^6 rows is BLAS work worth two threads).
SINGLE_THREAD_SETUP_ROWS = 100_000


def lmm(
    formula: str, data: pd.DataFrame, contrasts: dict[str, str] | None = None, weights=None, offset=None
) -> LMM:
    """Specify a linear mixed model with an lme4 formula; call ``.fit(reml=...)`` to estimate it.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"`` (see :class:`LMM`).
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
        Rows with a missing value in any used column are dropped (counted on the result).
    contrasts : dict, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"`` (R's ``contrasts=``).
    weights : str or array-like, optional
        lme4's prior weights (a column or one positive value per row); see :class:`LMM`.
    offset : str or array-like, optional
        A known term added to the linear predictor (a column or one value per row), as lme4's ``offset=``.

    Returns
    -------
    LMM
        The unfitted model; ``.fit(reml=True)`` returns an :class:`LmmResult`.

    R equivalent
    ------------
    ``lme4::lmer(formula, data, REML = TRUE, weights = , offset = , contrasts = )``
    (the model specification is ``lme4::lFormula``).

    Examples
    --------
    >>> import memoe
    >>> ss = memoe.datasets.load("sleepstudy")
    >>> fit = memoe.lmm("Reaction ~ poly(Days, 2) + (1 | Subject)", ss).fit()
    >>> list(fit.params.index)
    ['(Intercept)', 'poly(Days, 2)1', 'poly(Days, 2)2']
    """
    from memoe.dask import is_dask_dataframe

    if is_dask_dataframe(data):  # out of core on Dask (memoe.dask), imported only for Dask input
        from memoe.dask.lmm import DaskLMM

        return DaskLMM(formula, data, contrasts=contrasts, weights=weights, offset=offset)
    n = len(data) if hasattr(data, "__len__") else None
    with blas_threads(1 if n is not None and n <= SINGLE_THREAD_SETUP_ROWS else None):
        return LMM(formula, data, contrasts=contrasts, weights=weights, offset=offset)


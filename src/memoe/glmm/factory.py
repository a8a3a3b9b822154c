"""``memoe.glmm(formula, data, family)``: the entry point that picks the in-memory or the Dask model.

Kept apart from :mod:`memoe.glmm.model` so that the Dask model (:mod:`memoe.dask.glmm`) can import the
model without an import cycle.
"""

from __future__ import annotations

import pandas as pd

from memoe.glmm.families import Family
from memoe.glmm.model import GLMM

__all__ = ["glmm"]


def glmm(
    formula: str, data: pd.DataFrame, family: str | Family = "binomial", weights=None, offset=None,
    contrasts: dict[str, str] | None = None,
) -> GLMM:
    """Specify a GLMM with an lme4 formula; call ``.fit(nAGQ=1)`` to estimate it. See :class:`GLMM`.

    Parameters
    ----------
    formula : str
        lme4 syntax with a ``cbind(successes, failures)``, 0/1, factor or count response.
    data : pandas.DataFrame, polars.DataFrame or pyarrow.Table
    family : str or Family, default "binomial"
        ``"binomial"``, ``"poisson"`` or a :class:`Family` with a non-canonical link.
    weights, offset : str or array-like, optional
        Prior weights; an offset on the linear-predictor scale.
    contrasts : dict, optional
        Factor column -> ``"treatment"``, ``"sum"``, ``"helmert"`` or ``"poly"`` (R's ``contrasts=``).

    Returns
    -------
    GLMM
        The unfitted model; ``.fit(nAGQ=...)`` returns a :class:`GlmmResult`.

    R equivalent
    ------------
    ``lme4::glmer(formula, data, family)``.

    Examples
    --------
    >>> import memoe
    >>> ticks = memoe.datasets.load("grouseticks")
    >>> fit = memoe.glmm("TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD) + (1 | LOCATION)", ticks, "poisson").fit()
    >>> fit.fixef.index.tolist()
    ['(Intercept)', 'YEAR96', 'YEAR97', 'HEIGHT_scaled']
    """
    from memoe.dask import is_dask_dataframe

    if is_dask_dataframe(data):  # out of core on Dask (memoe.dask), imported only for Dask input
        from memoe.dask.glmm import DaskGLMM

        return DaskGLMM(formula, data, family=family, weights=weights, offset=offset, contrasts=contrasts)
    return GLMM(formula, data, family=family, weights=weights, offset=offset, contrasts=contrasts)

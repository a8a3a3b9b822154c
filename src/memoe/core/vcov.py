"""A covariance matrix that is also callable, so ``fit.vcov`` and ``fit.vcov(robust="CR2")`` both work."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pandas as pd

__all__ = ["VcovFrame"]


class VcovFrame(pd.DataFrame):
    """Model-based covariance of the fixed effects (a DataFrame); call it for other estimators.

    ``fit.vcov`` is the model-based matrix; ``fit.vcov()`` returns the same, and
    ``fit.vcov(robust="CR2")`` a cluster-robust sandwich (see :mod:`memoe.inference.sandwich`).
    """

    _metadata: ClassVar[list[str]] = ["_alternatives"]

    @property
    def _constructor(self):
        # derived frames (slices, arithmetic) are plain DataFrames
        return pd.DataFrame

    def __call__(self, robust: str | None = None, **kwargs) -> pd.DataFrame:
        if robust is None and not kwargs:
            return pd.DataFrame(self, copy=True)
        fn: Callable[..., pd.DataFrame] | None = getattr(self, "_alternatives", None)
        if fn is None:
            raise TypeError("this covariance matrix has no alternative estimators")
        return fn(robust=robust, **kwargs)

    @classmethod
    def wrap(cls, frame: pd.DataFrame, alternatives: Callable[..., pd.DataFrame] | None) -> VcovFrame:
        out = cls(frame)
        out._alternatives = alternatives
        return out

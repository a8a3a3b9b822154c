"""nlme's ``varComb``: the product of several variance functions (see :mod:`memoe.marginal.varfunc`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import ArgumentError, ArgumentTypeError
from memoe.marginal.varfunc import BoundVarFunc, VarFunc

__all__ = ["BoundVarComb", "VarComb"]


@dataclass(frozen=True)
class VarComb:
    """nlme's ``varComb(a, b, ...)``: the product of the SD ratios of several variance functions.

    Parameters
    ----------
    *functions : VarPower, VarExp, VarConstPower, VarFixed or memoe.marginal.VarIdent
        At least two. Parameters are those of each function in turn; their names get the prefix
        ``A.``, ``B.``, ... as nlme's ``coef(varComb)``.

    R equivalent
    ------------
    ``nlme::varComb(varIdent(form = ~ 1 | Sex), varPower(form = ~ age))``.

    Examples
    --------
    >>> VarComb(VarIdent("Sex"), VarPower("age"))  # doctest: +SKIP
    """

    functions: tuple

    label = "Combination of variance functions:"

    def __init__(self, *functions) -> None:
        if len(functions) == 1 and isinstance(functions[0], list | tuple):
            functions = tuple(functions[0])
        from memoe.marginal.variance import VarIdent

        if len(functions) < 2:
            raise ArgumentError(f"VarComb needs at least two variance functions, got {len(functions)}")
        for i, f in enumerate(functions):
            if not isinstance(f, VarFunc | VarIdent) or isinstance(f, VarComb):
                raise ArgumentTypeError(
                    f"VarComb argument {i + 1} must be a variance function (VarIdent, VarPower, VarExp, "
                    f"VarConstPower, VarFixed), got {f!r} ({type(f).__name__})"
                )
        object.__setattr__(self, "functions", tuple(functions))

    @property
    def uses_fitted(self) -> bool:
        return any(getattr(f, "uses_fitted", False) for f in self.functions)

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for f in self.functions for c in f.columns()))

    def formula(self) -> str:
        return "; ".join(f.formula() for f in self.functions)

    def bind(self, frame: pd.DataFrame, order: np.ndarray | None = None) -> BoundVarComb:
        parts = tuple(f.bind(frame, order) if isinstance(f, VarFunc) else f.bind(frame) for f in self.functions)
        return BoundVarComb(function=self, parts=parts)


@dataclass(frozen=True)
class BoundVarComb:
    """:class:`VarComb` bound to data: the parts' parameters concatenated (same interface as :class:`BoundVarFunc`)."""

    function: VarComb
    parts: tuple

    @property
    def _sizes(self) -> list[int]:
        return [p.size for p in self.parts]

    def _split(self, u: np.ndarray) -> list[np.ndarray]:
        u = np.asarray(u, dtype=float)
        return np.split(u, np.cumsum(self._sizes)[:-1]) if self.parts else []

    @property
    def size(self) -> int:
        return int(sum(self._sizes))

    @property
    def names(self) -> list[str]:
        return [f"{chr(65 + i)}.{n}" for i, p in enumerate(self.parts) for n in p.names]

    @property
    def needs_fitted(self) -> bool:
        return any(getattr(p, "needs_fitted", False) for p in self.parts)

    @property
    def strata(self) -> np.ndarray:
        key = np.column_stack([np.asarray(p.strata, dtype=float) for p in self.parts])
        return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)

    def with_fitted(self, fitted: np.ndarray) -> BoundVarComb:
        parts = tuple(p.with_fitted(fitted) if getattr(p, "needs_fitted", False) else p for p in self.parts)
        return dataclasses.replace(self, parts=parts)

    def ratios(self, u: np.ndarray) -> np.ndarray:
        out = None
        for p, up in zip(self.parts, self._split(u), strict=True):
            r = p.ratios(up)
            out = r if out is None else out * r
        return out

    def natural(self, u: np.ndarray) -> pd.Series:
        vals = [p.transform(up)[0] for p, up in zip(self.parts, self._split(u), strict=True)]
        return pd.Series(np.concatenate(vals) if vals else np.zeros(0), index=self.names, dtype=float)

    def transform(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        nat, der, kinds = [], [], []
        for p, up in zip(self.parts, self._split(u), strict=True):
            a, b, c = p.transform(up)
            nat.append(a)
            der.append(b)
            kinds += list(c)
        return np.concatenate(nat), np.concatenate(der), kinds

    def term(self, name: str) -> str:
        return f"varComb({name})"

    def start(self, resid: np.ndarray | None = None, fitted: np.ndarray | None = None) -> np.ndarray:
        return np.concatenate([p.start(resid) if not isinstance(p, BoundVarFunc) else p.start() for p in self.parts])

    def ratios_for(self, u: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        out = np.ones(len(frame))
        for p, up in zip(self.parts, self._split(u), strict=True):
            out = out * p.ratios_for(up, frame)
        return out

    def summary_lines(self, u: np.ndarray, block: Callable[[pd.Series], list[str]]) -> list[str]:
        lines = []
        for i, (p, up) in enumerate(zip(self.parts, self._split(u), strict=True)):
            fn = p.function
            lines += [f" Structure: {fn.label}", f" Formula: {fn.formula()}"]
            if p.size:
                nat = p.transform(up)[0]
                lines += [" Parameter estimates:", *block(pd.Series(nat, index=p.names))]
            if i < len(self.parts) - 1:
                lines.append("")
        return lines

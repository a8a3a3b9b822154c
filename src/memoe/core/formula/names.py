"""Translate formulaic column names into the names R gives the same columns."""

from __future__ import annotations

import re

_CONTRAST = re.compile(r"\[(?:T\.)?([^\]]*)\]")
_C_WRAP = re.compile(r"\bC\(([A-Za-z_][A-Za-z0-9_.]*)\)")


def r_column_name(name: str) -> str:
    """R's name for a formulaic model-matrix column.

    ``Intercept`` -> ``(Intercept)``, ``Sex[T.Female]`` -> ``SexFemale``,
    ``C(g)[T.b]`` -> ``gb``, ``age:Sex[T.Female]`` -> ``age:SexFemale``.
    """
    if name == "Intercept":
        return "(Intercept)"
    out = _CONTRAST.sub(r"\1", name)
    out = _C_WRAP.sub(r"\1", out)
    return out

"""Translate formulaic column names into the names R gives the same columns."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_CONTRAST = re.compile(r"\[(?:T\.)?([^\]]*)\]")
_C_WRAP = re.compile(r"\bC\(([A-Za-z_][A-Za-z0-9_.]*)\)")
# formulaic's column of C(x, contr.<kind>): ``C(x, contr.sum)[S.a]``, ``C(`my x`, contr.poly)[.L]``
_C_CONTR = re.compile(
    r"\bC\((?P<var>[A-Za-z_][A-Za-z0-9_.]*|`[^`]*`),\s*contr\.(?P<kind>treatment|sum|helmert|poly)\)"
    r"\[(?P<label>[^\]]*)\]"
)


def _contrast_part(m: re.Match, levels: Mapping[str, Sequence] | None) -> str:
    """R's name for one ``C(x, contr.<kind>)[label]`` piece."""
    var = m.group("var").strip("`")
    kind, label = m.group("kind"), m.group("label")
    # R names sum and Helmert columns by position (contr.sum/contr.helmert have no column names):
    # formulaic labels sum column j by level j (S.a = first level) and Helmert column j by level j+1
    if kind in ("sum", "helmert") and label[:2] in ("S.", "H."):
        lev = label[2:]
        key = f"C({m.group('var')}, contr.{kind})"
        known = None if levels is None else levels.get(key, levels.get(var))
        if known is not None:
            strs = [str(v) for v in known]
            if lev in strs:
                pos = strs.index(lev) + (1 if kind == "sum" else 0)
                return f"{var}{pos}"
        return f"{var}{lev}"
    if kind == "treatment" and label.startswith("T."):
        return f"{var}{label[2:]}"
    # poly labels are R's already (.L, .Q, .C, ^4, ...); full-rank indicator columns carry the level
    return f"{var}{label}"


def r_column_name(name: str, levels: Mapping[str, Sequence] | None = None) -> str:
    """R's name for a formulaic model-matrix column.

    ``Intercept`` -> ``(Intercept)``, ``Sex[T.Female]`` -> ``SexFemale``,
    ``C(g)[T.b]`` -> ``gb``, ``age:Sex[T.Female]`` -> ``age:SexFemale``,
    ``C(x, contr.poly)[.L]`` -> ``x.L``, ``C(x, contr.poly)[^4]`` -> ``x^4``,
    ``C(d, contr.sum)[S.b]`` -> ``d2`` (R names sum and Helmert columns by position: pass
    ``levels``, a mapping of the factor expression ``"C(d, contr.sum)"`` or the variable ``"d"`` to
    its levels in order, to get positions; without it the level label is used).
    """
    if name == "Intercept":
        return "(Intercept)"
    out = _C_CONTR.sub(lambda m: _contrast_part(m, levels), name)
    out = _CONTRAST.sub(r"\1", out)
    out = _C_WRAP.sub(r"\1", out)
    # a power written R's way (``I(day^2)``, rewritten to Python's ``**`` for formulaic) deparses as R does
    return out.replace(" ** ", "^")

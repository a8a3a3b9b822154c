"""R's text helpers shared by the summaries (lme4, nlme and geepack print layouts)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = [
    "SIGNIF_LEGEND",
    "decimals_for",
    "fixef_correlation_block",
    "format_column",
    "format_pval",
    "format_table",
    "percent_labels",
    "r_abbreviate",
    "r_format",
    "signif_stars",
    "table_with_notes",
    "varcorr_lines",
]

_DBL_EPS = float(np.finfo(float).eps)

_VOWELS = frozenset("aeiou")


def r_abbreviate(name: str, minlength: int = 6) -> str:
    """R's ``abbreviate(name, minlength)`` (its C ``stripchars``), for the correlation table labels.

    Characters other than the first are dropped from the right, in passes, until the name is short
    enough: lower-case vowels ending a word, other lower-case vowels, lower-case letters ending a
    word, other lower-case letters, then anything. ``(Intercept)`` -> ``(Intr)``, ``period2`` ->
    ``perid2``.
    """
    b = list(name)
    if len(b) <= minlength:
        return name

    def last(i: int) -> bool:
        return not b[i - 1].isspace() and (i + 1 == len(b) or b[i + 1].isspace())

    def first(i: int) -> bool:
        return b[i - 1].isspace()

    passes = [
        lambda c, i: c in _VOWELS and last(i),
        lambda c, i: c in _VOWELS and not first(i),
        lambda c, i: c.islower() and last(i),
        lambda c, i: c.islower() and not first(i),
        lambda c, i: not first(i) and not c.isspace(),
    ]
    for drop in passes:
        for i in range(len(b) - 1, 0, -1):
            if i < len(b) and drop(b[i], i):
                del b[i]
            if len(b) <= minlength:
                return "".join(b)
    return "".join(b)


def decimals_for(values, digits: int, anchor: str = "max") -> int:
    """Decimals R's ``format`` gives a column: ``digits`` significant digits for its anchor element."""
    a = np.abs(np.asarray([v for v in values if np.isfinite(v)], dtype=float))
    a = a[a > 0]
    if not len(a):
        return 0
    ref = a.max() if anchor == "max" else a.min()
    return int(min(10, max(0, digits - 1 - np.floor(np.log10(ref)))))


def format_column(values, digits: int, anchor: str = "max") -> list[str]:
    """Format numbers with common decimals, as lme4 prints variance components and coefficients."""
    dec = decimals_for(values, digits, anchor)
    return [f"{v:.{dec}f}" if np.isfinite(v) else "NA" for v in values]


def format_table(df: pd.DataFrame, index: bool = True) -> str:
    """Right-aligned plain-text table (strings as given)."""
    cols = list(df.columns)
    body = [[str(v) for v in row] for row in df.itertuples(index=False)]
    labels = [str(i) for i in df.index] if index else []
    widths = [max([len(str(c))] + [len(r[j]) for r in body]) for j, c in enumerate(cols)]
    lw = max([0] + [len(s) for s in labels])
    head = (" " * lw + " " if index else "") + " ".join(str(c).rjust(w) for c, w in zip(cols, widths, strict=True))
    lines = [head]
    for k, r in enumerate(body):
        left = labels[k].ljust(lw) + " " if index else ""
        lines.append(left + " ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def fixef_correlation_block(vcov: np.ndarray, names: list[str]) -> list[str]:
    """lme4's "Correlation of Fixed Effects" lines (none for 1 or more than 12 coefficients).

    Labels as lme4's ``abbreviate(rn, minlength = 11)`` for rows and ``minlength = 6`` for columns.
    """
    p = len(names)
    if not 1 < p <= 12:
        return []
    sd = np.sqrt(np.diag(vcov))
    corr = vcov / np.outer(sd, sd)
    tab = pd.DataFrame(
        [[f"{corr[i, j]:.3f}" if j < i else "" for j in range(p - 1)] for i in range(1, p)],
        index=[r_abbreviate(n, 11) for n in names[1:]],
        columns=[r_abbreviate(n, 6) for n in names[:-1]],
    )
    return ["", "Correlation of Fixed Effects:", format_table(tab)]


def _sig_needed(x: float, digits: int) -> tuple[int, float]:
    """Fewest significant digits (<= ``digits``) that show ``x`` as ``signif(x, digits)`` (R's formatReal)."""
    ref = float(f"{x:.{digits - 1}e}")
    for k in range(1, digits + 1):
        if float(f"{x:.{k - 1}e}") == ref:
            return k, ref
    return digits, ref


def r_format(values, digits: int) -> list[str]:
    """R's ``format(x, digits = digits)`` of a numeric vector: common decimals, or common scientific
    notation when that is narrower (``scipen = 0``)."""
    vals = np.asarray(values, dtype=float)
    nz = [v for v in vals if np.isfinite(v) and v != 0.0]
    dec, sig = 0, 1
    for v in nz:
        k, ref = _sig_needed(v, digits)
        sig = max(sig, k)
        dec = max(dec, k - 1 - math.floor(math.log10(abs(ref))))

    def special(v: float) -> str:
        return "NaN" if np.isnan(v) else ("Inf" if v > 0 else "-Inf")

    fixed = [f"{v:.{dec}f}" if np.isfinite(v) else special(v) for v in vals]
    sci = [f"{v:.{sig - 1}e}" if np.isfinite(v) else special(v) for v in vals]
    if nz and max(map(len, fixed)) > max(map(len, sci)):
        return sci
    return fixed


def format_pval(pv: np.ndarray, digits: int = 3) -> list[str]:
    """R's ``format.pval(pv, digits, eps = .Machine$double.eps)`` as ``printCoefmat`` calls it."""
    pv = np.asarray(pv, dtype=float)
    out = ["NA"] * len(pv)
    is0 = pv < _DBL_EPS
    ok = np.isfinite(pv) & ~is0
    expo = np.floor(np.log10(np.where(pv > 0, pv, 1e-50)))
    for part in (ok & ((expo >= -3) | (pv == 0)), ok & ~((expo >= -3) | (pv == 0))):
        idx = np.flatnonzero(part)
        for i, text in zip(idx, r_format(pv[idx], digits), strict=True):
            out[i] = text
    if is0.any():
        d = max(1, digits - 2)
        if ok.any():
            nc = max(len(out[i]) for i in np.flatnonzero(ok))
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        for i in np.flatnonzero(is0):
            out[i] = "<" + sep + f"{_DBL_EPS:.{d - 1}e}"
    return out


def signif_stars(p) -> list[str]:
    """R's significance codes (``symnum`` cut points 0.001, 0.01, 0.05, 0.1) for a vector of p-values."""
    cuts = [(0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."), (1.01, " ")]
    return [next(s for c, s in cuts if v < c) if np.isfinite(v) else "" for v in np.asarray(p, dtype=float).ravel()]


SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def percent_labels(level: float) -> tuple[str, str]:
    """Column names of the limits as R's ``format.perc`` (3 significant digits): ``("2.5 %", "97.5 %")``."""
    a = (1 - level) / 2
    return f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"


def varcorr_lines(rows: list[list[str]], max_q: int) -> list[str]:
    """lme4's printed ``VarCorr`` block from formatted cells, one row per random-effect column.

    Parameters
    ----------
    rows : list of list of str
        ``[group (or ""), name, variance, std. dev., correlations...]``; shorter rows are padded.
    max_q : int
        Largest number of columns of one term: ``max_q - 1`` correlation columns are headed ``Corr``.

    Returns
    -------
    list of str
        Header then rows, ``Groups`` and ``Name`` left-aligned, the numbers right-aligned, as lme4.
    """
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] + [""] * (max_q - 2) if max_q > 1 else [])
    width = len(header)
    rows = [r + [""] * (width - len(r)) for r in rows]
    colw = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(width)]
    lines = [(" " + " ".join(h.ljust(colw[j]) for j, h in enumerate(header))).rstrip()]
    for r in rows:
        cells = [r[0].ljust(colw[0]), r[1].ljust(colw[1])] + [r[j].rjust(colw[j]) for j in range(2, width)]
        lines.append((" " + " ".join(cells)).rstrip())
    return lines


def table_with_notes(show: pd.DataFrame, header: list[str] | None = None, notes: list[str] | None = None) -> str:
    """A formatted table (:func:`format_table`) with header lines above and ``Note:`` lines below.

    The printed form of the comparison tables (``memoe.compare``): the models compared above, why a
    p-value is or is not given below.
    """
    lines = list(header or [])
    lines.append(format_table(show))
    if notes:
        lines.append("")
        lines.extend(f"Note: {n}" for n in notes)
    return "\n".join(lines)

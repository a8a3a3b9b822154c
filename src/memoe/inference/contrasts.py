"""Linear hypotheses ``L beta = rhs`` from strings, vectors, matrices or labelled frames.

Strings are linear equations in the coefficient names, separated by commas::

    "Days = 0"                      "age:SexFemale = 0, SexFemale = 0"
    "Days = 2*x"                    "(Intercept) - 250 = 10 * Days"
    "a - b = 0"                     "`sin(2 * pi * Time)` = 0"

Names are matched longest first, so names containing operators or parentheses (``(Intercept)``,
``age:SexFemale``) need no quoting; backticks quote any name. An equation without ``=`` means
``... = 0``. Numeric contrasts have one column per coefficient; a pandas Series, DataFrame or dict
is matched by name (missing coefficients get weight 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memoe.errors import HypothesisError

__all__ = ["Hypothesis", "as_hypothesis", "parse_hypothesis", "reduce_rank"]

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_.][A-Za-z0-9_.:\[\]]*(?:\([^()]*\))?[A-Za-z0-9_.:\[\]]*")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_.]")
_OPERATORS = "+-*/(),="


@dataclass(frozen=True)
class Hypothesis:
    """``L beta = rhs`` with labels.

    Attributes
    ----------
    L : numpy.ndarray, shape (m, p)
    rhs : numpy.ndarray, shape (m,)
    labels : list of str
        One per row (the equation text for string hypotheses).
    """

    L: np.ndarray
    rhs: np.ndarray
    labels: list[str]

    @property
    def label(self) -> str:
        return ", ".join(self.labels)


def _names_message(names: list[str]) -> str:
    return "the model's coefficients are: " + ", ".join(repr(n) for n in names)


def _tokenize(text: str, names: list[str]) -> list[tuple[str, object]]:
    by_length = sorted(names, key=len, reverse=True)
    tokens: list[tuple[str, object]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise HypothesisError(f"unclosed backtick in hypothesis {text!r}")
            name = text[i + 1 : j]
            if name not in names:
                raise HypothesisError(f"unknown coefficient {name!r} in hypothesis {text!r}; {_names_message(names)}")
            tokens.append(("name", names.index(name)))
            i = j + 1
            continue
        matched = None
        for name in by_length:
            if text.startswith(name, i):
                end = i + len(name)
                # a name ending in an identifier character must not run on into a longer word
                if _IDENT_CHAR.match(name[-1]) and end < len(text) and _IDENT_CHAR.match(text[end]):
                    continue
                matched = name
                break
        if matched is not None:
            tokens.append(("name", names.index(matched)))
            i += len(matched)
            continue
        m = _NUMBER.match(text, i)
        if m:
            tokens.append(("num", float(m.group())))
            i = m.end()
            continue
        if text.startswith("==", i):
            tokens.append(("op", "="))
            i += 2
            continue
        if ch in _OPERATORS:
            tokens.append(("op", ch))
            i += 1
            continue
        w = _WORD.match(text, i)
        word = w.group() if w else text[i:].split()[0]
        raise HypothesisError(f"unknown coefficient {word!r} in hypothesis {text!r}; {_names_message(names)}")
    return tokens


class _Parser:
    """Recursive descent over tokens; values are linear forms ``(coefficient vector, constant)``."""

    def __init__(self, tokens: list[tuple[str, object]], p: int, text: str) -> None:
        self.tokens, self.p, self.text, self.pos = tokens, p, text, 0

    def _peek(self) -> tuple[str, object] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _error(self, what: str) -> HypothesisError:
        return HypothesisError(f"{what} in hypothesis {self.text!r}")

    def expr(self) -> tuple[np.ndarray, float]:
        vec, const = self.term()
        while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in "+-":
            self.pos += 1
            v2, c2 = self.term()
            sign = 1.0 if tok[1] == "+" else -1.0
            vec, const = vec + sign * v2, const + sign * c2
        return vec, const

    def term(self) -> tuple[np.ndarray, float]:
        vec, const = self.unary()
        while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in "*/":
            self.pos += 1
            v2, c2 = self.unary()
            if tok[1] == "*":
                if np.any(vec) and np.any(v2):
                    raise self._error("product of two coefficients (the hypothesis must be linear)")
                if np.any(v2):
                    vec, const = const * v2, const * c2
                else:
                    vec, const = vec * c2, const * c2
            else:
                if np.any(v2):
                    raise self._error("division by a coefficient (the hypothesis must be linear)")
                if c2 == 0:
                    raise self._error("division by zero")
                vec, const = vec / c2, const / c2
        return vec, const

    def unary(self) -> tuple[np.ndarray, float]:
        tok = self._peek()
        if tok is not None and tok[0] == "op" and tok[1] in "+-":
            self.pos += 1
            vec, const = self.unary()
            return (-vec, -const) if tok[1] == "-" else (vec, const)
        return self.primary()

    def primary(self) -> tuple[np.ndarray, float]:
        tok = self._peek()
        if tok is None:
            raise self._error("unexpected end")
        self.pos += 1
        kind, val = tok
        if kind == "num":
            return np.zeros(self.p), float(val)  # type: ignore[arg-type]
        if kind == "name":
            vec = np.zeros(self.p)
            vec[int(val)] = 1.0  # type: ignore[call-overload]
            return vec, 0.0
        if val == "(":
            out = self.expr()
            close = self._peek()
            if close != ("op", ")"):
                raise self._error("missing ')'")
            self.pos += 1
            return out
        raise self._error(f"unexpected {val!r}")


def parse_hypothesis(text: str, names: list[str]) -> Hypothesis:
    """Parse comma-separated linear equations in the coefficient ``names``.

    Raises
    ------
    HypothesisError
        Unknown coefficient (the message lists the available names), non-linear or malformed equation,
        or an equation that involves no coefficient.
    """
    tokens = _tokenize(text, names)
    # split on top-level commas (names containing commas were consumed by the tokenizer)
    groups: list[list[tuple[str, object]]] = [[]]
    depth = 0
    for tok in tokens:
        if tok == ("op", "("):
            depth += 1
        elif tok == ("op", ")"):
            depth -= 1
        if tok == ("op", ",") and depth == 0:
            groups.append([])
        else:
            groups[-1].append(tok)
    pieces = _split_text(text)
    rows, rhs, labels = [], [], []
    p = len(names)
    for k, toks in enumerate(groups):
        label = pieces[k] if len(pieces) == len(groups) else text.strip()
        if not toks:
            raise HypothesisError(f"empty equation in hypothesis {text!r}")
        eq = [i for i, t in enumerate(toks) if t == ("op", "=")]
        if len(eq) > 1:
            raise HypothesisError(f"more than one '=' in {label!r}")
        sides = [toks[: eq[0]], toks[eq[0] + 1 :]] if eq else [toks, []]
        forms = []
        for side in sides:
            if not side:
                if eq:
                    raise HypothesisError(f"missing side of '=' in {label!r}")
                forms.append((np.zeros(p), 0.0))
                continue
            parser = _Parser(side, p, label)
            forms.append(parser.expr())
            if parser.pos != len(side):
                raise HypothesisError(f"unexpected {side[parser.pos][1]!r} in hypothesis {label!r}")
        vec = forms[0][0] - forms[1][0]
        if not np.any(vec):
            raise HypothesisError(f"equation {label!r} involves no coefficient; {_names_message(names)}")
        rows.append(vec)
        rhs.append(forms[1][1] - forms[0][1])
        labels.append(label)
    return Hypothesis(L=np.array(rows), rhs=np.array(rhs, dtype=float), labels=labels)


def _split_text(text: str) -> list[str]:
    """The equations' texts for labels (top-level commas; best effort for names with commas)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _from_labelled(weights: pd.DataFrame, names: list[str]) -> np.ndarray:
    unknown = [c for c in weights.columns if c not in names]
    if unknown:
        raise HypothesisError(f"unknown coefficient(s) {unknown} in the contrast; {_names_message(names)}")
    return weights.reindex(columns=names, fill_value=0.0).to_numpy(dtype=float)


def as_hypothesis(hypothesis, names: list[str]) -> Hypothesis:
    """Any accepted form of a hypothesis as :class:`Hypothesis`.

    Parameters
    ----------
    hypothesis : str, sequence of str, array-like (p,) or (m, p), pandas Series / DataFrame / dict
        keyed by coefficient name, or a tuple ``(L, rhs)``.
    names : list of str
        Coefficient names (p).
    """
    p = len(names)
    if isinstance(hypothesis, Hypothesis):
        return hypothesis
    if isinstance(hypothesis, str):
        return parse_hypothesis(hypothesis, names)
    if isinstance(hypothesis, (list, tuple)) and hypothesis and all(isinstance(h, str) for h in hypothesis):
        return parse_hypothesis(", ".join(hypothesis), names)
    rhs = None
    if isinstance(hypothesis, tuple) and len(hypothesis) == 2:
        hypothesis, rhs = hypothesis
    if isinstance(hypothesis, dict):
        hypothesis = pd.Series(hypothesis, dtype=float)
    if isinstance(hypothesis, pd.Series):
        L = _from_labelled(hypothesis.to_frame().T, names)
        labels = [str(hypothesis.name) if hypothesis.name is not None else "contrast"]
    elif isinstance(hypothesis, pd.DataFrame):
        L = _from_labelled(hypothesis, names)
        labels = [str(i) for i in hypothesis.index]
    else:
        try:
            L = np.asarray(hypothesis, dtype=float)
        except (TypeError, ValueError):
            raise HypothesisError(
                f"cannot interpret a hypothesis of type {type(hypothesis).__name__}; give a string such as "
                f"'{names[0] if names else 'x'} = 0' or a contrast matrix with {p} columns"
            ) from None
        if L.ndim == 1:
            L = L[None, :]
        if L.ndim != 2 or L.shape[1] != p:
            raise HypothesisError(
                f"contrast has shape {L.shape}; it needs {p} columns, one per coefficient, in the order "
                + ", ".join(repr(n) for n in names)
            )
        labels = [f"L{i + 1}" for i in range(L.shape[0])]
    if L.shape[0] == 0:
        raise HypothesisError("the contrast matrix has no rows")
    if not np.all(np.isfinite(L)):
        raise HypothesisError("the contrast matrix has non-finite entries")
    r = np.zeros(L.shape[0]) if rhs is None else np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],)).copy()
    return Hypothesis(L=L, rhs=r, labels=labels)


def reduce_rank(hyp: Hypothesis, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """A full-row-rank equivalent ``(L, rhs)`` of the hypothesis.

    Dependent rows are replaced by an orthonormal basis of the row space (the F statistic and its
    df do not depend on the basis).

    Raises
    ------
    HypothesisError
        Zero contrast, or dependent equations with contradictory right-hand sides.
    """
    L, rhs = hyp.L, hyp.rhs
    U, s, _ = np.linalg.svd(L, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        raise HypothesisError("the contrast is zero")
    k = int(np.sum(s > tol * s[0]))
    if k == L.shape[0]:
        return L, rhs
    Uk = U[:, :k]
    resid = rhs - Uk @ (Uk.T @ rhs)
    if np.max(np.abs(resid)) > 1e-8 * (1.0 + np.max(np.abs(rhs))):
        raise HypothesisError(f"the equations {hyp.labels} are linearly dependent with contradictory right-hand sides")
    return Uk.T @ L, Uk.T @ rhs

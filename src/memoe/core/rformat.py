"""R's text helpers shared by the summaries (lme4, nlme and geepack print layouts)."""

from __future__ import annotations

__all__ = ["r_abbreviate"]

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

"""Pieces of the lme4-style summary text."""

from __future__ import annotations

import numpy as np

from memoe.core.rformat import format_pval as format_pvalues
from memoe.core.rformat import r_abbreviate, signif_stars


def test_r_abbreviate_as_r():
    assert r_abbreviate("(Intercept)") == "(Intr)"
    assert r_abbreviate("period2") == "perid2"
    assert r_abbreviate("YEAR96") == "YEAR96"
    assert r_abbreviate("HEIGHT_scaled") == "HEIGHT"
    assert r_abbreviate("period2", 11) == "period2"
    assert r_abbreviate("HEIGHT_scaled", 11) == "HEIGHT_scld"


def test_format_pvalues_and_stars():
    p = np.array([1.468e-9, 0.0010677, 0.00047448, 0.2, 1e-20])
    out = format_pvalues(p)
    assert out[0] == "1.47e-09" and out[-1] == "< 2e-16"
    assert out[1] == "0.00107" and out[3] == "0.20000"
    assert signif_stars(p) == ["***", "**", "***", " ", "***"]

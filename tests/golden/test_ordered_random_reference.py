"""Golden tests: an ordered factor inside a random-effects term is coded as lme4 codes it.

lme4 builds each random term's model matrix with R's default contrasts (lmer's ``contrasts=``
reaches the fixed part only): ``(per | Subject)`` with ``per`` ordered gives columns ``per.L`` and
``per.Q`` (contr.poly), ``(0 + per | Subject)`` one indicator per level. References: lme4 fits made
by tools/reference/cases/ordered_random.R on sleepstudy with an ordered period factor.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe

DATA = Path(__file__).resolve().parents[1] / "data"
CASES = {
    "ordered_random_slope_reml": ("Reaction ~ Days + (per | Subject)", True),
    "ordered_random_slope_ml": ("Reaction ~ Days + (per | Subject)", False),
    "ordered_random_indicators_reml": ("Reaction ~ Days + (0 + per | Subject)", True),
}


def reference(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def reference_data(case: str) -> pd.DataFrame:
    meta = reference(case)
    df = pd.read_csv(DATA / meta["dataset"])
    for c, spec in meta["data"]["columns"].items():
        if spec["type"] == "factor":
            df[c] = pd.Categorical(df[c].astype(str), categories=[str(x) for x in spec["levels"]],
                                   ordered=bool(spec["ordered"]))
    assert df["per"].cat.ordered
    return df


_FITS: dict = {}


def fitted(case: str):
    if case not in _FITS:
        formula, reml = CASES[case]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (per | Subject) is a boundary fit in lme4 too
            _FITS[case] = memoe.lmm(formula, reference_data(case)).fit(reml=reml)
    return _FITS[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_random_columns_are_lme4s(case):
    r = reference(case)["results"]
    fit = fitted(case)
    terms = r["varcorr"][0]["terms"]  # per.L, per.Q (contr.poly) or perearly, permid, perlate
    assert list(_our_sds(fit).index) == terms
    assert list(fit.theta.index) == list(r["theta"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimum_equals_lme4(case):
    r = reference(case)["results"]
    tight = r["tight_refit"]
    fit = fitted(case)
    # the optimum itself: log-likelihood to the optimisers' precision (a flat, boundary surface)
    assert abs(fit.loglik - tight["loglik"]) < 1e-5
    fe = pd.Series(tight["fixef"])
    assert np.allclose(fit.fixef[fe.index], fe, rtol=1e-4)
    sd = pd.Series(r["tight_refit"]["varcorr"][0]["sd"]) if "varcorr" in tight else pd.Series(r["varcorr"][0]["sd"])
    ours = _our_sds(fit)
    # SDs of the tight refit (or R's default fit): relative 2e-3 is the flat surface's slack
    assert np.allclose(ours[sd.index], sd, rtol=2e-3, atol=0.05)


@pytest.mark.parametrize("case", sorted(CASES))
def test_predictions_on_new_rows(case):
    ref = reference(case)
    fit = fitted(case)
    nd = pd.DataFrame(ref["predictions"]["newdata"])
    # population predictions depend on the fixed effects only; conditional ones on BLUPs of a flat
    # optimum (relative 1e-4 covers the optimisers' slack on sd(per.Q) near zero)
    np.testing.assert_allclose(fit.predict(nd, re_form=None), ref["predictions"]["population"], rtol=1e-6)
    np.testing.assert_allclose(fit.predict(nd), ref["predictions"]["conditional"], rtol=1e-4)


def _our_sds(fit) -> pd.Series:
    vc = fit.varcorr
    rows = vc[(vc["grp"] == "Subject") & vc["var2"].isna()]
    return pd.Series(rows["sdcor"].to_numpy(), index=list(rows["var1"]))

"""Golden tests of R's contrasts (issue 15): ordered factors get contr.poly, sum/Helmert set by argument.

The references are lme4 fits made by tools/reference/make_reference.R (section "contrasts") on the
simulated data tests/data/contrasts_sim.csv (``dose`` an ordered factor with levels in a
non-alphabetical order, ``dept`` unordered). As in test_lmm_reference.py, the optimum (log-likelihood,
fixed effects, theta) is compared with lme4's tight refit, and quantities R reports only at its
default fit (predictions, fitted values, vcov) with ours evaluated at R's default theta.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.lmm.result import LmmResult
from tests.conftest import r_matrix

DATA = Path(__file__).resolve().parents[1] / "data"
FORMULA = "y ~ dose + dept * x + (1 | subj)"
# case -> (contrasts= argument as a user would give it, REML)
CASES = {
    "contrasts_ordered_reml": (None, True),
    "contrasts_ordered_ml": (None, False),
    "contrasts_sum_helmert_reml": ({"dept": "contr.sum", "dose": "helmert"}, True),
    "contrasts_treatment_helmert_reml": ({"dose": "treatment", "dept": "contr.helmert"}, True),
}
# R's contrasts per case, as summary() prints them
FOOTERS = {
    "contrasts_ordered_reml": "Contrasts: dose = contr.poly",
    "contrasts_ordered_ml": "Contrasts: dose = contr.poly",
    "contrasts_sum_helmert_reml": "Contrasts: dose = contr.helmert, dept = contr.sum",
    "contrasts_treatment_helmert_reml": "Contrasts: dept = contr.helmert",
}


def reference(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def _categorical(values, spec: dict) -> pd.Categorical:
    return pd.Categorical([str(v) for v in values], categories=[str(x) for x in spec["levels"]],
                          ordered=bool(spec["ordered"]))


def reference_data(case: str) -> pd.DataFrame:
    """The CSV with factor columns as (ordered) Categoricals in R's level order, from the JSON."""
    meta = reference(case)
    df = pd.read_csv(DATA / meta["dataset"])
    cols = meta["data"]["columns"]
    assert list(df.columns) == list(cols) and len(df) == meta["data"]["nrow"]
    for c, spec in cols.items():
        if spec["type"] == "factor":
            df[c] = _categorical(df[c], spec)
            assert not df[c].isna().any()
    assert df["dose"].cat.ordered and not df["dept"].cat.ordered
    return df


def newdata(case: str) -> pd.DataFrame:
    """R's prediction rows; ``dose`` as plain strings (levels are matched by value, contrasts replayed)."""
    return pd.DataFrame(reference(case)["predictions"]["newdata"])


_FITS: dict = {}


def fitted(case: str):
    if case not in _FITS:
        contrasts, reml = CASES[case]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITS[case] = memoe.lmm(FORMULA, reference_data(case), contrasts=contrasts).fit(reml=reml)
    return _FITS[case]


def at_reference_theta(case: str) -> LmmResult:
    fit = fitted(case)
    theta = pd.Series(reference(case)["results"]["theta"])[fit.theta.index].to_numpy()
    return LmmResult(fit.model, fit.reml, theta, fit.opt, fit.convergence, fit.singular, fit.messages)


def _rel(a, b, floor=1.0) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_loglik_and_criterion(case):
    r = reference(case)["results"]
    tight = r["tight_refit"]
    fit = fitted(case)
    assert abs(fit.loglik - tight["loglik"]) < 1e-6
    if fit.reml:
        assert abs(fit.reml_criterion - tight["reml_criterion"]) < 2e-6
    else:
        assert abs(fit.deviance - tight["deviance"]) < 2e-6
    assert fit.df_model == r["df"] and fit.nobs == r["nobs"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_coefficient_names_and_values(case):
    r = reference(case)["results"]
    fit = fitted(case)
    # R's names: dose.L ... dose^4 (poly), dose1 ... (helmert, by position), dept1 (sum), deptchem:x
    assert list(fit.fixef.index) == list(r["fixef"])
    fe = pd.Series(r["tight_refit"]["fixef"])
    assert _rel(fit.fixef[fe.index], fe) < 1e-5
    th = pd.Series(r["tight_refit"]["theta"])
    assert np.allclose(fit.theta[th.index], th, rtol=1e-4, atol=1e-4)
    # at R's theta the GLS estimates and their covariance are R's (no optimiser slack)
    at_ref = at_reference_theta(case)
    assert _rel(at_ref.fixef[list(r["fixef"])], pd.Series(r["fixef"])) < 1e-6
    vc = r_matrix(r["vcov"])
    assert _rel(at_ref.vcov().loc[vc.index, vc.columns].to_numpy(), vc.to_numpy(), 1e-8) < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_fitted_and_predictions(case):
    ref = reference(case)
    r, pred = ref["results"], ref["predictions"]
    at_ref = at_reference_theta(case)
    assert _rel(at_ref.fitted.to_numpy(), r["fitted"]) < 1e-6
    nd = newdata(case)
    assert _rel(at_ref.predict(nd, re_form=None), pred["population"]) < 1e-6
    assert _rel(at_ref.predict(nd), pred["conditional"]) < 1e-6


@pytest.mark.parametrize("case", sorted(CASES))
def test_contrasts_recorded_shown_and_saved(case):
    fit = fitted(case)
    ref = reference(case)
    # the coding R used, as recorded in the reference (contr.* names per factor)
    r_types = {k: v["type"].removeprefix("contr.") for k, v in ref["contrasts"].items()}
    assert {k: fit.model.contrasts[k] for k in r_types} == r_types
    assert FOOTERS[case] in str(fit.summary())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.memoe")
        memoe.persist.save(fit, path)
        back = memoe.load(path)
    assert back.model.contrasts == fit.model.contrasts
    assert list(back.fixef.index) == list(fit.fixef.index)
    nd = newdata(case)
    np.testing.assert_array_equal(back.predict(nd, re_form=None), fit.predict(nd, re_form=None))


def test_contrasts_change_only_the_parameterisation():
    """Same column space: the ML optimum is the same whatever the coding (REML's differs by log|det T|)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = reference_data("contrasts_ordered_ml")
        a = memoe.lmm(FORMULA, df).fit(reml=False)
        b = memoe.lmm(FORMULA, df, contrasts={"dose": "sum", "dept": "helmert"}).fit(reml=False)
    assert abs(a.loglik - b.loglik) < 1e-6
    nd = newdata("contrasts_ordered_ml")
    assert _rel(a.predict(nd, re_form=None), b.predict(nd, re_form=None)) < 1e-5

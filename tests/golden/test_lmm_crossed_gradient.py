"""Golden tests of crossed LMMs on the blocked dense Schur path, fitted with the analytic gradient (issue 13).

References: ``tools/reference/cases/lmm_crossed_gradient.R`` on ``tests/data/crossed_grad.csv``
(simulated InstEval-shaped ratings, 4,000 rows, 300 x 90 x 8 levels): lme4's tight refit
(``nloptwrap`` with ``ftol_rel = 1e-15``, ``xtol_abs = 1e-12``). memoe's default optimiser there is the
projected BFGS on the analytic gradient (``memoe.lmm.gradient``); the criterion must be no worse than
lme4's by more than 1e-8 relative and theta within what that slack allows (tests/tolerances.py).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import memoe
from tests.tolerances import OptimumSlack

DATA = Path(__file__).resolve().parents[1] / "data"

CASES = {
    "lmm_crossed3_reml": ("y ~ x + (1 | s) + (1 | d) + (1 | k)", True),
    "lmm_crossed3_ml": ("y ~ x + (1 | s) + (1 | d) + (1 | k)", False),
    "lmm_crossed_slope_reml": ("y ~ x + (1 + x | s) + (1 | d)", True),
    "lmm_crossed_boundary_reml": ("y0 ~ x + (1 | s) + (1 | d) + (1 | k)", True),
}
# lme4's tight refit and memoe each stop within ~1e-10 relative of the optimum
REL = 1e-8


def reference(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def reference_data(case: str) -> pd.DataFrame:
    meta = reference(case)
    df = pd.read_csv(DATA / meta["dataset"])
    for c, spec in meta["data"]["columns"].items():
        if spec["type"] == "factor":
            df[c] = pd.Categorical(df[c].astype(str), categories=[str(x) for x in spec["levels"]])
    return df


_FITS: dict = {}


def fitted(case: str):
    if case not in _FITS:
        formula, reml = CASES[case]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the blocked dense path explicitly: "auto" takes the dense small path at this size (300 x 98
            # levels, since branch i13lpanel), checked against the same references below
            _FITS[case] = memoe.lmm(formula, reference_data(case)).fit(reml=reml, control={"solver": "dense"})
    return _FITS[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_fit_matches_lme4(case):
    tight = reference(case)["results"]["tight_refit"]
    fit = fitted(case)
    assert fit.model.problem.solver == "dense"
    assert fit.opt.optimizer == "projected BFGS"
    crit = fit.reml_criterion if fit.reml else fit.deviance
    ref = tight["reml_criterion"] if fit.reml else tight["deviance"]
    # never worse than lme4's tight optimum by more than REL relative
    assert crit <= ref + REL * abs(ref)
    assert abs(crit - ref) <= REL * abs(ref)
    theta_ref = pd.Series(tight["theta"])[fit.theta.index].to_numpy(dtype=float)
    slack = OptimumSlack(fit.model.objective(fit.reml), fit.theta.to_numpy(), 2 * REL * abs(ref),
                         lower=fit.design.theta_map.lower_bounds)
    np.testing.assert_array_less(np.abs(fit.theta.to_numpy() - theta_ref), slack.parameters() + 1e-7)
    fe = pd.Series(tight["fixef"])
    np.testing.assert_allclose(fit.fixef[fe.index].to_numpy(), fe.to_numpy(), rtol=1e-4, atol=1e-6)
    assert fit.sigma == pytest.approx(tight["sigma"], rel=1e-5)
    assert fit.converged


def test_boundary_fit_is_exactly_zero_and_singular():
    tight = reference("lmm_crossed_boundary_reml")["results"]["tight_refit"]
    fit = fitted("lmm_crossed_boundary_reml")
    zero = [k for k, v in tight["theta"].items() if v == 0]
    assert zero, "the reference is expected to be a boundary fit"
    assert (fit.theta[zero] == 0).all()
    assert fit.singular and any("singular" in m for m in fit.messages)


def test_bobyqa_option_reaches_the_same_optimum():
    formula, _ = CASES["lmm_crossed3_reml"]
    fit = fitted("lmm_crossed3_reml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fb = memoe.lmm(formula, reference_data("lmm_crossed3_reml")).fit(control={"optimizer": "bobyqa"})
    assert fb.opt.optimizer == "nlopt LN_BOBYQA"
    assert fit.reml_criterion <= fb.reml_criterion + REL * abs(fb.reml_criterion)
    assert fit.opt.feval < fb.opt.feval


@pytest.mark.parametrize("case", sorted(CASES))
def test_auto_path_matches_lme4(case):
    # "auto" (the dense small path with its own gradient for the scalar designs at this size) reaches lme4's
    # tight optimum too
    formula, reml = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = memoe.lmm(formula, reference_data(case)).fit(reml=reml)
    assert fit.model.problem.solver in ("dense_small", "dense")
    tight = reference(case)["results"]["tight_refit"]
    crit = fit.reml_criterion if fit.reml else fit.deviance
    ref = tight["reml_criterion"] if fit.reml else tight["deviance"]
    assert crit <= ref + REL * abs(ref)
    assert abs(crit - ref) <= REL * abs(ref)
    fe = pd.Series(tight["fixef"])
    np.testing.assert_allclose(fit.fixef[fe.index].to_numpy(), fe.to_numpy(), rtol=1e-4, atol=1e-6)
    assert fit.sigma == pytest.approx(tight["sigma"], rel=1e-5)

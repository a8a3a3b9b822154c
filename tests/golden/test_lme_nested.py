"""Golden tests: ``lme`` with nested grouping levels against nlme (``tools/reference/cases/nlme_nested.R``).

nlme's ``random = list(Dog = ~ day, Side = ~ 1)`` is written ``(day | Dog) + (1 | Dog:Side)`` and
``~ 1 | Block/Variety`` as ``(1 | Block/Variety)``. Tight-optimum convention (as the LMM golden tests):
estimates are compared with ``tight_refit``, the best of nlme's default fit and refits with other
optimiser settings; quantities R reports only at its default fit (coef, predictions) get the
default-vs-tight drift of the BLUPs added to their tolerance.

Measured on this machine (ours - tight logLik; max relative differences):

=============================== ======== ======= ======= ======= =======
case                            dlogLik  fixef   SE      VC (SD) BLUPs
=============================== ======== ======= ======= ======= =======
oats_lme_nested_reml            8.2e-11  6.7e-16 1.9e-06 2.9e-06 1.7e-06
pastes_lme_nested_ml            1.6e-11  8.3e-16 7.3e-07 2.8e-06 4.1e-06
pixel_lme_nested_ar1_reml       8.9e-12  5.0e-08 2.8e-07 3.8e-07 5.9e-07
pixel_lme_nested_ml             6.1e-11  3.4e-08 2.8e-07 1.8e-06 1.8e-06
pixel_lme_nested_reml           3.6e-11  4.5e-08 2.9e-07 1.6e-06 1.2e-06
pixel_lme_nested_varident_ml   -4.8e-12  3.9e-08 7.1e-08 3.1e-07 2.7e-07
=============================== ======== ======= ======= ======= =======

(BLUPs: max difference over the largest BLUP of the level.)
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.marginal import AR1, VarIdent, lme
from tests.conftest import r_matrix, reference, reference_data

PIXEL = "pixel ~ day + I(day**2) + (day | Dog) + (1 | Dog:Side)"

# case -> (formula, keyword arguments, reml)
CASES = {
    "pixel_lme_nested_reml": (PIXEL, {}, True),
    "pixel_lme_nested_ml": (PIXEL, {}, False),
    "pixel_lme_nested_ar1_reml": (PIXEL, {"correlation": AR1()}, True),
    "pixel_lme_nested_varident_ml": (PIXEL, {"weights": VarIdent("Side")}, False),
    "oats_lme_nested_reml": ("yield ~ nitro + Variety + (1 | Block/Variety)", {}, True),
    "pastes_lme_nested_ml": ("strength ~ 1 + (1 | batch/cask)", {}, False),
}
NAMES = sorted(CASES)
# cases without a residual structure: the same marginal model as memoe.lmm / lme4
PLAIN = [c for c in NAMES if not CASES[c][1]]


def model(case: str):
    formula, kwargs, _ = CASES[case]
    return lme(formula, reference_data(case), **kwargs)


@cache
def fitted(case: str):
    return model(case).fit(reml=CASES[case][2])


def results(case: str) -> dict:
    return reference(case)["results"]


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8)))


def _nlme_label(fit, level: int, label: str) -> str:
    """Our level label as nlme writes the group: ``Dog:Side`` level ``1:L`` -> ``1/L``; lme4's
    ``Variety:Block`` (from ``Block/Variety``) level ``Golden Rain:I`` -> ``I/Golden Rain`` (outer first)."""
    parts = fit.level_names[level].split(":")
    values = str(label).split(":")
    if len(parts) == 1:
        return str(label)
    outer = [p for name in fit.level_names[:level] for p in name.split(":")]
    order = sorted(range(len(parts)), key=lambda i: outer.index(parts[i]) if parts[i] in outer else len(outer))
    return "/".join(values[i] for i in order)


def _our_theta(fit, levels: dict) -> np.ndarray:
    """nlme's per-level theta (outermost first, named by the random-effects columns) in our theta order."""
    named = {}
    for grp, values in zip(fit.level_names, levels.values(), strict=True):
        for k, v in values.items():
            named[f"{grp}.{k}"] = v
    return np.array([named[n] for n in fit.theta.index], dtype=float)


def _tight_ranef(r: dict, fit) -> dict[str, pd.DataFrame]:
    """tight_refit's BLUPs keyed by our factor names, rows by nlme's labels."""
    out = {}
    for grp, recs in zip(fit.level_names, r["ranef"].values(), strict=True):
        out[grp] = pd.DataFrame(recs).set_index("group")
    return out


# ---------------------------------------------------------------------------- at nlme's parameters
@pytest.mark.parametrize("case", NAMES)
def test_objective_at_nlme_parameters(case):
    """Our likelihood at nlme's estimates (theta of every level, AR(1) / varIdent on nlme's own
    unconstrained scales, which are ours) gives nlme's logLik, fixed effects and sigma to rounding."""
    tight = results(case)["tight_refit"]
    fit = fitted(case)
    params = [_our_theta(fit, tight["theta_levels"])]
    for key in ("corStruct", "varStruct"):
        if tight.get(key):
            params.append(np.array(list(tight[key]["params_unconstrained"].values()), dtype=float))
    sol = fit.model.problem.solve(np.concatenate(params), CASES[case][2])
    assert -0.5 * sol.deviance == pytest.approx(tight["loglik"], abs=1e-8)
    assert _rel(sol.beta, list(tight["fixef"].values())) < 1e-8
    assert sol.sigma == pytest.approx(tight["sigma"], rel=1e-8)


# ---------------------------------------------------------------------------- our optimum
@pytest.mark.parametrize("case", NAMES)
def test_loglik_fixef_se(case):
    fit, r = fitted(case), results(case)
    tight = r["tight_refit"]
    assert fit.loglik == pytest.approx(tight["loglik"], abs=1e-6)
    assert fit.loglik >= tight["loglik"] - 1e-6
    assert fit.df_model == r["df"] and fit.nobs == r["nobs"]
    assert _rel(fit.fixef, list(tight["fixef"].values())) < 1e-5
    V = r_matrix(tight["vcov"]).to_numpy()
    assert _rel(fit.bse, np.sqrt(np.diag(V))) < 1e-4
    assert fit.sigma == pytest.approx(tight["sigma"], rel=1e-4)


@pytest.mark.parametrize("case", NAMES)
def test_variance_components(case):
    """SDs and correlations of every level (nlme's VarCorr), and the residual structure's parameters."""
    fit, tight = fitted(case), results(case)["tight_refit"]
    assert list(fit.ngroups.to_numpy()) == list(results(case)["ngroups"].values())[::-1]
    for grp, vc in zip(fit.level_names, tight["varcorr"][::-1], strict=True):
        ours = fit.ranef_covs[grp]
        assert list(ours.columns) == list(vc["terms"])
        sd = np.sqrt(np.diag(ours.to_numpy()))
        assert _rel(sd, list(vc["sd"].values())) < 1e-4
        corr = ours.to_numpy() / np.outer(sd, sd)
        assert np.max(np.abs(corr - r_matrix(vc["corr"]).to_numpy())) < 1e-4
    for key, ours in (("corStruct", fit.cor_params), ("varStruct", fit.var_params)):
        if tight.get(key):
            assert _rel(ours, list(tight[key]["params"].values())) < 1e-4
        else:
            assert ours.empty


@pytest.mark.parametrize("case", NAMES)
def test_blups_each_level(case):
    """ranef() of every level: nlme's BLUPs (inner groups labelled outer/inner) to 1e-4 of their scale."""
    fit, tight = fitted(case), results(case)["tight_refit"]
    assert list(fit.ranef) == fit.level_names
    for q, (grp, ref) in enumerate(_tight_ranef(tight, fit).items()):
        ours = fit.ranef[grp].copy()
        ours.index = [_nlme_label(fit, q, v) for v in ours.index]
        assert sorted(ours.index) == sorted(ref.index)
        for col in ref.columns:
            scale = np.max(np.abs(ref[col]))
            assert np.max(np.abs(ours.loc[ref.index, col].to_numpy() - ref[col].to_numpy())) < 1e-4 * scale


@pytest.mark.parametrize("case", NAMES)
def test_fitted_each_level(case):
    """nlme's fitted(fit, level = 0:Q) against tight_refit's."""
    fit, tight = fitted(case), results(case)["tight_refit"]
    ours = fit.fitted_levels
    y = fit.design.y
    scale = np.std(y)
    assert list(ours.columns) == ["fixed", *fit.level_names]
    for k, vals in enumerate(tight["fitted_levels"].values()):
        assert np.max(np.abs(ours.iloc[:, k].to_numpy() - np.asarray(vals))) < 1e-5 * scale
    np.testing.assert_array_equal(ours.iloc[:, -1].to_numpy(), fit.fitted.to_numpy())
    res = results(case)["residuals_levels"]
    for k, vals in enumerate(res.values()):
        assert np.max(np.abs(fit.residuals_at(k).to_numpy() - np.asarray(vals))) < 1e-4 * scale


def _blup_drift(r: dict, fit) -> float:
    """R's own default-vs-tight difference in the BLUPs (quantities R reports at its default fit)."""
    d = 0.0
    for a, b in zip(r["ranef"].values(), r["tight_refit"]["ranef"].values(), strict=True):
        A = pd.DataFrame(a).set_index("group")
        B = pd.DataFrame(b).set_index("group")
        d = max(d, float(np.max(np.abs(A.to_numpy() - B.loc[A.index].to_numpy()))))
    return d


@pytest.mark.parametrize("case", NAMES)
def test_coef_each_level(case):
    """nlme's coef(fit, level = q): fixed effects plus the BLUPs of levels 1..q."""
    fit, r = fitted(case), results(case)
    drift = _blup_drift(r, fit)
    coefs = fit.coef()
    assert list(coefs) == fit.level_names
    for q, (grp, recs) in enumerate(zip(fit.level_names, r["coef_levels"].values(), strict=True)):
        ref = pd.DataFrame(recs).set_index("group")
        ours = coefs[grp].copy()
        ours.index = [_nlme_label(fit, q, v) for v in ours.index]
        scale = np.max(np.abs(ref.to_numpy()))
        # two levels of BLUPs add up in the innermost coefficients
        tol = 1e-4 * scale + 2 * (q + 1) * drift
        assert np.max(np.abs(ours.loc[ref.index].to_numpy() - ref.to_numpy())) < tol


@pytest.mark.parametrize("case", [c for c in NAMES if "predictions" in results(c)])
def test_predict_each_level(case):
    """predict(newdata, level = k) for k = 0 .. Q, as nlme's predict(fit, newdata, level = 0:Q)."""
    fit, r = fitted(case), results(case)
    pred = r["predictions"]
    nd = pd.DataFrame(pred["newdata"])
    drift = _blup_drift(r, fit)
    scale = np.max(np.abs(fit.design.y))
    for k, vals in enumerate(pred["levels"].values()):
        ours = fit.predict(nd, level=k).to_numpy()
        assert np.max(np.abs(ours - np.asarray(vals))) < 1e-6 * scale + 2 * k * drift
    np.testing.assert_array_equal(fit.predict(nd, level=len(fit.level_names)), fit.predict(nd))
    np.testing.assert_array_equal(fit.predict(nd, level=0), fit.predict(nd, re_form=None))


@pytest.mark.parametrize("case", NAMES)
def test_containment_ddf(case):
    """nlme's fixDF over the nesting levels: the t table's df and anova's denominator df."""
    fit, r = fitted(case), results(case)
    ct = fit.coef_table()
    np.testing.assert_array_equal(ct["df"].to_numpy(), np.asarray(list(r["ddf"]["coef"].values()), dtype=float))
    ref = pd.DataFrame(r["coef_table"])
    assert _rel(ct["statistic"], ref["t_value"]) < 1e-4
    for kind in ("sequential", "marginal"):
        an = fit.anova(kind)
        ref_an = pd.DataFrame(r[f"anova_{kind}"])
        np.testing.assert_array_equal(an["denDF"].to_numpy(), ref_an["den_df"].to_numpy(dtype=float))
        assert _rel(an["F-value"], ref_an["f_value"]) < 1e-4
    np.testing.assert_array_equal(
        fit.anova()["denDF"].to_numpy(), np.asarray(list(r["ddf"]["terms"].values()), dtype=float)
    )


@pytest.mark.parametrize("case", NAMES)
def test_intervals_each_level(case):
    """nlme's intervals(fit): one reStruct block per level (ours ``reStruct.<factor>``)."""
    fit, r = fitted(case), results(case)["intervals"]
    iv = fit.intervals()
    for grp, recs in zip(fit.level_names, r["reStruct"].values(), strict=True):
        ours = iv.loc[f"reStruct.{grp}"]
        assert list(ours.index) == [x["param"] for x in recs]
        for x in recs:
            row = ours.loc[x["param"]]
            assert row["est."] == pytest.approx(x["est"], rel=1e-4)
            # nlme's Hessian is its own finite-difference approximation (see test_marginal_reference):
            # endpoints to 3e-2 of the interval's width on the scale it is built on (log SD, atanh cor)
            g = np.log if x["param"].startswith("sd(") else np.arctanh
            width = g(x["upper"]) - g(x["lower"])
            assert abs(g(row["lower"]) - g(x["lower"])) < 3e-2 * width
            assert abs(g(row["upper"]) - g(x["upper"])) < 3e-2 * width


@pytest.mark.parametrize("case", PLAIN)
def test_satterthwaite_equals_lmertest(case):
    """Without a residual structure the nested lme is lme4's model: lmerTest's Satterthwaite df."""
    fit, r = fitted(case), results(case)
    ref = pd.DataFrame(r["lmer_equivalent"]["satterthwaite"])
    ct = fit.coef_table(ddf="satterthwaite")
    # both sides differentiate numerically (lmerTest: numDeriv's Richardson; ours central differences)
    assert _rel(ct["df"], ref["df"]) < 1e-3
    # lme4's SEs are at lme4's default optimum (1e-4 from the tight one for Pixel)
    assert _rel(ct["std_error"], ref["std_error"]) < 1e-3
    assert r["lmer_equivalent"]["loglik"] == pytest.approx(r["tight_refit"]["loglik"], abs=1e-6)


@pytest.mark.parametrize("case", PLAIN)
def test_same_marginal_model_as_lmm(case):
    """A nested lme without residual structure is memoe.lmm's model: the same optimum to 1e-7 in logLik."""
    fit = fitted(case)
    formula, _, reml = CASES[case]
    lfit = memoe.lmm(formula, reference_data(case)).fit(reml=reml)
    assert fit.loglik == pytest.approx(lfit.loglik, abs=1e-7)
    assert _rel(fit.fixef, lfit.fixef) < 1e-5
    # the same likelihood at the same theta, to rounding
    sol = fit.model.problem.solve(np.asarray(lfit.theta, dtype=float), reml)
    assert -0.5 * sol.deviance == pytest.approx(lfit.loglik, abs=1e-9)
    # and the same BLUPs and conditional SDs at that theta
    for grp in fit.level_names:
        blk = next(b for b in fit.design.blocks if b.factor.name == grp)
        k = fit.model.level_blocks.index(fit.design.blocks.index(blk))
        ours = sol.bs[k]
        ref = lfit.ranef[grp].to_numpy()
        assert np.max(np.abs(ours - ref)) < 1e-6 * np.max(np.abs(ref))
    for grp in fit.level_names:
        a, b = fit.ranef_condsd[grp].to_numpy(), lfit.ranef_condsd[grp].to_numpy()
        assert np.max(np.abs(a - b)) < 1e-4 * np.max(b)


def test_summary_prints_each_level():
    text = str(fitted("pixel_lme_nested_ar1_reml").summary())
    assert " Formula: ~1 + day | Dog" in text
    assert " Formula: ~1 | Side %in% Dog" in text
    assert "Correlation Structure: AR(1)\n Formula: ~1 | Dog/Side" in text
    assert "Number of Groups: \nDog Side %in% Dog\n 10            20" in text
    text = str(fitted("oats_lme_nested_reml").summary())
    assert " Formula: ~1 | Variety %in% Block" in text


@pytest.mark.parametrize("case", ["pixel_lme_nested_ar1_reml", "oats_lme_nested_reml"])
def test_save_load_roundtrip(case, tmp_path):
    fit = fitted(case)
    path = tmp_path / "fit.memoe"
    fit.save(path)
    back = memoe.load(path)
    assert back.loglik == pytest.approx(fit.loglik, abs=1e-10)
    assert back.level_names == fit.level_names
    for grp in fit.level_names:
        np.testing.assert_allclose(back.ranef[grp].to_numpy(), fit.ranef[grp].to_numpy(), rtol=1e-9, atol=1e-12)

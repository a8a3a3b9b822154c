"""Stateful formula transforms (scale, center, poly, bs, cr) through formulaic, in every family.

The transforms are learned on the fitting data and replayed on new data by ``predict`` (formulaic's
ModelSpec); the columns they read are found, checked and NA-filtered like any other column. R's
definitions are checked against independent implementations: R's ``poly`` is the QR-orthogonalised
raw polynomial with unit-norm columns (signs as R's ``qr``), R's ``scale`` divides by the SD with
``n - 1``, and ``splines::bs(x, df = 4)`` is the cubic B-spline basis with one interior knot at the
median and boundary knots at the range, without its first column (scipy's BSpline gives it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import BSpline

import memoe
from memoe.core.design.frame import formula_variables
from memoe.core.persist.formula_check import check_formula
from memoe.errors import PersistenceError, UnknownColumnError


@pytest.fixture(scope="module")
def ss() -> pd.DataFrame:
    return memoe.datasets.load("sleepstudy")


@pytest.mark.parametrize(
    "rhs, expected",
    [
        ("poly(Days, 2)", ["Days"]),
        ("scale(Days) + center(x)", ["Days", "x"]),
        ("bs(x, df=4) + cr(z, df=3)", ["x", "z"]),
        ("poly(x.y, 2)", ["x.y"]),
        ("C(g, contr.sum) + np.log(w)", ["g", "w"]),
    ],
)
def test_variables_inside_stateful_transforms_are_found(rhs, expected):
    assert formula_variables(rhs, "the test") == expected


def _r_poly(x: np.ndarray, degree: int) -> np.ndarray:
    """R's poly(x, degree): QR of the centred Vandermonde matrix, columns scaled to unit norm."""
    xc = x - x.mean()
    V = np.vander(xc, degree + 1, increasing=True)
    Q, R = np.linalg.qr(V)
    Z = Q * np.diag(R)  # R's qr.qy(QR, diag(diag(R))): the sign follows R's diagonal
    Z = Z / np.sqrt((Z**2).sum(axis=0))
    return Z[:, 1:]


def test_poly_is_r_orthogonal_poly_and_replays(ss):
    fit = memoe.lmm("Reaction ~ poly(Days, 2) + (1 | Subject)", ss).fit()
    assert list(fit.fixef.index) == ["(Intercept)", "poly(Days, 2)1", "poly(Days, 2)2"]
    X = fit.design.X
    np.testing.assert_allclose(X[:, 1:], _r_poly(ss["Days"].to_numpy(float), 2), atol=1e-12)
    # new data: the polynomial of the fitting data evaluated at the new values (not re-orthogonalised)
    nd = pd.DataFrame({"Days": [2.5, 11.0], "Subject": ["308", "309"]})
    Xn = fit.design.fixed.matrix_for(nd)
    full = np.concatenate([ss["Days"].to_numpy(float), [2.5, 11.0]])
    # the same coefficients of the orthogonal basis: fit them on the training columns and apply
    B = np.vander(ss["Days"].to_numpy(float), 3, increasing=True)
    coef = np.linalg.lstsq(B, X, rcond=None)[0]
    np.testing.assert_allclose(Xn, np.vander(full[-2:], 3, increasing=True) @ coef, atol=1e-10)


def test_scale_and_center_use_the_fitting_data(ss):
    fit = memoe.lmm("Reaction ~ scale(Days) + (scale(Days) | Subject)", ss).fit()
    d = ss["Days"].to_numpy(float)
    np.testing.assert_allclose(fit.design.X[:, 1], (d - d.mean()) / d.std(ddof=1), rtol=1e-12)
    nd = pd.DataFrame({"Days": [4.5, 20.0], "Subject": ["308", "309"]})
    np.testing.assert_allclose(fit.design.fixed.matrix_for(nd)[:, 1], [0.0, (20 - 4.5) / d.std(ddof=1)], atol=1e-12)
    # one row alone predicts as within a batch (the state is not re-learned on the new rows)
    assert fit.predict(nd.iloc[[1]]).iloc[0] == pytest.approx(fit.predict(nd).iloc[1], rel=1e-12)
    cfit = memoe.lmm("Reaction ~ center(Days) + (1 | Subject)", ss).fit()
    np.testing.assert_allclose(cfit.design.X[:, 1], d - d.mean(), atol=1e-12)


def test_bs_is_r_bs(ss):
    fit = memoe.lmm("Reaction ~ bs(Days, df=4) + (1 | Subject)", ss).fit()
    d = ss["Days"].to_numpy(float)
    t = np.r_[[0.0] * 4, np.median(d), [9.0] * 4]
    basis = BSpline.design_matrix(d, t, 3).toarray()[:, 1:]
    np.testing.assert_allclose(fit.design.X[:, 1:], basis, atol=1e-12)
    assert fit.fixef.index[1] == "bs(Days, df=4)1"
    nd = pd.DataFrame({"Days": [2.5, 7.25], "Subject": ["308", "309"]})
    ref = BSpline.design_matrix(np.array([2.5, 7.25]), t, 3).toarray()[:, 1:]
    np.testing.assert_allclose(fit.design.fixed.matrix_for(nd)[:, 1:], ref, atol=1e-12)


def test_cr_fits_and_replays(ss):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cr's basis spans the intercept: one column is aliased
        fit = memoe.lmm("Reaction ~ cr(Days, df=4) + (1 | Subject)", ss).fit()
    nd = ss.iloc[[3, 17]]
    np.testing.assert_allclose(fit.predict(nd).to_numpy(), fit.fitted.iloc[[3, 17]].to_numpy(), rtol=1e-10)


def test_missing_values_and_unknown_columns_in_transforms(ss):
    df = ss.copy()
    df.loc[[0, 5], "Days"] = np.nan
    fit = memoe.lmm("Reaction ~ poly(Days, 2) + (1 | Subject)", df).fit()
    assert fit.nobs == 178 and fit.n_dropped == 2
    with pytest.raises(UnknownColumnError, match="Dayz"):
        memoe.lmm("Reaction ~ poly(Dayz, 2) + (1 | Subject)", ss)


@pytest.mark.parametrize("family", ["glmm", "gls", "lme", "gee"])
def test_every_family_replays_transforms(family):
    orth = memoe.datasets.load("Orthodont")
    nd = orth.iloc[[0, 7, 40]]
    if family == "glmm":
        cb = memoe.datasets.load("cbpp")
        fit = memoe.glmm("cbind(incidence, size - incidence) ~ poly(size, 2) + (1 | herd)", cb, "binomial").fit()
        nd, ref = cb.iloc[[0, 7, 40]], fit.fitted.iloc[[0, 7, 40]]
    elif family == "gls":
        fit = memoe.gls("distance ~ scale(age) + Sex", orth).fit()
        ref = fit.fitted.iloc[[0, 7, 40]]
    elif family == "lme":
        fit = memoe.lme("distance ~ poly(age, 2) + (1 | Subject)", orth).fit()
        ref = fit.fitted.iloc[[0, 7, 40]]
    else:
        fit = memoe.gee("distance ~ center(age) + Sex", orth, group="Subject").fit()
        ref = fit.fitted.iloc[[0, 7, 40]]
    np.testing.assert_allclose(fit.predict(nd).to_numpy(), ref.to_numpy(), rtol=1e-8)


@pytest.mark.parametrize(
    "formula", ["y ~ poly(x, 2) + (1 | g)", "y ~ scale(x) + center(z)", "y ~ bs(x, df=4) + cr(z, df=3)",
                "y ~ poly(x, degree=3, raw=True)"],
)
def test_persistence_allow_list_accepts_transforms(formula):
    check_formula(formula, ["y", "x", "z", "g"])


@pytest.mark.parametrize(
    "formula", ["y ~ poly(x, 2, evil=1)", "y ~ poly(__import__('os'), 2)", "y ~ scale(x.__class__)"],
)
def test_persistence_allow_list_refuses_code_in_transforms(formula):
    with pytest.raises(PersistenceError):
        check_formula(formula, ["y", "x"])


def test_learned_state_is_saved_as_data_and_checked_on_load(ss, tmp_path):
    import json
    import zipfile

    fit = memoe.lmm("Reaction ~ poly(Days, 2) + (scale(Days) | Subject)", ss).fit()
    path = tmp_path / "fit.memoe"
    fit.save(str(path))
    back = memoe.load(str(path))
    nd = pd.DataFrame({"Days": [2.5, 11.0], "Subject": ["308", "309"]})
    np.testing.assert_allclose(back.predict(nd), fit.predict(nd), rtol=1e-12)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta_name = next(n for n in names if n.endswith(".json"))
        meta = json.loads(z.read(meta_name))
    state = meta["model"]["transform_state"]
    assert state["fixed"]["poly(Days, 2)"]["alpha"]["0"] == pytest.approx(4.5)
    assert state["random:Subject:0"]["scale(Days)"]["center"] == pytest.approx(4.5)
    # a file whose saved state does not match its rows is refused
    meta["model"]["transform_state"]["fixed"]["poly(Days, 2)"]["alpha"]["0"] = 4.0
    bad = tmp_path / "bad.memoe"
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(bad, "w") as out:
        for n in names:
            out.writestr(n, json.dumps(meta) if n == meta_name else z.read(n))
    with pytest.raises(PersistenceError, match="transforms"):
        memoe.load(str(bad))

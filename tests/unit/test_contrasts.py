"""R's contrasts (issue 15): contr.poly for ordered factors, the contrasts= argument, names, replay, save/load.

The contrast matrices are checked against their definitions (R's ``contr.poly``: orthonormal
polynomials of the scores 1..n; ``contr.sum``: identity over -1s in the last row; ``contr.helmert``:
unscaled), so these tests do not depend on R. The fits against lme4 are in
tests/golden/test_contrasts_reference.py.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.contrasts import apply_contrasts, check_saved_contrasts, contrasts_footer
from memoe.core.design.fixed import build_fixed
from memoe.errors import DataError, FormulaError, PersistenceError

LEVELS = ["none", "low", "mid", "high", "max", "top"]


# ---------------------------------------------------------------------------------------------- oracles
def contr_poly(n: int) -> np.ndarray:
    """R's contr.poly(n): the orthonormal polynomial columns of degree 1..n-1 in the scores 1..n."""
    x = np.arange(1, n + 1, dtype=float)
    V = np.vander(x - x.mean(), n, increasing=True)
    Q, R = np.linalg.qr(V)
    Q = Q * np.sign(np.diag(R))  # R's sign: each column increasing in its leading power
    return Q[:, 1:]


def contr_sum(n: int) -> np.ndarray:
    return np.vstack([np.eye(n - 1), -np.ones(n - 1)])


def contr_helmert(n: int) -> np.ndarray:
    H = np.zeros((n, n - 1))
    for j in range(n - 1):
        H[: j + 1, j] = -1.0
        H[j + 1, j] = j + 1
    return H


def frame(n_levels: int, n: int = 60, seed: int = 0, ordered: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    levels = LEVELS[:n_levels]
    codes = np.concatenate([np.arange(n_levels), rng.integers(0, n_levels, n - n_levels)])
    return pd.DataFrame(
        {
            "dose": pd.Categorical.from_codes(codes, categories=levels, ordered=ordered),
            "dept": rng.choice(["chem", "bio", "phys"], n),
            "x": rng.normal(size=n),
        }
    )


def coding(fd, df, col="dose") -> np.ndarray:
    """The contrast matrix the design used: one row per level (first row of that level, no intercept)."""
    cats = list(df[col].cat.categories)
    rows = [int(np.flatnonzero(df[col].astype(str).to_numpy() == lev)[0]) for lev in cats]
    return fd.X[rows][:, 1:]


# ---------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_ordered_factor_gets_contr_poly_with_r_names(n):
    df = frame(n)
    fd = build_fixed("1 + dose", df)
    suffix = [".L", ".Q", ".C"] + [f"^{k}" for k in range(4, n)]
    assert fd.names == ["(Intercept)"] + [f"dose{s}" for s in suffix[: n - 1]]
    # orthonormal columns of scores 1..n: entries are O(1), so rounding is ~1e-15
    np.testing.assert_allclose(coding(fd, df), contr_poly(n), atol=1e-12)
    assert fd.contrasts == {"dose": "poly", "dept": "treatment"} or fd.contrasts == {"dose": "poly"}


@pytest.mark.parametrize("kind,oracle,names", [
    ("sum", contr_sum, ["dose1", "dose2", "dose3", "dose4"]),
    ("contr.helmert", contr_helmert, ["dose1", "dose2", "dose3", "dose4"]),
    ("treatment", lambda n: np.eye(n)[:, 1:], ["doselow", "dosemid", "dosehigh", "dosemax"]),
    ("contr.poly", contr_poly, ["dose.L", "dose.Q", "dose.C", "dose^4"]),
])
def test_contrasts_argument_numbers_and_names(kind, oracle, names):
    df = frame(5)
    fd = build_fixed("1 + dose", df, {"dose": kind})
    assert fd.names == ["(Intercept)", *names]
    np.testing.assert_allclose(coding(fd, df), oracle(5), atol=1e-12)


def test_unordered_factor_keeps_treatment_and_sum_uses_level_order_of_the_data():
    df = frame(4, ordered=False)
    assert build_fixed("1 + dose + dept", df).names == [
        "(Intercept)", "doselow", "dosemid", "dosehigh", "deptchem", "deptphys"
    ]
    fd = build_fixed("1 + dose + dept", df, {"dept": "sum", "dose": "poly"})
    # R names sum columns by position: dept1 = bio (first sorted level), dept2 = chem
    assert fd.names == ["(Intercept)", "dose.L", "dose.Q", "dose.C", "dept1", "dept2"]
    bio = int(np.flatnonzero(df["dept"].to_numpy() == "bio")[0])
    phys = int(np.flatnonzero(df["dept"].to_numpy() == "phys")[0])
    np.testing.assert_array_equal(fd.X[bio, 4:], [1.0, 0.0])
    np.testing.assert_array_equal(fd.X[phys, 4:], [-1.0, -1.0])


def test_interactions_follow_r_naming():
    df = frame(4)
    fd = build_fixed("1 + dose * x + dept", df, {"dept": "helmert"})
    assert fd.names == [
        "(Intercept)", "dose.L", "dose.Q", "dose.C", "x", "dept1", "dept2", "dose.L:x", "dose.Q:x", "dose.C:x"
    ]
    # R's marginality rule: with x in the model, dept is contrast-coded inside x:dept ...
    assert build_fixed("1 + x + x:dept", df, {"dept": "sum"}).names == ["(Intercept)", "x", "x:dept1", "x:dept2"]
    # ... without it (or without an intercept) dept gets indicator columns named by level
    assert build_fixed("1 + x:dept", df, {"dept": "sum"}).names == [
        "(Intercept)", "x:deptbio", "x:deptchem", "x:deptphys"
    ]
    assert build_fixed("0 + dept", df, {"dept": "sum"}).names == ["deptbio", "deptchem", "deptphys"]


def test_factor_wrapper_of_an_ordered_factor_is_poly_and_explicit_c_is_left_alone():
    df = frame(3)
    assert build_fixed("1 + factor(dose)", df).names == ["(Intercept)", "dose.L", "dose.Q"]
    # an explicit C(x, contr.sum) in the formula is the user's choice, whatever the default
    assert build_fixed("1 + C(dose, contr.sum)", df).names == ["(Intercept)", "dose1", "dose2"]


def test_rewriting_keeps_other_terms():
    r = {"a": "poly", "my x": "sum", "g": "treatment"}
    assert apply_contrasts("(a + g)^2 + log(z) + I(a)", r) == "(C(a, contr.poly) + g)^2 + log(z) + I(a)"
    assert apply_contrasts("`my x`:z + np.log(a)", r) == "C(`my x`, contr.sum):z + np.log(a)"
    assert apply_contrasts("factor(a) + C(a, contr.sum)", r) == "C(a, contr.poly) + C(a, contr.sum)"


def test_polars_enum_is_an_ordered_factor():
    pl = pytest.importorskip("polars")
    df = frame(4)
    rng = np.random.default_rng(1)
    df["y"] = rng.normal(size=len(df))
    df["g"] = np.repeat(np.arange(12), 5)
    pdf = pl.from_pandas(df.assign(dose=df["dose"].astype(str))).with_columns(
        pl.col("dose").cast(pl.Enum(LEVELS[:4]))
    )
    m = memoe.lmm("y ~ dose + (1 | g)", pdf)
    assert m.design.fixef_names == ["(Intercept)", "dose.L", "dose.Q", "dose.C"]
    np.testing.assert_allclose(m.design.X, memoe.lmm("y ~ dose + (1 | g)", df).design.X, atol=0)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad,err,words", [
    ({"dose": "orthogonal"}, FormulaError, ["'treatment', 'sum', 'helmert', 'poly'", "orthogonal", "dose"]),
    (["dose", "sum"], FormulaError, ["dict", "list"]),
    ({1: "sum"}, FormulaError, ["column names"]),
    ({"dosage": "sum"}, DataError, ["'dosage'", "not a variable of the formula"]),
    ({"x": "sum"}, DataError, ["'x'", "number", "factor(x)"]),
])
def test_bad_contrasts_are_refused_by_name(bad, err, words):
    df = frame(3)
    df["y"] = np.arange(len(df), dtype=float)
    df["g"] = np.repeat(np.arange(12), 5)
    with pytest.raises(err) as info:
        memoe.lmm("y ~ dose + x + (1 | g)", df, contrasts=bad)
    for w in words:
        assert w in str(info.value)


def test_numeric_column_through_factor_accepts_contrasts():
    df = frame(3)
    df["k"] = np.tile([1, 2, 3], 20)
    assert build_fixed("1 + factor(k)", df, {"k": "sum"}).names == ["(Intercept)", "k1", "k2"]


# ---------------------------------------------------------------------------------------------- fits
def lmm_data(seed: int = 4) -> pd.DataFrame:
    df = frame(4, n=96, seed=seed)
    rng = np.random.default_rng(seed)
    df["g"] = np.repeat([f"s{i:02d}" for i in range(16)], 6)
    b = rng.normal(size=16)
    df["y"] = df["dose"].cat.codes * 0.4 + df["x"] * 0.3 + b[np.repeat(np.arange(16), 6)] + rng.normal(size=96)
    return df


def fit_quiet(factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory()


def test_predict_replays_contrasts_on_new_data_given_as_strings_in_any_order():
    df = lmm_data()
    fit = fit_quiet(lambda: memoe.lmm("y ~ dose * x + dept + (1 | g)", df, contrasts={"dept": "sum"}).fit())
    nd = df.sample(10, random_state=1).reset_index(drop=True)
    ref = fit.predict(nd).to_numpy()
    nd2 = nd.assign(dose=nd["dose"].astype(str), dept=pd.Categorical(nd["dept"], categories=["phys", "chem", "bio"]))
    np.testing.assert_array_equal(fit.predict(nd2).to_numpy(), ref)
    # the same rows through the training design: replay gives identical numbers
    np.testing.assert_array_equal(fit.design.fixed.matrix_for(nd2), fit.design.fixed.matrix_for(nd))


def test_summary_footer_only_when_a_factor_is_not_treatment_coded():
    df = lmm_data().assign(dose=lambda d: d["dose"].astype(str))
    plain = fit_quiet(lambda: memoe.lmm("y ~ dose + dept + (1 | g)", df).fit())
    assert "Contrasts:" not in str(plain.summary())
    coded = fit_quiet(lambda: memoe.lmm("y ~ dose + dept + (1 | g)", df, {"dept": "sum", "dose": "poly"}).fit())
    assert "Contrasts: dose = contr.poly, dept = contr.sum" in str(coded.summary())
    assert contrasts_footer({"a": "treatment"}) is None


def _round_trip(fit):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.memoe")
        memoe.persist.save(fit, path)
        return memoe.load(path), path


def test_lmm_contrasts_survive_save_load_and_forged_names_are_refused():
    from tests.unit.test_persist_security import forge_meta

    df = lmm_data()
    fit = fit_quiet(lambda: memoe.lmm("y ~ dose + dept + (1 | g)", df, contrasts={"dept": "helmert"}).fit())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.memoe")
        memoe.persist.save(fit, path)
        back = memoe.load(path)
        assert back.model.contrasts == {"dose": "poly", "dept": "helmert"}
        np.testing.assert_array_equal(back.predict(df.head(7)), fit.predict(df.head(7)))

        def evil(meta):
            meta["model"]["contrasts"]["dept"] = "__import__('os')"

        forge_meta(path, evil)
        with pytest.raises(PersistenceError, match="only 'treatment', 'sum', 'helmert' and 'poly'"):
            memoe.load(path)
    with pytest.raises(PersistenceError, match="not a saved data column"):
        check_saved_contrasts({"nope": "sum"}, ["y", "dose"])
    check_saved_contrasts(None, ["y"])  # files written before contrasts were saved


def test_glmm_contrasts():
    df = lmm_data()
    df["z"] = (df["y"] > df["y"].median()).astype(int)
    fit = fit_quiet(lambda: memoe.glmm("z ~ dose + dept + (1 | g)", df, "binomial", contrasts={"dept": "sum"}).fit())
    assert list(fit.fixef.index) == ["(Intercept)", "dose.L", "dose.Q", "dose.C", "dept1", "dept2"]
    assert "Contrasts: dose = contr.poly, dept = contr.sum" in str(fit.summary())
    back, _ = _round_trip(fit)
    assert back.model.contrasts == fit.model.contrasts
    np.testing.assert_allclose(back.predict(df.head(5)), fit.predict(df.head(5)), rtol=1e-12)


def test_gls_lme_and_gee_contrasts():
    df = lmm_data()
    g = fit_quiet(lambda: memoe.marginal.gls("y ~ dose + dept", df, contrasts={"dept": "contr.helmert"}).fit())
    assert list(g.fixef.index) == ["(Intercept)", "dose.L", "dose.Q", "dose.C", "dept1", "dept2"]
    assert "Contrasts: dose = contr.poly, dept = contr.helmert" in str(g.summary())
    assert _round_trip(g)[0].model.contrasts == g.model.contrasts
    m = fit_quiet(lambda: memoe.marginal.lme("y ~ dose + (1 | g)", df, contrasts={"dose": "treatment"}).fit())
    assert list(m.fixef.index) == ["(Intercept)", "doselow", "dosemid", "dosehigh"]
    e = fit_quiet(lambda: memoe.gee("y ~ dose + dept", df, group="g", contrasts={"dept": "sum"}).fit())
    assert list(e.params.index) == ["(Intercept)", "dose.L", "dose.Q", "dose.C", "dept1", "dept2"]
    assert "Contrasts: dose = contr.poly, dept = contr.sum" in str(e.summary())
    assert _round_trip(e)[0].model.contrasts == e.model.contrasts


def test_memoe_gating_formula_uses_contrasts():
    df, _ = memoe.simulate.memoe_data(60, k=2, seed=3)
    subj = df["id"].astype("category").cat.codes.to_numpy()
    tier = np.array(["lo", "mid", "hi"])[subj % 3]
    df["tier"] = pd.Categorical(tier, categories=["lo", "mid", "hi"], ordered=True)
    df["site"] = np.array(["a", "b", "c"])[(subj // 3) % 3]
    m = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ tier + site", k=2, data=df, contrasts={"site": "sum"})
    assert m.mdesign.gating_names == ["(Intercept)", "tier.L", "tier.Q", "site1", "site2"]
    assert m.contrasts == {"tier": "poly", "site": "sum"}

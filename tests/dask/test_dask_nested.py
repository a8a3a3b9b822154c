"""Factors nested within the subject on Dask (issue 14): the Dask LMM equals the in-memory LMM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.dask.result import DaskUnsupportedError
from memoe.dask.spec import DaskFormulaError

from .test_dask_lmm import TIGHT, _compare

dd = pytest.importorskip("dask.dataframe")


def simulate_nested(n_sub: int = 80, seed: int = 3) -> pd.DataFrame:
    """Subjects with 1-4 visits (h) of 1-4 rows each, rows in random order, NaN rows, a crossed factor g."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_sub):
        for h in range(int(rng.integers(1, 5))):
            rows += [(i, h)] * int(rng.integers(1, 5))
    sub, h = np.array(rows).T
    n = len(sub)
    t = rng.uniform(0, 5, n)
    x = rng.normal(size=n)
    b0, b1 = rng.normal(0, 1, n_sub), rng.normal(0, 0.3, n_sub)
    c = rng.normal(0, 0.6, (n_sub, 4))
    y = 0.5 + 0.3 * t + 0.4 * x + b0[sub] + b1[sub] * t + c[sub, h] + rng.normal(0, 0.5, n)
    df = pd.DataFrame({"id": sub, "h": h, "t": t, "x": x, "y": y,
                       "g": rng.choice(["a", "b", "c"], n)})
    # h coded per subject (levels unique across subjects): nested without writing id:h
    df["visit"] = df["id"].astype(str) + "_" + df["h"].astype(str)
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.loc[[2, 11], "x"] = np.nan
    df.loc[[5], "y"] = np.nan
    return df


CASES = [("y ~ t + x + (1 | id/h)", True), ("y ~ t + x + (1 | id/h)", False),
         ("y ~ t + x + (t | id) + (1 | id:h)", True), ("y ~ t + x + (1 | id) + (1 | visit)", False)]


@pytest.mark.parametrize(("formula", "reml"), CASES)
def test_dask_nested_equals_memory(client, formula, reml):
    df = simulate_nested()
    ddf = dd.from_pandas(df, npartitions=4)
    model = memoe.lmm(formula, data=ddf)
    assert model.shuffled  # rows in random order: subjects span partitions until aligned
    fd = model.fit(reml=reml, control=TIGHT)
    fm = memoe.lmm(formula, data=df).fit(reml=reml, control=TIGHT)
    _compare(fd, fm)
    # same blocks in the same order (names of theta, ngroups); the numbers follow theta, which _compare
    # checked to the slack of its flat optimum
    cols = ["grp", "var1", "var2"]
    pd.testing.assert_frame_equal(fd.varcorr[cols], fm.varcorr[cols])
    assert list(fd.theta.index) == list(fm.theta.index)
    np.testing.assert_allclose(fd.varcorr["sdcor"].to_numpy(), fm.varcorr["sdcor"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(fd.vcov().to_numpy(), fm.vcov().to_numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("formula", ["y ~ t + x + (1 | id/h)", "y ~ t + x + (t | id) + (1 | id:h)"])
def test_dask_nested_ranef_fitted_summary(client, formula):
    df = simulate_nested(n_sub=50)
    fd = memoe.lmm(formula, data=dd.from_pandas(df, npartitions=3)).fit(control=TIGHT)
    fm = memoe.lmm(formula, data=df).fit(control=TIGHT)
    assert set(fd.ranef) == set(fm.ranef)
    for name, re in fd.ranef.items():
        ref = fm.ranef[name]
        assert len(re) == len(ref) and list(re.columns) == list(ref.columns)
        # conditional modes move with theta, which agrees to the slack of its flat optimum
        np.testing.assert_allclose(re.to_numpy(), ref.loc[re.index].to_numpy(), atol=1e-5)
        sd = fd.ranef_condsd[name]
        np.testing.assert_allclose(sd.to_numpy(), fm.ranef_condsd[name].loc[sd.index].to_numpy(), rtol=1e-5)
    fit_d = fd.fitted.compute()
    fit_m = fm.fitted
    common = fit_m.index
    np.testing.assert_allclose(fit_d.loc[common].to_numpy(), fit_m.to_numpy(), atol=1e-5)
    assert fit_d.drop(common).isna().all()
    assert "Scaled residuals" in str(fd.summary())
    eta = fd.predict(re_form=None).compute()
    assert eta.notna().sum() == fd.nobs
    with pytest.raises(DaskUnsupportedError, match="nested factors"):
        fd.predict(df.head(10))


def test_dask_crossed_inner_factor_refused(client):
    df = simulate_nested(n_sub=40)
    # the outer factor is the one with fewer levels (g); subjects occur with several levels of it
    with pytest.raises(DaskFormulaError, match=r"'id' is not nested within 'g'.*crossed"):
        memoe.lmm("y ~ t + (1 | id) + (1 | g)", data=dd.from_pandas(df, npartitions=3))
    df["site"] = df["id"] % 5
    df.loc[df.index[:3], "site"] = 7  # three rows of subjects elsewhere in site 7: their levels span sites
    with pytest.raises(DaskFormulaError, match=r"'id' is not nested within 'site'"):
        memoe.lmm("y ~ t + (1 | id) + (1 | site)", data=dd.from_pandas(df, npartitions=3))


def test_dask_subjects_nested_in_sites(client):
    """No factor common to both terms: the one with fewer levels (site) is the outer factor."""
    df = simulate_nested(n_sub=60).assign(site=lambda d: d["id"] % 6)
    df["y"] += np.array([-1.0, 0.5, 1.2, -0.4, 0.1, 0.9])[df["site"]]
    formula = "y ~ t + x + (1 | id) + (1 | site)"
    fd = memoe.lmm(formula, data=dd.from_pandas(df, npartitions=3)).fit(reml=False, control=TIGHT)
    assert fd.design.group == "site"
    _compare(fd, memoe.lmm(formula, data=df).fit(reml=False, control=TIGHT))


def test_dask_glmm_nested_refused(client):
    df = simulate_nested(n_sub=40)
    df["yb"] = (df["y"] > df["y"].median()).astype(float)
    with pytest.raises(DaskFormulaError, match="not implemented yet"):
        memoe.glmm("yb ~ t + (1 | id/h)", data=dd.from_pandas(df, npartitions=3), family="binomial")


@pytest.mark.parametrize("formula", ["y ~ t + x + (1 | id/h)", "y ~ t + x + (t | id) + (1 | id:h)"])
def test_schur_pieces_dense_sparse_and_deviance(formula):
    """PLSProblem.schur_pieces on both exact paths gives the in-memory profiled deviance."""
    from memoe.core.linalg.sparse_schur import have_sparse_cholesky
    from memoe.lmm.deviance import profiled_deviance
    from memoe.lmm.objective import PLSProblem

    df = simulate_nested(n_sub=60).dropna()
    model = memoe.lmm(formula, data=df)
    d = model.design
    theta = d.theta_map.initial() * 0.8
    paths = ["dense"] + (["sparse"] if have_sparse_cholesky() else [])
    for path in paths:
        prob = PLSProblem(d.y, d.X, [b.factor.codes for b in d.blocks], [b.nlevels for b in d.blocks],
                          [b.Z for b in d.blocks], d.theta_map, schur=path)
        assert prob.solver == path
        logdet_Z, S = prob.schur_pieces(theta)
        c = np.linalg.cholesky(S)
        p = d.X.shape[1]
        for reml in (True, False):
            dev = profiled_deviance(logdet_Z, 2 * np.log(np.diag(c)[:p]).sum(), c[-1, -1] ** 2, float(len(d.y)), p,
                                    reml)
            assert dev == pytest.approx(model.problem.deviance(theta, reml), rel=1e-10)


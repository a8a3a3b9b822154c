"""MEMoE on Dask (memoe.dask.moe): the distributed ECM fit equals the in-memory fit, refusals, lazy outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.dask.moe import DaskMoEControl
from memoe.dask.result import DaskUnsupportedError
from memoe.moe.ecm import newton_finish
from memoe.moe.em import EMControl

dd = pytest.importorskip("dask.dataframe")

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
# a few passes only: for tests that need a result object or the starts, not the maximum
QUICK = DaskMoEControl(short_iter=3, em=EMControl(max_iter=2), newton_iter=0)


def _data(n_sub: int = 160, seed: int = 3) -> pd.DataFrame:
    """Two well-separated classes, rows shuffled, NaN rows in the response, a covariate and a gating covariate."""
    df, _ = memoe.simulate.memoe_data(n_sub, k=2, seed=seed)
    df = df.drop(columns="true_class").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.loc[[5, 50], "x"] = np.nan
    df.loc[[9], "y"] = np.nan
    df.loc[[20], "w1"] = np.nan  # one row of a subject: that row is dropped (as in memory)
    return df


def _single_subject_partitions(df: pd.DataFrame):
    s = df.sort_values("id", kind="stable")
    ids = s["id"].to_numpy()
    lo = ids.min()
    pieces = [s[ids == lo], s[(ids > lo) & (ids < 60)], s[(ids >= 60) & (ids < 120)], s[ids >= 120]]
    return dd.concat([dd.from_pandas(p, npartitions=1, sort=False) for p in pieces])


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def reference(data):
    """The in-memory fit, finished by Newton on the observed log-likelihood (its BFGS polish stops at a score of
    about 1e-3, too loose for a 1e-7 comparison of the estimates)."""
    m = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=data)
    fit = m.fit(n_starts=3, seed=1, progress=False)
    p, ll, _ = newton_finish(m.problem, fit.estimates)
    return fit, p, ll


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    # relative to each estimate's scale (1e-2 floor for estimates near 0: gating and correlation terms)
    return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-2)))


@pytest.mark.parametrize("layout", ["unaligned", "single_subject"])
def test_dask_memoe_equals_in_memory(client, data, reference, layout):
    fit, p_ref, ll_ref = reference
    ddf = dd.from_pandas(data, npartitions=5, sort=False) if layout == "unaligned" else _single_subject_partitions(data)
    m = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=ddf)
    assert type(m).__name__ == "DaskMEMoE"
    assert m.shuffled == (layout == "unaligned")
    dfit = m.fit(n_starts=2, seed=1, progress=False, control=DaskMoEControl(short_iter=5))
    assert dfit.converged
    assert dfit.nobs == fit.nobs and dfit.n_subjects == fit.n_subjects and dfit.n_dropped == fit.n_dropped
    assert abs(dfit.loglik - ll_ref) < 1e-8 * abs(ll_ref)
    st = m.structure
    assert _rel(st.pack(dfit.estimates), st.pack(p_ref)) < 1e-7
    # the in-memory fit itself (its own convergence ~1e-4 relative in the estimates)
    assert abs(dfit.loglik - fit.loglik) < 1e-8 * abs(fit.loglik) + 1e-7
    pd.testing.assert_index_equal(dfit.params.index, fit.params.index)
    np.testing.assert_allclose(dfit.params.to_numpy(), fit.params.to_numpy(), rtol=1e-3, atol=1e-3)
    # standard errors: the same central-difference information, reduced over partitions
    np.testing.assert_allclose(dfit.bse.to_numpy(), fit.bse.to_numpy(), rtol=1e-3)
    np.testing.assert_allclose(dfit.vcov("sandwich").to_numpy(), fit.vcov("sandwich").to_numpy(), rtol=5e-3,
                               atol=1e-8)
    post = dfit.posterior
    np.testing.assert_allclose(post.to_numpy(), fit.posterior.loc[post.index].to_numpy(), atol=1e-3)
    assert (dfit.classify() == fit.classify().loc[post.index]).mean() > 0.99
    assert np.isclose(dfit.classification_entropy, fit.classification_entropy, rtol=1e-3)
    re = dfit.ranef[2]["id"]
    np.testing.assert_allclose(re.to_numpy(), fit.ranef[2]["id"].loc[re.index].to_numpy(), rtol=1e-3, atol=1e-3)


def test_starts_do_not_depend_on_partitioning(client, data):
    """Hashed starts: the exploratory log-likelihoods of every start agree whatever the partitioning."""
    a = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=dd.from_pandas(data, npartitions=3, sort=False))
    b = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=_single_subject_partitions(data))
    fa = a.fit(n_starts=3, seed=7, progress=False, control=QUICK)
    fb = b.fit(n_starts=3, seed=7, progress=False, control=QUICK)
    np.testing.assert_allclose(fa.starts["short_loglik"], fb.starts["short_loglik"], rtol=1e-10)
    assert abs(fa.loglik - fb.loglik) < 1e-9 * abs(fa.loglik)
    fc = a.fit(n_starts=3, seed=8, progress=False, control=QUICK)
    assert not np.allclose(fa.starts["short_loglik"], fc.starts["short_loglik"], rtol=1e-10)


def test_explicit_start_and_lazy_outputs(client, data, reference, monkeypatch):
    import memoe.dask.moe_result as mr

    fit, _, ll_ref = reference
    ddf = dd.from_pandas(data, npartitions=4, sort=False)
    m = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=ddf)
    dfit2 = m.fit(n_starts=1, seed=0, start=fit.estimates, progress=False)
    assert "user" in set(dfit2.starts["strategy"])
    assert abs(dfit2.loglik - ll_ref) < 1e-8 * abs(ll_ref)
    monkeypatch.setattr(mr, "PANDAS_LEVELS", 10)
    post = dfit2.posterior
    assert hasattr(post, "npartitions")  # a Dask DataFrame above the size threshold
    got = post.compute().sort_index()
    np.testing.assert_allclose(got.to_numpy(), fit.posterior.loc[got.index].to_numpy(), atol=1e-3)
    pred = dfit2.fitted
    assert hasattr(pred, "npartitions")
    got = pred.compute()
    ref = fit.fitted
    both = got.dropna().index
    assert set(both) == set(ref.dropna().index)
    np.testing.assert_allclose(got.loc[both].to_numpy(), ref.loc[both].to_numpy(), rtol=1e-3, atol=1e-3)
    pop = dfit2.predict(kind="population").compute()
    assert np.isfinite(pop.loc[both]).all()
    # new data: the gate-weighted fixed part, lazily, as the in-memory prediction
    new = data.head(40).assign(id=-1 - np.arange(40))
    want = fit.predict(new, kind="population")
    got = dfit2.predict(dd.from_pandas(new, npartitions=2), kind="population")
    assert hasattr(got, "npartitions")
    got = got.compute()
    ok = want.dropna().index
    np.testing.assert_allclose(got.loc[ok].to_numpy(), want.loc[ok].to_numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dfit2.predict(new, kind="population").loc[ok], got.loc[ok], rtol=1e-12)
    with pytest.raises(DaskUnsupportedError, match="population"):
        dfit2.predict(dd.from_pandas(new, npartitions=2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"family": "binomial"}, "Gaussian experts only"),
        ({"laplace": True}, "Laplace-EM"),
        ({"residual": "ar1"}, "residual structures"),
        ({"random_cov": "proportional"}, "proportional"),
    ],
)
def test_refusals(client, data, kwargs, match):
    ddf = dd.from_pandas(data, npartitions=2, sort=False)
    with pytest.raises(memoe.errors.MemoeError, match=match):
        memoe.MEMoE(FORMULA, gating=GATING, k=2, data=ddf, **kwargs)


def test_refusals_of_data_and_results(client, data):
    bad = data.copy()
    bad.loc[bad["id"] == bad["id"].iloc[0], "w1"] = np.arange((bad["id"] == bad["id"].iloc[0]).sum())
    with pytest.raises(memoe.errors.DataError, match="constant within subject"):
        memoe.MEMoE(FORMULA, gating=GATING, k=2, data=dd.from_pandas(bad, npartitions=3, sort=False))
    with pytest.raises(DaskUnsupportedError, match="regression experts"):
        memoe.MoE("y ~ time + x", gating=GATING, k=2, data=dd.from_pandas(data, npartitions=2), group="id")
    with pytest.raises(memoe.errors.FormulaError, match=r"one grouping factor|grouping factors"):
        memoe.MEMoE("y ~ time + (1 | id) + (1 | w2)", gating=GATING, k=2, data=dd.from_pandas(data, npartitions=2))
    m = memoe.MEMoE(FORMULA, gating=GATING, k=2, data=dd.from_pandas(data, npartitions=2, sort=False))
    fit = m.fit(n_starts=1, seed=1, progress=False, control=QUICK)
    for call in (lambda: fit.save("x.memoe"), lambda: fit.augment(), lambda: fit.summary(), lambda: fit.resid):
        with pytest.raises(DaskUnsupportedError, match="in memory"):
            call()

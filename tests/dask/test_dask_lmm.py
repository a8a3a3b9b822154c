"""The Dask LMM equals the in-memory LMM (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.dask.result import DaskLmmResult, DaskUnsupportedError
from memoe.dask.spec import DaskFormulaError
from memoe.lmm.result import LmmResult

from ..tolerances import OptimumSlack
from .conftest import simulate, single_subject_partitions

dd = pytest.importorskip("dask.dataframe")

# both optimisers stop where theta moves less than this: the estimates then agree to rounding of the
# summation order (partition sums vs one pass), far below the 1e-7 the issue asks
TIGHT = {"xtol_abs": 1e-11, "ftol_abs": 1e-14}


def _compare(fd, fm, tol_est: float = 1e-7):
    assert isinstance(fd, DaskLmmResult) and isinstance(fd, LmmResult)
    assert abs(fd.loglik - fm.loglik) <= 1e-8 * max(1.0, abs(fm.loglik))
    np.testing.assert_allclose(fd.params.to_numpy(), fm.params.to_numpy(), rtol=0, atol=tol_est)
    # theta sits on a flat optimum: the deviance summed in another order (partition sums) differs by
    # rounding, ~1e-12 relative, which moves the minimiser by sqrt(2 delta (H^-1)_ii)
    dev = 2 * abs(fm.loglik)
    slack = OptimumSlack(fm.model.objective(fm.reml), fm.theta.to_numpy(), 1e-12 * dev,
                         lower=fm.design.theta_map.lower_bounds)
    np.testing.assert_array_less(np.abs(fd.theta.to_numpy() - fm.theta.to_numpy()),
                                 np.maximum(tol_est, slack.parameters()))
    # bse and sigma are smooth in theta: they may move by the slack the flat optimum allows theta
    def bse_sigma(theta):
        sol = fm.model.problem.solve(theta, fm.reml)
        return np.append(sol.sigma * np.sqrt(np.diag(sol.vcov_unscaled)), sol.sigma)

    ref = np.append(fm.bse.to_numpy(), fm.sigma)
    allowed = np.maximum(tol_est * np.abs(ref), slack.of(bse_sigma))
    np.testing.assert_array_less(np.abs(np.append(fd.bse.to_numpy(), fd.sigma) - ref), allowed)
    assert list(fd.params.index) == list(fm.params.index)
    assert (fd.nobs, fd.n_dropped) == (fm.nobs, fm.n_dropped)
    assert fd.ngroups.to_dict() == fm.ngroups.to_dict()


@pytest.mark.parametrize("formula", ["y ~ t + x + g + (t | id)", "y ~ t + x + (t || id)"])
@pytest.mark.parametrize("reml", [True, False])
def test_dask_lmm_equals_memory_unaligned(client, formula, reml):
    df = simulate()
    ddf = dd.from_pandas(df, npartitions=4)  # rows in random order: subjects span partitions
    model = memoe.lmm(formula, data=ddf)
    assert model.shuffled
    fd = model.fit(reml=reml, control=TIGHT)
    fm = memoe.lmm(formula, data=df).fit(reml=reml, control=TIGHT)
    _compare(fd, fm)
    re = fd.ranef["id"]
    np.testing.assert_allclose(re.to_numpy(), fm.ranef["id"].loc[re.index].to_numpy(), atol=1e-6)
    sd = fd.ranef_condsd["id"]
    np.testing.assert_allclose(sd.to_numpy(), fm.ranef_condsd["id"].loc[sd.index].to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_dask_lmm_single_subject_partition_no_shuffle(client):
    df = simulate(seed=3)
    ddf = single_subject_partitions(df)
    model = memoe.lmm("y ~ t + x + (t | id)", data=ddf)
    assert not model.shuffled  # already aligned: no shuffle
    fd = model.fit(control=TIGHT)
    fm = memoe.lmm("y ~ t + x + (t | id)", data=df).fit(control=TIGHT)
    _compare(fd, fm)


@pytest.mark.slow
def test_dask_lmm_lazy_outputs(client):
    df = simulate(seed=4)
    ddf = dd.from_pandas(df, npartitions=3)
    fd = memoe.lmm("y ~ t + x + (t | id)", data=ddf).fit()
    fm = memoe.lmm("y ~ t + x + (t | id)", data=df).fit()
    fitted = fd.fitted
    assert isinstance(fitted, dd.Series)
    f = fitted.compute().sort_index()
    np.testing.assert_allclose(f.to_numpy(), fm.fitted.to_numpy(), atol=1e-6)
    r = fd.residuals("marginal").compute().sort_index()
    np.testing.assert_allclose(r.to_numpy(), fm.residuals("marginal").to_numpy(), atol=1e-6)
    new = df.dropna().iloc[:50]
    p = fd.predict(dd.from_pandas(new, npartitions=2))
    assert isinstance(p, dd.Series)
    np.testing.assert_allclose(p.compute().sort_index().to_numpy(), fm.predict(new).to_numpy(), atol=1e-6)
    pop = fd.predict(new, re_form=None)
    np.testing.assert_allclose(pop.to_numpy(), fm.predict(new, re_form=None).to_numpy(), atol=1e-8)
    unseen = new.assign(id=10_000)
    with pytest.raises(memoe.errors.DataError, match="allow_new_levels"):
        fd.predict(unseen)
    np.testing.assert_allclose(fd.predict(unseen, allow_new_levels=True).to_numpy(), pop.to_numpy())
    with pytest.raises(DaskUnsupportedError, match="in memory"):
        fd.vcov(robust="CR2")
    assert "Scaled residuals" in str(fd.summary())
    np.testing.assert_allclose(fd.confint().to_numpy(), fm.confint().to_numpy(), atol=1e-5)
    with pytest.raises(DaskUnsupportedError, match="in memory"):
        fd.anova()
    ct = fd.coef_table()
    np.testing.assert_allclose(ct["std_error"].to_numpy(), fm.coef_table()["std_error"].to_numpy(), rtol=1e-6)


def test_dask_refuses_crossed_and_stateful(client):
    # sites by row, not by subject: crossed with id (a site per subject, id % 5, would be nested and fitted)
    df = simulate().assign(site=lambda d: d.index % 5)
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(DaskFormulaError, match="one grouping factor"):
        memoe.lmm("y ~ t + (1 | id) + (1 | site)", data=ddf)
    with pytest.raises(DaskFormulaError, match="stateful"):
        memoe.lmm("y ~ scale(t) + (1 | id)", data=ddf)
    with pytest.raises(memoe.errors.DataError, match="nothere"):
        memoe.lmm("y ~ nothere + (1 | id)", data=ddf)


def test_worker_killed_mid_fit_same_result(client):
    df = simulate(seed=5)
    ddf = dd.from_pandas(df, npartitions=4)
    fm = memoe.lmm("y ~ t + x + (t | id)", data=df).fit(control=TIGHT)
    model = memoe.lmm("y ~ t + x + (t | id)", data=ddf)
    problem = model.problem
    inner = problem.deviance
    calls = {"n": 0}
    killed = []

    def deviance(theta, reml):
        calls["n"] += 1
        if calls["n"] == 5:
            # one worker process dies: its persisted statistics are recomputed from the data
            worker = sorted(client.scheduler_info()["workers"])[0]
            client.run(os._exit, 1, workers=[worker], on_error="ignore")
            killed.append(worker)
        return inner(theta, reml)

    problem.deviance = deviance
    fd = model.fit(control=TIGHT)
    assert calls["n"] > 5 and killed
    _compare(fd, fm)


def test_in_memory_path_does_not_import_dask():
    code = (
        "import sys, memoe\n"
        "df = memoe.datasets.load('sleepstudy')\n"
        "memoe.lmm('Reaction ~ Days + (Days | Subject)', df).fit()\n"
        "memoe.glmm('y ~ Days + (1 | Subject)', df.assign(y=(df.Reaction > 300).astype(int)), 'binomial').fit()\n"
        "assert not [m for m in sys.modules if m == 'dask' or m.startswith('dask.')], 'dask imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_pandas_input_unchanged():
    df = simulate()
    assert type(memoe.lmm("y ~ t + (1 | id)", data=df)).__name__ == "LMM"
    assert isinstance(pd.DataFrame(), pd.DataFrame)


def test_dask_lmm_aliased_column_dropped_as_in_memory(client):
    df = simulate(seed=6).assign(x2=lambda d: 2.0 * d["x"])
    ddf = dd.from_pandas(df, npartitions=3)
    with pytest.warns(memoe.errors.RankDeficiencyWarning, match="x2"):
        fd = memoe.lmm("y ~ t + x + x2 + (1 | id)", data=ddf).fit(control=TIGHT)
    with pytest.warns(memoe.errors.RankDeficiencyWarning, match="x2"):
        fm = memoe.lmm("y ~ t + x + x2 + (1 | id)", data=df).fit(control=TIGHT)
    _compare(fd, fm)

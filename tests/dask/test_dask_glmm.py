"""The Dask binomial / Poisson GLMM equals the in-memory GLMM (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.dask.glmm import DaskGlmmResult
from memoe.dask.result import DaskUnsupportedError
from memoe.dask.spec import DaskFormulaError
from memoe.glmm.result import GlmmResult

from ..tolerances import OptimumSlack
from .conftest import simulate, single_subject_partitions

dd = pytest.importorskip("dask.dataframe")

TIGHT = {"xtol_abs": 1e-10, "ftol_abs": 1e-14}


def _compare(fd, fm):
    assert isinstance(fd, DaskGlmmResult) and isinstance(fd, GlmmResult)
    assert abs(fd.loglik - fm.loglik) <= 1e-8 * max(1.0, abs(fm.loglik))
    # the Dask fit starts the Laplace stage from the GLM (lme4's first stage couples all subjects through
    # beta), so both optimisers stop at the same minimum from different paths: the estimates agree within
    # the slack of a deviance known to PIRLS's tolerance (U_TOL = 1e-10 on the modes -> ~1e-10 relative)
    x_m = np.concatenate([fm.theta.to_numpy(), fm.params.to_numpy()])
    x_d = np.concatenate([fd.theta.to_numpy(), fd.params.to_numpy()])
    k = len(fm.theta)
    lower = np.concatenate([fm.design.theta_map.lower_bounds, np.full(len(fm.params), -np.inf)])
    slack = OptimumSlack(fm.model.objective(u0=fm.state.pirls.u), x_m, 1e-10 * 2 * abs(fm.loglik), lower=lower)
    tol = np.maximum(1e-7, slack.parameters())
    # a relative factor at its lower bound 0 enters the likelihood through its square, so a deviance known
    # to ~1e-10 relative pins it only to about sqrt(1e-10 |loglik|) / curvature: allow 1e-6 there
    at_bound = (lower == 0) & (np.minimum(np.abs(x_m), np.abs(x_d)) < 1e-6)
    tol[at_bound] = np.maximum(tol[at_bound], 1e-6)
    np.testing.assert_array_less(np.abs(x_d - x_m), tol)
    np.testing.assert_allclose(fd.bse.to_numpy(), fm.bse.to_numpy(), rtol=1e-3)  # finite-difference Hessians
    assert (fd.nobs, fd.n_dropped) == (fm.nobs, fm.n_dropped)
    assert k == fd.design.theta_map.size


@pytest.mark.slow
@pytest.mark.parametrize(("family", "formula"), [("binomial", "y ~ t + x + g + (1 | id)"),
                                                  ("poisson", "y ~ t + x + (t | id)")])
def test_dask_glmm_equals_memory(client, family, formula):
    df = simulate(n_sub=100, seed=7, family=family)
    ddf = dd.from_pandas(df, npartitions=3)
    model = memoe.glmm(formula, data=ddf, family=family)
    assert model.shuffled
    fd = model.fit(control=TIGHT)
    fm = memoe.glmm(formula, data=df, family=family).fit(control=TIGHT)
    _compare(fd, fm)
    re = fd.ranef["id"]
    np.testing.assert_allclose(re.to_numpy(), fm.ranef["id"].loc[re.index].to_numpy(), atol=1e-4)
    r = fd.residuals("pearson").compute().sort_index()
    np.testing.assert_allclose(r.to_numpy(), fm.residuals("pearson").dropna().to_numpy(), atol=1e-4)
    assert fd.deviance == pytest.approx(fm.deviance, rel=1e-5)
    new = df.dropna().iloc[:40]
    p = fd.predict(dd.from_pandas(new, npartitions=2))
    assert isinstance(p, dd.Series)
    np.testing.assert_allclose(p.compute().sort_index().to_numpy(), fm.predict(new).to_numpy(), rtol=1e-4)


@pytest.mark.slow
def test_dask_glmm_single_subject_partition(client):
    df = simulate(n_sub=100, seed=8, family="poisson")
    model = memoe.glmm("y ~ t + x + (1 | id)", data=single_subject_partitions(df), family="poisson")
    assert not model.shuffled
    _compare(model.fit(control=TIGHT), memoe.glmm("y ~ t + x + (1 | id)", data=df, family="poisson").fit(control=TIGHT))


def test_dask_glmm_refusals(client):
    df = simulate(n_sub=40, family="poisson")
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(DaskFormulaError, match="binomial"):
        memoe.glmm("y ~ t + (1 | id)", data=ddf, family="Gamma")
    with pytest.raises(DaskFormulaError, match="one grouping factor"):
        memoe.glmm("y ~ t + (1 | id) + (1 | g)", data=ddf, family="poisson")
    m = memoe.glmm("y ~ t + (1 | id)", data=ddf, family="poisson")
    with pytest.raises(DaskUnsupportedError, match="nAGQ"):
        m.fit(nAGQ=5)

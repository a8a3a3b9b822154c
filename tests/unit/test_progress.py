"""Progress bars: shown with progress=True, silent with progress=False and by default when stderr is not a terminal."""

from __future__ import annotations

import warnings

import pytest

import memoe
from memoe.inference.bootstrap import bootstrap
from memoe.inference.profile import profile_confint


@pytest.fixture(scope="module")
def sim():
    df, _ = memoe.simulate.memoe_data(40, k=2, seed=4)
    return df


@pytest.fixture(scope="module")
def dyestuff_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.lmm("Yield ~ 1 + (1 | Batch)", memoe.datasets.load("Dyestuff")).fit(reml=False)


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_memoe_fit_bar(sim, capsys, progress, shown):
    model = memoe.MEMoE("y ~ time + (1 | id)", k=2, data=sim)
    _quiet(lambda: model.fit(n_starts=2, seed=1, progress=progress, se=False))
    err = capsys.readouterr().err
    # pytest's captured stderr is not a terminal, so the default (None) stays silent as in CI
    assert ("EM starts" in err) is shown
    assert ("EM to convergence" in err) is shown


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_select_k_bar(sim, capsys, progress, shown):
    _quiet(lambda: memoe.select_k("y ~ time + (1 | id)", None, sim, ks=[1, 2], n_starts=1, seed=1, progress=progress))
    err = capsys.readouterr().err
    assert ("select_k" in err) is shown
    assert ("EM starts" in err) is shown


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_bootstrap_bar(dyestuff_fit, capsys, progress, shown):
    bootstrap(dyestuff_fit, nsim=3, seed=1, n_jobs=1, progress=progress)
    assert ("bootstrap" in capsys.readouterr().err) is shown


@pytest.mark.parametrize(("progress", "shown"), [(True, True), (False, False), (None, False)])
def test_profile_bar(dyestuff_fit, capsys, progress, shown):
    ci = profile_confint(dyestuff_fit, parm=["sigma"], progress=progress)
    assert list(ci.index) == ["sigma"]
    assert ("profile" in capsys.readouterr().err) is shown


def test_progress_must_be_bool_or_none(sim, dyestuff_fit):
    from memoe.errors import ArgumentTypeError

    with pytest.raises(ArgumentTypeError, match="progress must be True or False"):
        bootstrap(dyestuff_fit, nsim=2, progress="on")
    with pytest.raises(ArgumentTypeError, match="progress must be True or False"):
        profile_confint(dyestuff_fit, progress=1)
    with pytest.raises(ArgumentTypeError, match="progress must be True or False"):
        memoe.MEMoE("y ~ time + (1 | id)", k=2, data=sim).fit(progress="yes")


def test_bootstrap_and_profile_arguments(dyestuff_fit):
    from memoe.errors import ArgumentError, ArgumentTypeError, MemoeError

    for kw, exc, match in [
        ({"nsim": 0}, ArgumentError, r"nsim must be an integer >= 1, got 0"),
        ({"nsim": 2.5}, ArgumentTypeError, r"nsim must be an integer"),
        ({"seed": "abc"}, ArgumentTypeError, r"seed must be"),
        ({"n_jobs": 0}, ArgumentError, r"n_jobs must be an integer >= 1"),
        ({"chunksize": -1}, ArgumentError, r"chunksize must be an integer >= 1"),
    ]:
        with pytest.raises(exc, match=match):
            bootstrap(dyestuff_fit, progress=False, **kw)
    with pytest.raises(ArgumentTypeError, match="bootstrap takes a linear mixed model fit"):
        bootstrap("fit", nsim=2)
    with pytest.raises(ArgumentError, match=r"level must be in \(0, 1\) such as 0.95, got 95"):
        profile_confint(dyestuff_fit, level=95)
    with pytest.raises(MemoeError, match="unknown parameter 'sd'"):
        profile_confint(dyestuff_fit, parm=["sd"])
    with pytest.raises(ArgumentError, match=r"parameter position 7 out of range"):
        dyestuff_fit.confint(parm=[7])
    with pytest.raises(ArgumentTypeError, match=r"unexpected arguments for method 'wald': nsim"):
        dyestuff_fit.confint(nsim=10)

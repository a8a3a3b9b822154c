"""Every memoe warning points at the user's line, however deep inside memoe it is raised.

One warning per family and stage (LMM singular fit, rank deficiency in the design, GLMM separation,
an empty MEMoE expert, GEE row order, non-finite predictors in ``predict``): each is raised several
frames below the public call and must carry ``stacklevel = memoe.errors.caller_stacklevel()`` so that
``warning.filename`` is this file, the caller's, not a memoe source file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.core.design.newdata import NonFinitePredictorWarning
from memoe.errors import (
    EmptyExpertWarning,
    MemoeWarning,
    RankDeficiencyWarning,
    SeparationWarning,
    SingularFitWarning,
    caller_stacklevel,
)
from memoe.gee import GEEOrderWarning, gee
from memoe.moe.em import EMControl
from memoe.moe.multistart import MultiStartControl


def _memoe_records(rec: list[warnings.WarningMessage], category: type[Warning]) -> list[warnings.WarningMessage]:
    found = [r for r in rec if issubclass(r.category, category)]
    assert found, f"no {category.__name__} was raised; got {[r.category.__name__ for r in rec]}"
    return found


def _assert_here(rec: list[warnings.WarningMessage], category: type[Warning]) -> None:
    """The expected warning was raised and every memoe warning points at this file."""
    _memoe_records(rec, category)
    wrong = [(r.category.__name__, r.filename, r.lineno) for r in rec if issubclass(r.category, MemoeWarning)
             and r.filename != __file__]
    assert not wrong, f"memoe warnings attributed to memoe's own source instead of the caller: {wrong}"


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return memoe.datasets.load("sleepstudy")


def test_caller_stacklevel_outside_memoe_is_one():
    assert caller_stacklevel() == 1


def test_lmm_singular_fit(sleep):
    # group means equal to the grand mean exactly: the between-subject variance estimate is 0 (boundary)
    d = sleep.assign(Reaction=sleep.Reaction - sleep.groupby("Subject").Reaction.transform("mean"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fit = memoe.lmm("Reaction ~ 1 + (1 | Subject)", d).fit()
    assert fit.singular
    _assert_here(rec, SingularFitWarning)


def test_rank_deficient_fixed_effects(sleep):
    d = sleep.assign(Days2=2.0 * sleep.Days)  # an exact copy of Days up to scale: one column is dropped
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        memoe.lmm("Reaction ~ Days + Days2 + (1 | Subject)", d).fit()
    _assert_here(rec, RankDeficiencyWarning)


def test_glmm_separation():
    rng = np.random.default_rng(11)
    n = 240
    d = pd.DataFrame({"x": rng.normal(size=n), "g": np.repeat(np.arange(24), 10)})
    d["y"] = (d.x > 0).astype(float)  # x separates y completely
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        memoe.glmm("y ~ x + (1 | g)", d, "binomial").fit()
    _assert_here(rec, SeparationWarning)


def test_memoe_empty_expert():
    data = memoe.datasets.load("memoe_sim2")
    model = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=data)
    control = MultiStartControl(em=EMControl(min_mass=10_000))  # no expert can hold that much mass
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model.fit(n_starts=2, seed=1, control=control, progress=False, se=False)
    _assert_here(rec, EmptyExpertWarning)


def test_gee_order():
    df = memoe.datasets.load("Orthodont")
    rng = np.random.default_rng(0)
    key = np.sort(rng.permutation(len(df)).reshape(27, 4), axis=1).ravel()  # interleave subjects, rows in order
    shuffled = df.iloc[np.argsort(key)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        gee("distance ~ age * Sex", shuffled, group="Subject", corstr="ar1").fit()
    _assert_here(rec, GEEOrderWarning)


def test_predict_non_finite(sleep):
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", sleep).fit()
    new = sleep.head(4).assign(Days=[0.0, np.inf, 2.0, -np.inf])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pred = fit.predict(new)
    assert np.isnan(pred.iloc[1]) and np.isnan(pred.iloc[3])
    _assert_here(rec, NonFinitePredictorWarning)

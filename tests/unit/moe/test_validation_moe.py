"""Bad input to MEMoE / MoE / select_k is refused by a MemoeError that names the argument; degenerate data are named."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError, DataError, EmptyExpertWarning, FormulaError, MemoeError
from memoe.moe.em import EMControl
from memoe.moe.experts import MStepControl
from memoe.moe.model import DegenerateExpertWarning
from memoe.moe.multistart import MultiStartControl

F = "y ~ time + x + (time | id)"
G = "~ w1 + w2"


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    df, _ = memoe.simulate.memoe_data(60, k=2, seed=11)
    return df


@pytest.fixture(scope="module")
def model(small):
    return memoe.MEMoE(F, gating=G, k=2, data=small)


def _refuses(exc, match, fn, *args, frame=None, **kw):
    """fn(*args, **kw) raises exc matching ``match`` and leaves ``frame`` (a DataFrame) untouched."""
    before = None if frame is None else frame.copy(deep=True)
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kw)
    assert isinstance(info.value, MemoeError)
    if frame is not None:
        pd.testing.assert_frame_equal(frame, before)
    return info.value


# -- constructor arguments ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "exc", "match"),
    [
        (None, ArgumentTypeError, r"^k must be an integer >= 1, got None"),
        (2.5, ArgumentTypeError, r"^k must be an integer.*2\.5"),
        ("2", ArgumentTypeError, r"^k must be an integer.*'2'"),
        (True, ArgumentTypeError, r"^k must be an integer.*True"),
        (0, ArgumentError, r"^k must be an integer >= 1, got 0"),
        (-3, ArgumentError, r"^k must be an integer >= 1, got -3"),
    ],
)
def test_bad_k(small, k, exc, match):
    _refuses(exc, match, memoe.MEMoE, F, gating=G, k=k, data=small, frame=small)


def test_numpy_integer_k_is_accepted(small):
    assert memoe.MEMoE(F, gating=G, k=np.int64(2), data=small).k == 2


def test_k_not_smaller_than_subjects(small):
    sub = small[small["id"].isin(small["id"].unique()[:5])]
    err = _refuses(ArgumentError, r"k = 5 experts for 5 subjects", memoe.MEMoE, F, gating=G, k=5, data=sub, frame=sub)
    assert "smaller than the number of subjects" in str(err)
    _refuses(ArgumentError, r"k = 7 experts for 5 subjects", memoe.MEMoE, F, k=7, data=sub)


def test_k_needs_enough_subjects_per_expert(small):
    sub = small[small["id"].isin(small["id"].unique()[:10])]
    # p = 3 fixed effects: 4 experts need 4 * 3 = 12 subjects
    _refuses(ArgumentError, r"k \* max\(2, p\) = 4 \* 3 = 12 subjects.*have 10", memoe.MEMoE, F, k=4, data=sub)


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"random_cov": "diag"}, ArgumentError, r"random_cov must be one of \['class', 'common', 'proportional'\]"),
        ({"sigma": "shared"}, ArgumentError, r"sigma must be one of \['class', 'common'\]"),
        ({"sigma": 1.0}, ArgumentError, r"sigma must be one of"),
        ({"order": "mass"}, ArgumentError, r"order must be one of"),
        ({"mstep": {"maxeval": 10}}, ArgumentTypeError, r"mstep must be a .*MStepControl.*dict"),
        ({"mixture": 3}, ArgumentTypeError, r"mixture must be a string"),
        ({"group": 1}, ArgumentTypeError, r"group must be a string"),
    ],
)
def test_bad_options(small, kw, exc, match):
    _refuses(exc, match, memoe.MEMoE, F, gating=G, k=2, data=small, frame=small, **kw)


def test_bad_formula_gating_and_data(small):
    _refuses(ArgumentTypeError, r"formula must be a string", memoe.MEMoE, None, gating=G, data=small)
    _refuses(ArgumentError, r"formula must be a non-empty", memoe.MEMoE, "  ", gating=G, data=small)
    _refuses(ArgumentTypeError, r"gating must be a string such as '~ w1 \+ w2'", memoe.MEMoE, F, gating=["w1"],
             data=small)
    _refuses(FormulaError, r"one-sided", memoe.MEMoE, F, gating="y ~ w1", data=small, frame=small)
    _refuses(DataError, r"\['w9'\]", memoe.MEMoE, F, gating="~ w9", data=small, frame=small)
    _refuses(DataError, r"'x' must be constant within subject", memoe.MEMoE, F, gating="~ x", data=small,
             frame=small)
    _refuses(ArgumentTypeError, r"data must be given", memoe.MEMoE, F, gating=G)
    _refuses(ArgumentTypeError, r"data must be a table .*, got dict", memoe.MEMoE, F, data=small.to_dict())


def test_moe_requires_group_string(small):
    _refuses(ArgumentTypeError, r"group must be a string", memoe.MoE, "y ~ time + x", gating=G, data=small, group=None)


# -- degenerate responses -------------------------------------------------------------------
def test_constant_response_is_refused(small):
    df = small.assign(y=3.0)
    _refuses(DataError, r"response 'y' is constant", memoe.MEMoE, F, gating=G, data=df, frame=df)
    _refuses(DataError, r"response 'y' is constant", memoe.MoE, "y ~ time", data=df, group="id")


def test_response_reproduced_by_random_effects_is_refused(small):
    # constant within every subject: a random intercept per subject fits it exactly (sigma -> 0)
    df = small.assign(y=small.groupby("id")["w1"].transform("first") * 10.0)
    _refuses(DataError, r"'y' is reproduced exactly by each subject's random effects.*'id'", memoe.MEMoE,
             "y ~ time + (1 | id)", data=df, frame=df)
    # a regression expert has no random effects: constant within subject is then a legitimate response
    memoe.MoE("y ~ time", k=2, data=df, group="id")


def test_expert_collapsing_on_exact_subjects_is_flagged():
    """8 subjects lie exactly on a line; the second expert takes them and its sigma would go to 0."""
    df, _ = memoe.simulate.memoe_data(80, k=1, seed=2)
    exact = df["id"].isin(df["id"].unique()[:8])
    df.loc[exact, "y"] = 30 + 2.0 * df.loc[exact, "time"]
    model = memoe.MEMoE("y ~ time + (time | id)", k=2, data=df)
    with pytest.warns(DegenerateExpertWarning, match=r"expert 2 \(mass 8 subjects\): residual SD at the floor") as rec:
        fit = model.fit(n_starts=4, seed=1, progress=False, se=False)
    assert fit.degenerate_experts == [2]
    assert np.isfinite(fit.loglik)
    assert fit.estimates.sigma[1] >= model.problem.expert.sigma_floor
    # the warning points at this file, not into memoe
    assert any(r.filename == __file__ for r in rec)


# -- fit() arguments ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"n_starts": 2.5}, ArgumentTypeError, r"^n_starts must be an integer >= 1, got 2\.5"),
        ({"n_starts": 0}, ArgumentError, r"^n_starts must be an integer >= 1, got 0"),
        ({"n_starts": -1}, ArgumentError, r"^n_starts must be an integer >= 1, got -1"),
        ({"n_starts": None}, ArgumentTypeError, r"^n_starts must be"),
        ({"seed": "abc"}, ArgumentTypeError, r"^seed must be None, a non-negative integer.*'abc'"),
        ({"seed": -5}, ArgumentError, r"^seed must be a non-negative integer, got -5"),
        ({"seed": 1.5}, ArgumentTypeError, r"^seed must be"),
        ({"progress": "yes"}, ArgumentTypeError, r"^progress must be True or False"),
        ({"se": 1}, ArgumentTypeError, r"^se must be True or False"),
        ({"tol": -1e-3}, ArgumentError, r"^tol must be a positive finite number"),
        ({"tol": "small"}, ArgumentTypeError, r"^tol must be a positive number"),
        ({"maxiter": 0}, ArgumentError, r"^maxiter must be an integer >= 1, got 0"),
        ({"maxiter": 10.5}, ArgumentTypeError, r"^maxiter must be an integer"),
        ({"control": {"n_polish": 2}}, ArgumentTypeError, r"^control must be a .*MultiStartControl"),
        ({"start": np.zeros(3)}, ArgumentTypeError, r"^start must be a .*MoEParams"),
        ({"previous": "fit"}, ArgumentTypeError, r"^previous must be a MEMoE fit"),
    ],
)
def test_bad_fit_arguments(model, small, kw, exc, match):
    _refuses(exc, match, model.fit, frame=small, **kw)


def test_start_of_the_wrong_shape(model):
    from memoe.moe.params import MoEParams

    bad = MoEParams(gamma=np.zeros((3, 3)), beta=np.zeros((3, 3)), L=np.zeros((3, 2, 2)), sigma=np.ones(3))
    _refuses(ArgumentError, r"start.gamma has shape \(3, 3\).*needs \(2, 3\)", model.fit, start=bad)


def test_generator_and_seedsequence_seeds_are_accepted(small):
    m = memoe.MEMoE("y ~ time + (1 | id)", k=1, data=small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = m.fit(n_starts=1, seed=np.random.default_rng(3), progress=False, se=False)
        b = m.fit(n_starts=1, seed=np.random.SeedSequence(3), progress=False, se=False)
    assert np.isfinite(a.loglik) and a.loglik == pytest.approx(b.loglik, abs=1e-8)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: EMControl(max_iter=0), r"EMControl.max_iter must be an integer >= 1"),
        (lambda: EMControl(tol=-1.0), r"EMControl.tol must be a non-negative number"),
        (lambda: EMControl(min_mass=float("nan")), r"EMControl.min_mass"),
        (lambda: MStepControl(maxeval=2.5), r"MStepControl.maxeval must be an integer"),
        (lambda: MStepControl(ftol_abs=-1), r"MStepControl.ftol_abs"),
        (lambda: MultiStartControl(n_polish=0), r"MultiStartControl.n_polish must be an integer >= 1"),
        (lambda: MultiStartControl(same_partition=1.5), r"MultiStartControl.same_partition must be in \(0, 1\]"),
        (lambda: MultiStartControl(em="tight"), r"MultiStartControl.em must be an EMControl"),
    ],
)
def test_bad_control_settings(factory, match):
    _refuses((ArgumentError, ArgumentTypeError), match, factory)


def test_tol_and_maxiter_reach_the_em(small):
    m = memoe.MEMoE("y ~ time + (1 | id)", k=2, data=small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = m.fit(n_starts=1, seed=1, maxiter=1, progress=False, se=False,
                    control=MultiStartControl(polish=False, short_iter=1))
    # one exploratory iteration plus at most one more in the run to convergence
    assert fit.n_iter <= 2


# -- empty experts --------------------------------------------------------------------------
def test_empty_expert_warning_names_expert_and_mass(model):
    ctl = MultiStartControl(em=EMControl(min_mass=10_000))
    with pytest.warns(EmptyExpertWarning, match=r"expert \d \(mass [0-9.e+]+\) of 60 subjects") as rec:
        fit = model.fit(n_starts=1, seed=1, control=ctl, progress=False, se=False)
    assert fit.empty_experts
    assert any(r.filename == __file__ for r in rec)


# -- select_k -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"ks": "12"}, ArgumentTypeError, r"^ks must be an iterable of integers"),
        ({"ks": []}, ArgumentError, r"^ks must contain at least one integer"),
        ({"ks": [1, 2.5]}, ArgumentTypeError, r"^each entry of ks must be an integer"),
        ({"ks": [0, 1]}, ArgumentError, r"^each entry of ks must be an integer >= 1, got 0"),
        ({"ks": [1, 2, 2]}, ArgumentError, r"^ks has repeated value\(s\) \[2\]"),
        ({"ks": [1, 60]}, ArgumentError, r"k = 60 experts for 60 subjects"),
        ({"n_starts": 0}, ArgumentError, r"^n_starts must be"),
        ({"seed": "abc"}, ArgumentTypeError, r"^seed must be"),
        ({"return_fits": "yes"}, ArgumentTypeError, r"^return_fits must be True or False"),
        ({"k": 2}, ArgumentError, r"ks=\.\.\., not k="),
        ({"n_start": 3}, ArgumentTypeError, r"unknown option\(s\) \['n_start'\]"),
    ],
)
def test_select_k_bad_arguments(small, kw, exc, match):
    _refuses(exc, match, memoe.select_k, F, G, small, frame=small, **kw)


def test_select_k_single_int_and_range(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = memoe.select_k("y ~ time + (1 | id)", None, small, ks=1, n_starts=1, seed=1, progress=False)
    assert list(t.index) == [1]

"""memoe.simulation_study: the paper's simulation loop and its summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.errors import ArgumentError, ArgumentTypeError
from memoe.moe.simulation import SCENARIOS, Scenario, truth_params


@pytest.fixture(scope="module")
def study():
    return memoe.simulation_study({"n_subjects": 120, "name": "small"}, reps=3, n_starts=2, seed=3, n_jobs=1)


def test_tables_have_every_model_and_the_comparable_parameters(study):
    assert set(study.fits["model"]) == {"memoe", "lmm", "moe", "lclmm"} and len(study.fits) == 12
    assert not study.fits["failed"].any()
    p = study.parameters
    models = set(p.index.get_level_values("model"))
    assert models == {"memoe", "moe", "lclmm"}  # the LMM has no true counterpart
    memoe_pars = set(p.loc["memoe"].index)
    assert memoe_pars == set(truth_params(Scenario(n_subjects=120).simulate(0)[1]).index)
    assert {q.split("[")[0] for q in p.loc["moe"].index} == {"fixed", "gating"}
    assert {q.split("[")[0] for q in p.loc["lclmm"].index} == {"fixed", "sd", "corr", "sigma"}
    assert list(study.bic_share.columns) == ["mean_bic", "lowest_bic_share"]
    assert study.bic_share["lowest_bic_share"].sum() == pytest.approx(1.0)
    text = study.summary()
    assert "scenario 'small'" in text and "coverage_sandwich" in text and "lowest_bic_share" in text


def test_summaries_are_the_definitions_applied_to_the_raw_records(study):
    e = study.estimates
    sel = e[(e["model"] == "memoe") & (e["parameter"] == "fixed[1]:time")]
    err = sel["estimate"] - sel["truth"]
    row = study.parameters.loc[("memoe", "fixed[1]:time")]
    assert row["bias"] == pytest.approx(err.mean(), rel=1e-12)
    assert row["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-12)
    assert row["coverage_sandwich"] == pytest.approx(np.mean(np.abs(err) <= 1.959963984540054 * sel["se_sandwich"]))
    assert row["truth"] == 1.0 and row["n"] == 3
    f = study.fits
    wide = f.pivot(index="rep", columns="model", values="bic")
    share = wide.idxmin(axis=1).value_counts(normalize=True)
    for m, v in share.items():
        assert study.bic_share.at[m, "lowest_bic_share"] == pytest.approx(v)
    lmm_acc = f.loc[f["model"] == "lmm", "accuracy"]
    assert (lmm_acc >= 0.5).all()  # the majority share


def test_memoe_recovers_the_truth_better_than_its_competitors(study):
    cls = study.classification
    # K = 2 scenario of memoe_sim2: MEMoE ~0.93 accuracy (benchmarks/README.md), MoE ~0.56
    assert cls.at["memoe", "accuracy"] > 0.85 and cls.at["memoe", "accuracy"] > cls.at["moe", "accuracy"] + 0.1
    assert study.bic_share.at["memoe", "mean_bic"] < study.bic_share.at["lmm", "mean_bic"]
    p = study.parameters.loc["memoe"]
    # estimates within 4 (sandwich) SEs of the truth on average over 3 replicates
    z = p["bias"].abs() / (p["mean_se_sandwich"] / np.sqrt(3))
    assert (z < 4.5).mean() > 0.9


def test_deterministic_regardless_of_n_jobs():
    kw = {"reps": 2, "models": ("memoe", "lmm"), "n_starts": 1, "se": False, "seed": 9}
    a = memoe.simulation_study({"n_subjects": 80}, n_jobs=1, **kw)
    b = memoe.simulation_study({"n_subjects": 80}, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(a.estimates, b.estimates)
    pd.testing.assert_frame_equal(a.fits.drop(columns="seconds"), b.fits.drop(columns="seconds"))
    assert a.estimates["se_model"].isna().all()  # se=False


def test_scenarios_and_refusals():
    assert set(SCENARIOS) == {"normal", "t3", "k3"}
    assert memoe.Scenario().k == 2
    with pytest.raises(ArgumentError, match="unknown scenario"):
        memoe.simulation_study("nope", reps=1)
    with pytest.raises(ArgumentError, match="unknown key"):
        memoe.simulation_study({"n_subject": 10}, reps=1)
    with pytest.raises(ArgumentTypeError, match="scenario must be"):
        memoe.simulation_study(3, reps=1)
    with pytest.raises(ArgumentError, match="no default parameters"):
        memoe.simulation_study({"k": 5}, reps=1)
    with pytest.raises(ArgumentError, match="parameter shapes"):
        memoe.simulation_study({"beta": [[1, 2]]}, reps=1)
    with pytest.raises(ArgumentError, match="models must be"):
        memoe.simulation_study(None, reps=1, models=("memoe", "glmm"))
    with pytest.raises(ArgumentError, match="reps"):
        memoe.simulation_study(None, reps=0)
    with pytest.raises(ArgumentError, match="level"):
        memoe.simulation_study(None, reps=1, level=95)

"""memoe.compare of an LMM (K = 1), K = 2 and K = 3 mixtures end to end, and the bundled pbcseq data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import memoe
from memoe.inference.compare_mixtures import MixtureComparison

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"


@pytest.fixture(scope="module")
def k3_fit(sim2, sim2_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.MEMoE(FORMULA, gating=GATING, k=3, data=sim2).fit(n_starts=2, seed=1, progress=False,
                                                                      previous=sim2_fit, se=False)


@pytest.mark.slow
def test_compare_lmm_k2_k3(sim2, sim2_fit, k3_fit):
    lmm = memoe.lmm(FORMULA, sim2).fit(reml=False)
    tab = memoe.compare(k3_fit, lmm, sim2_fit, names=["k3", "lmm", "k2"])
    assert isinstance(tab, MixtureComparison)
    assert list(tab.index) == ["lmm", "k2", "k3"] and tab["k"].tolist() == [1, 2, 3]
    assert "Pr(>Chisq)" not in tab.columns and "p_value" not in tab.columns
    n = 300  # subjects: BIC = -2 logLik + npar log(N) for every row
    for name, fit in (("lmm", lmm), ("k2", sim2_fit), ("k3", k3_fit)):
        assert tab.at[name, "logLik"] == pytest.approx(fit.loglik, rel=1e-12)
        assert tab.at[name, "BIC"] == pytest.approx(-2 * fit.loglik + tab.at[name, "npar"] * math.log(n), rel=1e-12)
    assert tab.at["k2", "BIC"] == pytest.approx(sim2_fit.bic, rel=1e-12)
    assert tab.at["k2", "ICL"] == pytest.approx(sim2_fit.icl, rel=1e-12)
    assert tab.at["lmm", "ICL"] == tab.at["lmm", "BIC"] and tab.at["lmm", "entropy"] == 1.0
    # npar: 7 per LMM expert + 3 gating coefficients per extra expert
    assert tab["npar"].tolist() == [7, 17, 27]
    text = str(tab)
    assert "lowest BIC: k2" in text and "non-regular" in text and "memoe.bootstrap_lrt" in text
    assert text.splitlines()[1].startswith("lmm: LMM (k = 1)")


def test_pbcseq_is_bundled_with_types_and_provenance():
    pbc = memoe.datasets.load("pbcseq")
    assert "pbcseq" in memoe.datasets.names()
    assert pbc.shape == (1945, 13) and pbc["id"].nunique() == 312
    assert list(pbc["sex"].cat.categories) == ["m", "f"]
    assert list(pbc["trt"].cat.categories) == ["placebo", "D-penicillamine"]
    assert list(pbc["status"].cat.categories) == ["censored", "transplant", "dead"]
    assert pbc["platelet"].isna().sum() == 73 and pbc["years"].min() == 0.0
    np.testing.assert_allclose(pbc["logbili"], np.log(pbc["bili"]), rtol=1e-13)
    # baseline covariates are constant within patient (usable in a gate)
    assert (pbc.groupby("id")[["age", "sex", "trt"]].nunique() == 1).all().all()
    assert "survival::pbcseq" in memoe.datasets.describe("pbcseq")["source"]
    assert isinstance(pbc, pd.DataFrame) and pbc.attrs["name"] == "pbcseq"

"""Shared data and fits of the MEMoE unit tests (fitted once per session)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import memoe

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"


@pytest.fixture(scope="session")
def sim2() -> pd.DataFrame:
    return memoe.datasets.load("memoe_sim2")


@pytest.fixture(scope="session")
def sim2_fit(sim2):
    """K = 2 MEMoE on the reference data (a few starts suffice: every start reaches the same optimum)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2).fit(n_starts=4, seed=1, progress=False)


@pytest.fixture(scope="session")
def small3():
    """A small K = 3 data set from the simulator, with its truth."""
    return memoe.simulate.memoe_data(240, k=3, visits=(4, 7), seed=5)

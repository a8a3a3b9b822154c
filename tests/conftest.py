"""Shared fixtures: R reference cases (tests/data, copied from ../shared/reference) and a cache of fits."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"

# case -> (csv, formula, reml)
LMER_CASES = {
    "sleepstudy_corr_slope_reml": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)", True),
    "sleepstudy_corr_slope_ml": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)", False),
    "sleepstudy_uncorr_slope_reml": ("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)", True),
    "sleepstudy_uncorr_slope_ml": ("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)", False),
    "sleepstudy_intercept_reml": ("sleepstudy.csv", "Reaction ~ Days + (1 | Subject)", True),
    "sleepstudy_intercept_ml": ("sleepstudy.csv", "Reaction ~ Days + (1 | Subject)", False),
    "dyestuff_reml": ("Dyestuff.csv", "Yield ~ 1 + (1 | Batch)", True),
    "dyestuff_ml": ("Dyestuff.csv", "Yield ~ 1 + (1 | Batch)", False),
    "dyestuff2_reml": ("Dyestuff2.csv", "Yield ~ 1 + (1 | Batch)", True),
    "dyestuff2_ml": ("Dyestuff2.csv", "Yield ~ 1 + (1 | Batch)", False),
    "penicillin_reml": ("Penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
    "penicillin_ml": ("Penicillin.csv", "diameter ~ 1 + (1 | plate) + (1 | sample)", False),
    "pastes_reml": ("Pastes.csv", "strength ~ 1 + (1 | batch/cask)", True),
    "pastes_ml": ("Pastes.csv", "strength ~ 1 + (1 | batch/cask)", False),
    "orthodont_lmer_reml": ("Orthodont.csv", "distance ~ age * Sex + (age | Subject)", True),
    "orthodont_lmer_ml": ("Orthodont.csv", "distance ~ age * Sex + (age | Subject)", False),
}


@cache
def reference(case: str) -> dict:
    """The reference JSON of a case."""
    return json.loads((DATA / f"{case}.json").read_text())


def reference_data(case: str) -> pd.DataFrame:
    """The case's CSV with factor columns as Categoricals in R's level order."""
    meta = reference(case)
    cols = meta["data"]["columns"]
    factors = [c for c, v in cols.items() if v["type"] == "factor"]
    df = pd.read_csv(DATA / meta["dataset"], dtype={f: str for f in factors})
    for f in factors:
        df[f] = pd.Categorical(df[f], categories=[str(v) for v in cols[f]["levels"]])
    return df


def r_matrix(m: dict) -> pd.DataFrame:
    """A reference matrix as a labelled DataFrame."""
    return pd.DataFrame(np.array(m["values"], dtype=float), index=m["rownames"], columns=m["colnames"])


_FIT_CACHE: dict = {}


def fitted_case(case: str):
    """Fit of an lmer reference case (cached across tests)."""
    if case not in _FIT_CACHE:
        import warnings

        import memoe

        _, formula, reml = LMER_CASES[case]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FIT_CACHE[case] = memoe.lmm(formula, data=reference_data(case)).fit(reml=reml)
    return _FIT_CACHE[case]


@pytest.fixture
def sleepstudy() -> pd.DataFrame:
    return reference_data("sleepstudy_corr_slope_reml")

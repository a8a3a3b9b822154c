"""Rows with missing values: dropped, counted, and the fit equals the fit to the complete rows."""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.marginal import AR1, CAR1

OVARY = "follicles ~ np.sin(2*np.pi*Time) + np.cos(2*np.pi*Time) + (1 | Mare)"


@pytest.mark.parametrize("reml", [True, False])
def test_lme_with_missing_rows_equals_fit_to_complete_rows(reml):
    df = memoe.datasets.load("Ovary").copy()
    df.loc[[3, 40], "follicles"] = np.nan
    fit = memoe.lme(OVARY, df, correlation=AR1()).fit(reml=reml)
    complete = memoe.lme(OVARY, df.dropna(), correlation=AR1()).fit(reml=reml)
    assert fit.n_dropped == 2 and fit.nobs == len(df) - 2
    assert fit.loglik == pytest.approx(complete.loglik, abs=1e-8)
    np.testing.assert_allclose(fit.fixef, complete.fixef, rtol=1e-6)
    assert np.isnan(fit.fitted.loc[3]) and np.isfinite(fit.fitted.drop([3, 40])).all()


def test_gls_with_missing_time_is_dropped():
    df = memoe.datasets.load("BodyWeight").copy()
    df.loc[5, "Time"] = np.nan
    fit = memoe.gls("weight ~ Time * Diet", df, correlation=CAR1("Time", "Rat")).fit()
    assert fit.n_dropped == 1

"""Predictions, the command line and the bundled data sets."""

from __future__ import annotations

import numpy as np
import pytest

import memoe
from memoe.cli import main


@pytest.fixture(scope="module")
def fit():
    return memoe.lmm("Reaction ~ Days + (Days | Subject)", data=memoe.datasets.load("sleepstudy")).fit()


def test_predict_reproduces_fitted_and_population(fit):
    df = memoe.datasets.load("sleepstudy")
    np.testing.assert_allclose(fit.predict(df), fit.fitted, rtol=1e-12)
    pop = fit.predict(df, re_form=None).to_numpy()
    np.testing.assert_allclose(pop, fit.fixef.iloc[0] + fit.fixef.iloc[1] * df["Days"].to_numpy())


def test_predict_new_levels_get_population_value(fit):
    new = memoe.datasets.load("sleepstudy").head(2).copy()
    new["Subject"] = ["new", "308"]
    with pytest.raises(memoe.errors.DataError, match=r"'Subject' has 1 new level.*'new'"):
        fit.predict(new)
    p = fit.predict(new, allow_new_levels=True).to_numpy()
    assert p[0] == pytest.approx(fit.fixef.iloc[0])
    b = fit.ranef["Subject"].loc["308"]
    assert p[1] == pytest.approx(fit.fixef.iloc[0] + b.iloc[0] + (fit.fixef.iloc[1] + b.iloc[1]) * new["Days"].iloc[1])


def test_datasets_have_r_levels():
    df = memoe.datasets.load("Orthodont")
    assert list(df["Sex"].cat.categories) == ["Male", "Female"]
    assert "sleepstudy" in memoe.datasets.names()
    with pytest.raises(KeyError, match="unknown data set"):
        memoe.datasets.load("nope")
    with pytest.raises(memoe.errors.UnknownDatasetError, match=r"'nope'; available: .*sleepstudy"):
        memoe.datasets.describe("nope")
    with pytest.raises(memoe.errors.ArgumentTypeError, match="name must be a str"):
        memoe.datasets.load(3)


def test_cli_fit_and_error(tmp_path, capsys):
    path = tmp_path / "d.csv"
    memoe.datasets.load("Dyestuff").to_csv(path, index=False)
    assert main(["fit", "Yield ~ 1 + (1 | Batch)", "--data", str(path)]) == 0
    assert "REML criterion at convergence: 319.7" in capsys.readouterr().out
    assert main(["fit", "Yield ~ nope + (1 | Batch)", "--data", str(path)]) == 2
    assert "unknown column 'nope'" in capsys.readouterr().err

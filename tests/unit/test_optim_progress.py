"""The evaluation progress bar of the bounded optimiser: hidden for quick runs, shown for long ones."""

import time

import numpy as np

from memoe.core.optim import minimize_bounded
from memoe.core.optim import progress as progress_module


def _quadratic(x):
    return float(((x - 1.0) ** 2).sum())


def test_bar_appears_only_after_the_delay(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0.05)

    def slow(x):
        time.sleep(0.01)
        return _quadratic(x)

    res = minimize_bounded(slow, np.zeros(2), np.full(2, -np.inf), progress=True, desc="unit-test fit")
    assert res.fmin < 1e-10
    assert "unit-test fit" in capsys.readouterr().err


def test_quick_or_disabled_runs_print_nothing(capsys):
    res = minimize_bounded(_quadratic, np.zeros(2), np.full(2, -np.inf), progress=True, desc="quick")
    res_off = minimize_bounded(_quadratic, np.zeros(2), np.full(2, -np.inf), progress=False, desc="off")
    assert res.fmin < 1e-10 and res_off.fmin < 1e-10
    assert capsys.readouterr().err == ""


def test_disabled_bar_has_no_tqdm(monkeypatch):
    bar = progress_module.EvaluationBar(False, "x")
    bar.update(1.0)
    bar.close()
    assert bar._bar is None


def test_gls_fit_shows_its_bar_and_can_switch_it_off(monkeypatch, capsys):
    import memoe
    from memoe.errors import ArgumentTypeError
    from memoe.marginal import CAR1

    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0.0)
    bw = memoe.datasets.load("BodyWeight")
    model = memoe.gls("weight ~ Time * Diet", bw, correlation=CAR1("Time", "Rat"))
    shown = model.fit(reml=True, progress=True)
    assert "gls REML" in capsys.readouterr().err
    quiet = model.fit(reml=True, progress=False)
    assert capsys.readouterr().err == ""
    assert abs(shown.loglik - quiet.loglik) < 1e-10
    import pytest

    with pytest.raises(ArgumentTypeError, match="progress"):
        model.fit(progress="yes")

"""Size of the boundary LRT under H0: chi-bar-square is about nominal, plain chi-square is conservative.

Data are simulated from a random-intercept model (H0 true) and the random-slope variance is tested:
``(1 | g)`` against ``(t || g)``, both by ML. The null distribution is the one :func:`compare` picks for
this pair, ``0.5 chi2(0) + 0.5 chi2(1)``. Asymptotically the statistic is exactly zero half the time,
so the plain ``chi2(1)`` reference rejects at about half the nominal rate.

The design (150 subjects x 4 visits) is large enough for the asymptotics to hold (with 20 subjects the
finite-sample statistic is still conservative under either reference), and 600 data sets make the
Monte-Carlo error of a rejection rate at 10 % about 0.012. The refits go through the model's
objective directly (one ``PLSProblem`` per data set) to keep the test at a few seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import memoe
from memoe.core.optim import minimize_bounded
from memoe.inference.chibar import ChiBarSquare, boundary_null
from memoe.lmm.objective import PLSProblem

N_SUBJECTS, N_VISITS, N_SIM, ALPHA = 150, 4, 600, 0.10


def _ml_deviance(design, y: np.ndarray) -> float:
    problem = PLSProblem(
        y=y,
        X=design.X,
        codes=[b.factor.codes for b in design.blocks],
        nlevels=[b.nlevels for b in design.blocks],
        Z=[b.Z for b in design.blocks],
        theta_map=design.theta_map,
    )
    tm = design.theta_map
    return minimize_bounded(lambda th: problem.deviance(th, False), tm.initial(), tm.lower_bounds, ftol_abs=1e-9).fmin


def test_chibar_lrt_has_nominal_size():
    rng = np.random.default_rng(20240521)
    g = np.repeat(np.arange(N_SUBJECTS), N_VISITS)
    t = np.tile(np.arange(N_VISITS, dtype=float) - (N_VISITS - 1) / 2, N_SUBJECTS)
    template = pd.DataFrame({"g": pd.Categorical(g.astype(str)), "t": t, "y": rng.standard_normal(len(g))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f0 = memoe.lmm("y ~ t + (1 | g)", template).fit(reml=False)
        f1 = memoe.lmm("y ~ t + (t || g)", template).fit(reml=False)
    # the null distribution exactly as compare(f0, f1, boundary=True) chooses it
    table = memoe.compare(f0, f1, boundary=True)
    null, _ = boundary_null(f0, f1, int(table["Df"].iloc[1]))
    assert null == ChiBarSquare((0.5, 0.5), (0, 1))
    naive = ChiBarSquare.plain(1)

    codes = f0.design.blocks[0].factor.codes
    lrt = np.empty(N_SIM)
    for k in range(N_SIM):
        y = 1.0 + 0.5 * t + rng.standard_normal(N_SUBJECTS)[codes] + rng.standard_normal(len(t))
        lrt[k] = max(_ml_deviance(f0.design, y) - _ml_deviance(f1.design, y), 0.0)

    zero_mass = np.mean(lrt < 1e-6)
    rate_chibar = np.mean(null.sf(lrt) < ALPHA)
    rate_naive = np.mean(naive.sf(lrt) < ALPHA)
    assert 0.40 < zero_mass < 0.60  # the point mass of chi2(0)
    # nominal 0.10 +/- about 2 Monte-Carlo SEs (plus a little finite-sample conservatism)
    assert 0.075 < rate_chibar < 0.13, rate_chibar
    # the plain chi-square is conservative: about alpha / 2, below the band
    assert rate_naive < 0.07, rate_naive

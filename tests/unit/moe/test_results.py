"""The result object: posterior, classification, criteria, summary, predictions, selection, plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import memoe

from .conftest import FORMULA, GATING


def test_posterior_and_classification(sim2_fit, sim2):
    fit = sim2_fit
    post = fit.posterior
    assert post.shape == (300, 2) and list(post.columns) == [1, 2]
    assert post.index.name == "id" and post.index[0] == 1
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    cls = fit.classify()
    assert cls.equals(post.idxmax(axis=1).rename("expert"))
    tab = fit.classification_table()
    assert tab["n"].sum() == 300 and abs(tab["percent"].sum() - 100) < 1e-9
    for k in (1, 2):
        assigned = post[cls == k]
        np.testing.assert_allclose(tab.loc[k, ["prob_1", "prob_2"]], assigned.mean().to_numpy())
    assert (np.diag(tab[["prob_1", "prob_2"]].to_numpy()) > 0.9).all()
    thr = fit.posterior_thresholds()
    assert (thr.to_numpy() <= 100).all() and list(thr.columns) == ["prob>0.7", "prob>0.8", "prob>0.9"]


def test_criteria(sim2_fit):
    fit = sim2_fit
    c = fit.criteria()
    assert c["npar"] == 17
    assert math.isclose(c["BIC"], -2 * fit.loglik + math.log(300) * 17)
    tau = fit.posterior.to_numpy()
    en = -np.sum(tau * np.log(tau))
    assert math.isclose(c["ICL"], c["BIC"] + 2 * en)
    assert math.isclose(c["entropy"], 1 - en / (300 * math.log(2)))
    assert 0.4 < c["min_class_share"] < 0.5


def test_summary_text(sim2_fit):
    text = str(sim2_fit.summary())
    for piece in ("Gating", "Expert 1", "Expert 2", "se_robust", "BIC", "ICL", "entropy", "Posterior classification"):
        assert piece in text
    tab = sim2_fit.summary().table
    assert {"estimate", "se_model", "se_robust", "z", "p", "lower 95%", "upper 95%"} <= set(tab.columns)
    ci = sim2_fit.confint(0.9, robust="sandwich")
    assert (ci["lower"].to_numpy() < tab["estimate"].to_numpy()).all()


def test_predictions(sim2_fit, sim2):
    fit = sim2_fit
    pop = fit.predict(sim2.drop(columns="y"), re_form=None)
    subj = fit.predict(sim2)
    per_class = fit.predict(sim2, kind="class")
    assert pop.index.equals(sim2.index) and per_class.shape == (len(sim2), 2)
    # population prediction = gate-weighted class means
    w = fit.prior.loc[sim2["id"]].to_numpy()
    np.testing.assert_allclose(pop, (w * per_class.to_numpy()).sum(axis=1))
    mse_pop = np.mean((sim2["y"] - pop) ** 2)
    mse_subj = np.mean((sim2["y"] - subj) ** 2)
    assert mse_subj < 0.5 * mse_pop
    # kind="subject": a subject with no observed response in newdata is predicted from the gate alone
    new = sim2[sim2["id"] == 1].assign(y=np.nan)
    np.testing.assert_allclose(fit.predict(new, kind="subject"), fit.predict(new, kind="population"))
    # the default uses the fit's posterior of that subject instead: the same as with its history
    np.testing.assert_allclose(fit.predict(new), subj[new.index], rtol=1e-10)
    # future visits are predicted from the subject's history
    hist = sim2[sim2["id"] == 2]
    future = hist.iloc[-1:].assign(time=5.0, y=np.nan)
    both = fit.predict(pd.concat([hist, future]))
    assert np.isfinite(both.iloc[-1])


def test_select_k_table(sim2):
    table, fits = memoe.select_k(FORMULA, gating=GATING, data=sim2, ks=[1, 2, 3], n_starts=2, seed=1,
                                 return_fits=True, progress=False)
    assert list(table.index) == [1, 2, 3]
    for col in ("loglik", "npar", "AIC", "BIC", "ICL", "entropy", "min_class_share", "n_at_best", "n_same_partition"):
        assert col in table.columns
    assert table["BIC"].idxmin() == 2
    assert table.loc[1, "entropy"] == 1.0 and table.loc[1, "min_class_share"] == 1.0
    assert fits[3].starts["strategy"].str.startswith("split").any()
    assert table["loglik"].is_monotonic_increasing


def test_plots(sim2_fit):
    """The MEMoE figures live on fit.plot (tests/unit/test_plots.py checks their content)."""
    from matplotlib.collections import LineCollection

    ax = sim2_fit.plot.trajectories(max_subjects=40).axes[0]
    assert sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)) == 40
    assert len(ax.get_lines()) == 2
    ax2 = sim2_fit.plot.posterior().axes[0]
    assert ax2.get_xlabel() == "maximum posterior probability"


def test_bad_arguments(sim2):
    with pytest.raises(ValueError, match="random_cov"):
        memoe.MEMoE(FORMULA, gating=GATING, k=2, data=sim2, random_cov="diag")
    with pytest.raises(ValueError, match="k must"):
        memoe.MEMoE(FORMULA, gating=GATING, k=0, data=sim2)


def test_missing_rows_are_counted_and_reported():
    import numpy as np

    import memoe

    sim = memoe.datasets.load("memoe_sim2").copy()
    sim.loc[[0, 1, 2], "y"] = np.nan
    sim.loc[[3], "w1"] = np.nan
    fit = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim).fit(
        n_starts=2, seed=1, progress=False
    )
    assert fit.n_dropped == 4
    assert fit.nobs == len(sim) - 4
    assert "4 rows deleted due to missingness" in str(fit.summary())


def test_non_convergence_is_warned():
    import pytest

    import memoe
    from memoe.errors import ConvergenceWarning
    from memoe.moe.em import EMControl
    from memoe.moe.multistart import MultiStartControl

    sim = memoe.datasets.load("memoe_sim2")
    ctl = MultiStartControl(em=EMControl(max_iter=2), polish=False)
    model = memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim)
    with pytest.warns(ConvergenceWarning, match="EM did not converge"):
        fit = model.fit(n_starts=2, seed=1, progress=False, control=ctl, se=False)
    assert not fit.converged


def test_partition_agreement_matches_labels():
    from memoe.moe.multistart import partition_agreement

    ref = np.eye(3)[[0, 0, 1, 1, 2, 2, 2, 0]]
    relabelled = ref[:, [2, 0, 1]]
    assert partition_agreement(relabelled, ref) == 1.0
    one_off = relabelled.copy()
    one_off[0] = relabelled[3]
    assert partition_agreement(one_off, ref) == 7 / 8


def test_start_record_counts(sim2_fit):
    starts = sim2_fit.starts
    assert sim2_fit.n_polished == int(starts["polished"].sum()) >= 1
    assert sim2_fit.n_same_partition == int((starts["agreement"] >= 0.99).sum())
    best = starts["gap"].abs().idxmin()
    assert starts.loc[best, "agreement"] == 1.0
    assert f"{sim2_fit.n_same_partition} ended with the selected classification" in str(sim2_fit.summary())

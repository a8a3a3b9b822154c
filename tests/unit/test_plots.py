"""fit.plot: every figure rendered to PNG (Agg) and checked for what it must contain."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.quiver import Quiver

import memoe
from memoe.errors import ArgumentError, MemoeError, UnknownColumnError


def render(fig) -> bytes:
    """PNG bytes of the figure (raises if anything in it cannot be drawn)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def visible_axes(fig):
    return [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>"]


def named_lines(ax):
    """Lines with a legend label (the zero reference line is ``_zero``)."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def collections(ax, kind):
    return [c for c in ax.collections if isinstance(c, kind)]


@pytest.fixture(scope="module")
def sleep_fit():
    return memoe.lmm("Reaction ~ Days + (Days | Subject)", data=memoe.datasets.load("sleepstudy")).fit()


@pytest.fixture(scope="module")
def orth():
    return memoe.datasets.load("Orthodont")


@pytest.fixture(scope="module")
def orth_fit(orth):
    return memoe.lmm("distance ~ age * Sex + (1 | Subject)", data=orth).fit(reml=False)


@pytest.fixture(scope="module")
def cbpp_fit():
    cbpp = memoe.datasets.load("cbpp")
    return memoe.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", data=cbpp, family="binomial").fit()


@pytest.fixture(scope="module")
def gee_fit(orth):
    return memoe.gee("distance ~ age * Sex", data=orth, group="Subject", corstr="exchangeable").fit()


@pytest.fixture(scope="module")
def gls_fit(orth):
    return memoe.gls("distance ~ age * Sex", data=orth, correlation=memoe.marginal.CompSymm(group="Subject")).fit()


@pytest.fixture(scope="module")
def lme_fit(orth):
    return memoe.lme("distance ~ age + (1 | Subject)", data=orth, correlation=memoe.marginal.AR1(group="Subject")).fit()


@pytest.fixture(scope="module")
def memoe_fit():
    sim2 = memoe.datasets.load("memoe_sim2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return memoe.MEMoE("y ~ time + x + (time | id)", gating="~ w1 + w2", k=2, data=sim2).fit(
            n_starts=2, seed=1, progress=False
        )


# ---------------------------------------------------------------------- residual diagnostics
def test_residuals_points_smoother_labels(sleep_fit):
    fig = sleep_fit.plot.residuals()
    render(fig)
    (ax,) = visible_axes(fig)
    (pts,) = collections(ax, PathCollection)
    assert len(pts.get_offsets()) == sleep_fit.nobs
    np.testing.assert_allclose(pts.get_offsets()[:, 0], sleep_fit.fitted.to_numpy())
    np.testing.assert_allclose(pts.get_offsets()[:, 1], sleep_fit.resid.to_numpy())
    assert [ln.get_label() for ln in named_lines(ax)] == ["lowess"]
    assert ax.get_xlabel() == "fitted Reaction"
    assert ax.get_ylabel() == "response residual"
    assert "Reaction ~ Days" in ax.get_title()


def test_residuals_sampling_and_groups(orth_fit):
    fig = orth_fit.plot.residuals(max_points=30, seed=3, smoother=False)
    (ax,) = visible_axes(fig)
    assert len(collections(ax, PathCollection)[0].get_offsets()) == 30
    assert named_lines(ax) == []
    fig = orth_fit.plot.residuals(by="Sex", type="pearson")
    (ax,) = visible_axes(fig)
    pts = collections(ax, PathCollection)
    assert len(pts) == 2 and sum(len(p.get_offsets()) for p in pts) == orth_fit.nobs
    assert ax.get_ylabel() == "pearson residual"
    assert ax.get_legend().get_title().get_text() == "Sex"


def test_qq_points_and_line(sleep_fit):
    fig = sleep_fit.plot.qq()
    render(fig)
    (ax,) = visible_axes(fig)
    off = collections(ax, PathCollection)[0].get_offsets()
    assert len(off) == sleep_fit.nobs
    # sorted Pearson residuals against increasing normal quantiles
    np.testing.assert_allclose(off[:, 1], np.sort(sleep_fit.residuals("pearson").to_numpy()))
    assert np.all(np.diff(off[:, 0]) > 0)
    assert ax.get_xlabel() == "standard normal quantile"
    assert len(ax.get_lines()) == 1  # qqline
    thinned = visible_axes(sleep_fit.plot.qq(max_points=20))[0]
    off20 = collections(thinned, PathCollection)[0].get_offsets()
    assert len(off20) == 20 and off20[0, 1] == off[0, 1] and off20[-1, 1] == off[-1, 1]  # tails kept


# ---------------------------------------------------------------------- random effects
def test_ranef_qq_one_panel_per_term(sleep_fit):
    fig = sleep_fit.plot.ranef_qq()
    render(fig)
    axes = visible_axes(fig)
    assert [a.get_title() for a in axes] == ["(Intercept) | Subject", "Days | Subject"]
    for a, col in zip(axes, ["(Intercept)", "Days"], strict=True):
        off = collections(a, PathCollection)[0].get_offsets()
        np.testing.assert_allclose(off[:, 1], np.sort(sleep_fit.ranef["Subject"][col].to_numpy()))


def test_caterpillar_intervals_from_condsd(sleep_fit):
    fig = sleep_fit.plot.caterpillar(level=0.9)
    render(fig)
    axes = visible_axes(fig)
    assert len(axes) == 2
    z = 1.6448536269514722
    for a, col in zip(axes, ["(Intercept)", "Days"], strict=True):
        (lc,) = collections(a, LineCollection)
        segs = np.array(lc.get_segments())
        assert len(segs) == 18
        mid = segs[:, :, 0].mean(axis=1)
        assert np.all(np.diff(mid) >= 0)  # sorted
        blup = sleep_fit.ranef["Subject"][col]
        sd = sleep_fit.ranef_condsd["Subject"][col]
        order = np.argsort(blup.to_numpy(), kind="stable")
        np.testing.assert_allclose(mid, blup.to_numpy()[order], rtol=1e-12, atol=1e-12 * float(blup.abs().max()))
        np.testing.assert_allclose(segs[:, 1, 0] - segs[:, 0, 0], 2 * z * sd.to_numpy()[order], rtol=1e-9)
        assert [t.get_text() for t in a.get_yticklabels()] == [str(s) for s in blup.index[order]]
    few = visible_axes(sleep_fit.plot.caterpillar(max_groups=5, seed=1))[0]
    assert len(collections(few, LineCollection)[0].get_segments()) == 5
    assert "5 of 18 groups" in few.get_title()


def test_shrinkage_two_terms_arrows_end_at_blups(sleep_fit):
    fig = sleep_fit.plot.shrinkage()
    render(fig)
    (ax,) = visible_axes(fig)
    (q,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert q.N == 18
    coef = sleep_fit.ranef["Subject"] + sleep_fit.fixef[["(Intercept)", "Days"]].to_numpy()
    ends = q.XY + np.column_stack([q.U, q.V])
    np.testing.assert_allclose(ends, coef.to_numpy(), rtol=1e-10)
    # the starts are each subject's own least-squares line (balanced data: lm per subject)
    df = memoe.datasets.load("sleepstudy")
    own = np.array([np.polyfit(g["Days"], g["Reaction"], 1)[::-1] for _, g in df.groupby("Subject", observed=True)])
    np.testing.assert_allclose(q.XY, own, rtol=1e-8)
    assert ax.get_xlabel() == "(Intercept) (Subject-specific)" and ax.get_ylabel() == "Days (Subject-specific)"


def test_shrinkage_one_term_sizes_by_group(orth_fit):
    fig = orth_fit.plot.shrinkage()
    (ax,) = visible_axes(fig)
    (q,) = [c for c in ax.collections if isinstance(c, Quiver)]
    assert q.N == 27
    ols, blup = collections(ax, PathCollection)[:2]
    # random intercept: the OLS estimate is the group mean of y - X beta (plus the intercept)
    resid = orth_fit.residuals("marginal").groupby(orth_fit.design.frame.data["Subject"], observed=True).mean()
    np.testing.assert_allclose(ols.get_offsets()[:, 1], resid.to_numpy() + orth_fit.fixef["(Intercept)"], rtol=1e-10)
    np.testing.assert_allclose(
        blup.get_offsets()[:, 1], orth_fit.ranef["Subject"]["(Intercept)"].to_numpy() + orth_fit.fixef["(Intercept)"]
    )
    assert len(set(np.round(ols.get_sizes(), 9))) == 1  # 4 visits each: equal marker sizes


def test_variance_components_icc(orth_fit, sleep_fit, cbpp_fit):
    from memoe.plot import variance_components_table

    vc = orth_fit.varcorr.set_index("grp")["vcov"]
    icc = vc["Subject"] / (vc["Subject"] + vc["Residual"])
    table = variance_components_table(orth_fit)
    assert table.attrs["icc"] == pytest.approx(icc, rel=1e-12)
    fig = orth_fit.plot.variance_components()
    render(fig)
    (ax,) = visible_axes(fig)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [vc["Subject"], vc["Residual"]], rtol=1e-12)
    assert f"ICC = {icc:.3f}" in ax.get_title()
    # random slope: mean over rows of z'Gz = s0^2 + 2 s01 mean(t) + s1^2 mean(t^2)
    t = sleep_fit.design.frame.data["Days"].to_numpy(float)
    G = sleep_fit.varcorr
    s00, s11, s01 = G["vcov"].iloc[0], G["vcov"].iloc[1], G["vcov"].iloc[2]
    between = s00 + 2 * s01 * t.mean() + s11 * np.mean(t**2)
    assert variance_components_table(sleep_fit).loc["Subject", "variance"] == pytest.approx(between, rel=1e-12)
    # binomial logit GLMM: latent residual variance pi^2/3
    glmm_table = variance_components_table(cbpp_fit)
    assert glmm_table.loc["Residual", "variance"] == pytest.approx(math.pi**2 / 3, rel=1e-15)


# ---------------------------------------------------------------------- trajectories and predictions
def test_trajectories_lines_and_population(sleep_fit):
    fig = sleep_fit.plot.trajectories()
    render(fig)
    (ax,) = visible_axes(fig)
    (lc,) = collections(ax, LineCollection)
    segs = lc.get_segments()
    assert len(segs) == 18 and all(len(s) == 10 for s in segs)
    assert all(np.all(np.diff(s[:, 0]) > 0) for s in segs)  # time order
    (pop,) = ax.get_lines()
    assert pop.get_label() == "population"
    # population curve is X beta on the grid
    x, y = pop.get_data()
    np.testing.assert_allclose(y, sleep_fit.fixef["(Intercept)"] + sleep_fit.fixef["Days"] * x, rtol=1e-12)
    assert ax.get_xlabel() == "Days" and ax.get_ylabel() == "Reaction"
    few = visible_axes(sleep_fit.plot.trajectories(max_subjects=5, seed=2, y="fitted"))[0]
    assert len(collections(few, LineCollection)[0].get_segments()) == 5
    assert few.get_ylabel() == "fitted Reaction" and "5 of 18 subjects" in few.get_title()


def test_trajectories_by_group(orth_fit):
    (ax,) = visible_axes(orth_fit.plot.trajectories(by="Sex"))
    lcs = collections(ax, LineCollection)
    assert len(lcs) == 2 and sum(len(c.get_segments()) for c in lcs) == 27
    assert sorted(ln.get_label() for ln in ax.get_lines()) == ["population: Sex = Female", "population: Sex = Male"]


@pytest.mark.parametrize("name", ["gee_fit", "gls_fit", "lme_fit", "cbpp_fit"])
def test_residual_plots_every_family(name, request):
    fit = request.getfixturevalue(name)
    for fig in (fit.plot.residuals(), fit.plot.qq()):
        render(fig)
        off = collections(visible_axes(fig)[0], PathCollection)[0].get_offsets()
        assert len(off) == fit.nobs


@pytest.mark.parametrize("name", ["gee_fit", "gls_fit", "lme_fit"])
def test_trajectories_marginal_families(name, request):
    fit = request.getfixturevalue(name)
    (ax,) = visible_axes(fit.plot.trajectories())
    assert len(collections(ax, LineCollection)[0].get_segments()) == 27
    assert ax.get_xlabel() == "age"


def test_predictions_lines(sleep_fit):
    fig = sleep_fit.plot.predictions(max_subjects=3, seed=0)
    render(fig)
    (ax,) = visible_axes(fig)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[0] == "population" and sum(lab.startswith("Subject ") for lab in labels) == 3
    assert ax.get_ylabel() == "predicted Reaction"


def test_predictions_bands_when_predict_gives_intervals(orth_fit):
    """With a predict that returns intervals, bands are drawn; the lines are its estimates."""

    class WithIntervals:
        def __init__(self, fit):
            self._fit = fit

        def __getattr__(self, name):
            return getattr(self._fit, name)

        def predict(self, newdata=None, interval=None, level=0.95, **kw):
            est = self._fit.predict(newdata, **kw)
            if interval is None:
                return est
            return pd.DataFrame({"fit": est, "lower": est - 1.0, "upper": est + 1.0})

    from memoe.plot import PlotAccessor

    fig = PlotAccessor.__new__(PlotAccessor)
    fig._fit = WithIntervals(orth_fit)
    fig._view = orth_fit.plot._view
    out = fig.predictions(max_subjects=2, interval="confidence")
    (ax,) = visible_axes(out)
    assert len(collections(ax, PolyCollection)) == 1 + 2
    assert "95% confidence intervals" in ax.get_title()
    # without intervals support (the real fit's predict today or with interval=None): no bands
    (ax2,) = visible_axes(orth_fit.plot.predictions(interval=None))
    assert collections(ax2, PolyCollection) == []


def test_predictions_newdata_per_subject(orth_fit, orth):
    new = orth[orth["Subject"].isin(["M01", "F02"])]
    (ax,) = visible_axes(orth_fit.plot.predictions(new))
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[0] == "population" and {"Subject F02", "Subject M01"} <= set(labels)


# ---------------------------------------------------------------------- mixtures
def test_memoe_figures(memoe_fit):
    fig = memoe_fit.plot.trajectories(max_subjects=40)
    render(fig)
    (ax,) = visible_axes(fig)
    lcs = collections(ax, LineCollection)
    assert len(lcs) == 2 and sum(len(c.get_segments()) for c in lcs) == 40
    assert [ln.get_label()[:8] for ln in ax.get_lines()] == ["expert 1", "expert 2"]
    assert [ln.get_linewidth() for ln in ax.get_lines()] == [3.0, 3.0]
    fig = memoe_fit.plot.posterior()
    render(fig)
    (ax,) = visible_axes(fig)
    assert ax.get_xlabel() == "maximum posterior probability"
    assert sum(p.get_height() for p in ax.patches[:20]) > 0
    fig = memoe_fit.plot.gate_effects(n=25)
    render(fig)
    axes = visible_axes(fig)
    assert [a.get_xlabel() for a in axes] == ["w1", "w2"]
    for a in axes:
        lines = a.get_lines()
        assert len(lines) == 2
        np.testing.assert_allclose(lines[0].get_ydata() + lines[1].get_ydata(), 1.0, rtol=1e-12)
    render(memoe_fit.plot.ranef_qq())
    assert not hasattr(memoe_fit, "plot_trajectories") and not hasattr(memoe_fit, "plot_posterior")


# ---------------------------------------------------------------------- refusals
def test_figures_that_do_not_apply(gee_fit, gls_fit, cbpp_fit, sleep_fit, memoe_fit):
    with pytest.raises(MemoeError, match="GEE is a marginal model"):
        gee_fit.plot.ranef_qq()
    with pytest.raises(MemoeError, match="gls model has no random effects"):
        gls_fit.plot.caterpillar()
    with pytest.raises(MemoeError, match="Gaussian response"):
        cbpp_fit.plot.shrinkage()
    with pytest.raises(MemoeError, match="mixtures"):
        sleep_fit.plot.posterior()
    with pytest.raises(MemoeError, match="per expert"):
        memoe_fit.plot.caterpillar()
    with pytest.raises(MemoeError, match="time axis"):
        cbpp_fit.plot.trajectories()
    assert "shrinkage" not in gee_fit.plot.available() and "shrinkage" in sleep_fit.plot.available()


def test_bad_arguments(sleep_fit):
    with pytest.raises(ArgumentError, match="max_subjects"):
        sleep_fit.plot.trajectories(max_subjects=0)
    with pytest.raises(UnknownColumnError, match="time='nope'"):
        sleep_fit.plot.trajectories(time="nope")
    with pytest.raises(ArgumentError, match="y must be"):
        sleep_fit.plot.trajectories(y="latent")
    with pytest.raises(ArgumentError, match="terms"):
        sleep_fit.plot.shrinkage(terms=["Nope"])
    with pytest.raises(ArgumentError, match="level"):
        sleep_fit.plot.caterpillar(level=95)
    with pytest.raises(ArgumentError, match="interval"):
        sleep_fit.plot.predictions(interval="both")


@pytest.mark.slow
def test_matplotlib_imported_lazily():
    code = "import sys, memoe; assert 'matplotlib' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_readable_with_ten_thousand_subjects():
    """10,000 subjects: a sample of lines, faint, and points rasterized."""
    rng = np.random.default_rng(7)
    n, m = 10_000, 3
    sid = np.repeat(np.arange(n), m)
    t = np.tile(np.arange(m, dtype=float), n)
    y = 1.0 + 0.5 * t + rng.normal(0, 1, n)[sid] + rng.normal(0, 1, n * m)
    fit = memoe.lmm("y ~ t + (1 | id)", data=pd.DataFrame({"y": y, "t": t, "id": sid})).fit()
    (ax,) = visible_axes(fit.plot.trajectories())
    (lc,) = collections(ax, LineCollection)
    assert len(lc.get_segments()) == 300 and lc.get_alpha() < 0.5
    assert "300 of 10000 subjects" in ax.get_title()
    (ax,) = visible_axes(fit.plot.residuals())
    pts = collections(ax, PathCollection)[0]
    assert pts.get_rasterized() and pts.get_alpha() < 0.2
    (ax,) = visible_axes(fit.plot.caterpillar())
    assert len(collections(ax, LineCollection)[0].get_segments()) == 100

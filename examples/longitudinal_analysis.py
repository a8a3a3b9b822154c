"""A longitudinal analysis end to end: random-intercept model, GEE comparison, LRT, BIC, diagnostics, predictions.

Follows the course notes "12 Mixed Effects" (a random-intercept model of Memory ~ Years * I(Years > 3) *
INTGRP in the ACTIVE trial) on the Orthodont data bundled with memoe: the distance from the pituitary
to the pterygomaxillary fissure of 27 children at ages 8, 10, 12 and 14, by Sex. The piecewise-linear
growth (a change of slope after age 10) plays the role of ``I(Years > 3)``.

Run: ``python examples/longitudinal_analysis.py [output_directory]`` (default: a new temporary directory).
The figures (PNG) and an HTML report are written there.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

import memoe


def main(outdir: str | None = None) -> Path:
    out = Path(outdir) if outdir else Path(tempfile.mkdtemp(prefix="memoe_longitudinal_"))
    out.mkdir(parents=True, exist_ok=True)
    df = memoe.datasets.load("Orthodont")
    pd.set_option("display.width", 120)

    # 1. random-intercept model, ML so that models with different fixed effects can be compared
    full = "distance ~ age * I(age > 10) * Sex + (1 | Subject)"
    mod1 = memoe.lmm(full, data=df).fit(reml=False)
    print(mod1.summary(), "\n")

    # 2. the same mean model by GEE with an exchangeable working correlation
    mod2 = memoe.gee("distance ~ age * I(age > 10) * Sex", data=df, group="Subject", corstr="exchangeable").fit()
    coefs = pd.DataFrame({"MixedBeta": mod1.params, "GEEBeta": mod2.params})
    coefs["Diff"] = coefs["MixedBeta"] - coefs["GEEBeta"]
    print("Coefficients: random intercept vs GEE (exchangeable). For a linear model with a random intercept the")
    print("marginal mean is X beta in both, and with balanced data the estimates coincide:")
    print(coefs.round(3), "\n")
    def se(v: pd.DataFrame) -> pd.Series:
        return pd.Series(v.to_numpy().diagonal() ** 0.5, index=v.index)

    ses = pd.DataFrame({
        "MixedSE": mod1.bse,
        "GEENaiveSE": se(mod2.vcov(robust="naive")),
        "GEERobustSE": se(mod2.vcov(robust="sandwich")),
    })
    print("Standard errors: model-based (mixed, GEE naive) and robust (GEE sandwich):")
    print(ses.round(3), "\n")

    # 3. nested models: do boys and girls grow differently? (likelihood ratio tests, ML fits)
    mod3 = memoe.lmm("distance ~ age * I(age > 10) + Sex + age:Sex + (1 | Subject)", data=df).fit(reml=False)
    mod4 = memoe.lmm("distance ~ age * I(age > 10) + Sex + (1 | Subject)", data=df).fit(reml=False)
    print("Likelihood ratio tests (the larger model last):")
    print(memoe.compare(mod4, mod3, mod1), "\n")

    # 4. information criteria: the smallest BIC among models with the same random effects
    bic = pd.Series({"mod1 (full)": mod1.bic, "mod3 (age:Sex)": mod3.bic, "mod4 (Sex shift)": mod4.bic}, name="BIC")
    print("BIC:", bic.round(2).to_dict(), "-> best:", bic.idxmin(), "\n")
    # random effects compared with the same fixed effects: random intercept vs intercept and slope
    mod5 = memoe.lmm("distance ~ age * I(age > 10) + Sex + (age | Subject)", data=df).fit(reml=False)
    print(f"BIC random intercept {mod4.bic:.2f} vs random intercept and slope {mod5.bic:.2f}\n")

    # 5. diagnostics of the chosen model: residuals, normality of residuals and of the random intercepts
    best = {"mod1 (full)": mod1, "mod3 (age:Sex)": mod3, "mod4 (Sex shift)": mod4}[bic.idxmin()]
    figures = {
        "residuals": best.plot.residuals(by="Sex"),
        "qq": best.plot.qq(),
        "ranef_qq": best.plot.ranef_qq(),
        "caterpillar": best.plot.caterpillar(),
        "shrinkage": best.plot.shrinkage(),
        "variance_components": best.plot.variance_components(),
        # 6. predictions: with the random effects (subject lines) and population-level (by Sex)
        "trajectories": best.plot.trajectories(by="Sex", y="fitted"),
        "predictions": best.plot.predictions(by="Sex", max_subjects=4),
        "gee_residuals": mod2.plot.residuals(by="Sex"),
    }
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=100)
    vc = memoe.plot.variance_components_table(best)
    print(f"ICC of the chosen model: {vc.attrs['icc']:.3f}")
    new = pd.DataFrame({"age": [8, 10, 12, 14] * 2, "Sex": ["Male"] * 4 + ["Female"] * 4})
    new["distance"] = best.predict(new, re_form=None).to_numpy()
    print("Population-level predictions:\n", new.pivot(index="age", columns="Sex", values="distance").round(2))

    report = memoe.report(best, out / "report.html", title="Orthodont: random-intercept growth model")
    print(f"\nFigures and report written to {out} ({report.name})")
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)

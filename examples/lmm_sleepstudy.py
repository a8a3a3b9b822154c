"""Linear mixed models on lme4's sleepstudy data: fit, inspect, compare, predict.

Run: python examples/lmm_sleepstudy.py
"""

from __future__ import annotations

import memoe

df = memoe.datasets.load("sleepstudy")

# REML fit with a correlated random intercept and slope per subject (lme4's example)
fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=df).fit(reml=True)
print(fit.summary())

print("Variance components (lme4's as.data.frame(VarCorr(fit))):")
print(fit.varcorr, "\n")

print("BLUPs and their conditional SDs for the first subjects:")
print(fit.ranef["Subject"].head().join(fit.ranef_condsd["Subject"].head().add_suffix(" condSD")), "\n")

# population-level and subject-level predictions on new data
new = df[df["Subject"] == "308"].head(3)
print("Predictions for subject 308:", fit.predict(new).round(2).tolist())
print("Population-level predictions:", fit.predict(new, re_form=None).round(2).tolist())

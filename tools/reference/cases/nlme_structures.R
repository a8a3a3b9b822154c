## nlme's variance functions (varPower, varExp, varConstPower, varFixed, varComb) and correlation
## structures (corARMA, corGaus, corSpher, corLin, corRatio) for gls and lme (issue 11).
## Tested by tests/golden/test_nlme_structures.py.
##
## Fits whose variance covariate is the fitted values (varPower() etc.) alternate between optimising
## the variance parameters and updating the fitted values; nlme stops that loop at a relative change
## of 1e-6 by default. Those cases use tolerance = 1e-10 so the reference is the fixed point itself.

register_dataset("Wheat2", nlme::Wheat2, "Wheat yield trial with field coordinates (Stroup & Baenziger)",
                 "nlme::Wheat2 (groupedData converted to data.frame)")

TIGHT_GLS <- "control = glsControl(tolerance = 1e-10, maxIter = 500, msMaxIter = 500)"
TIGHT_LME <- "control = lmeControl(tolerance = 1e-10, maxIter = 500, msMaxIter = 500)"
OVARY_F <- "follicles ~ sin(2*pi*Time) + cos(2*pi*Time)"

for (reml in c(TRUE, FALSE)) {
  m <- if (reml) "REML" else "ML"
  s <- tolower(m)
  ## ---------------------------------------------------------------- variance functions
  gls_case(paste0("nlmes_orthodont_gls_varpower_fitted_", s), "Orthodont",
           sprintf("gls(distance ~ age * Sex, data = Orthodont, weights = varPower(), method = \"%s\", %s)", m, TIGHT_GLS),
           description = "Orthodont: variance a power of the fitted values (nlme's default varPower covariate)",
           notes = "varPower(): SD = sigma * |fitted|^power, the fitted values updated until nlme's outer loop converges (tolerance 1e-10).")
  gls_case(paste0("nlmes_orthodont_gls_varexp_age_", s), "Orthodont",
           sprintf("gls(distance ~ age * Sex, data = Orthodont, weights = varExp(form = ~ age), method = \"%s\")", m),
           description = "Orthodont: SD = sigma * exp(expon * age)")
  lme_case(paste0("nlmes_bodyweight_lme_varpower_fitted_", s), "BodyWeight",
           sprintf("lme(weight ~ Time * Diet, data = BodyWeight, random = ~ Time | Rat, weights = varPower(), method = \"%s\", %s)", m, TIGHT_LME),
           description = "BodyWeight: random intercept and slope per Rat, variance a power of the (innermost-level) fitted values")
  ## ---------------------------------------------------------------- ARMA
  gls_case(paste0("nlmes_ovary_gls_arma11_", s), "Ovary",
           sprintf("gls(%s, data = Ovary, correlation = corARMA(p = 1, q = 1, form = ~ 1 | Mare), method = \"%s\")", OVARY_F, m),
           description = "Ovary: ARMA(1,1) within Mare (row order)")
  lme_case(paste0("nlmes_ovary_lme_arma20_", s), "Ovary",
           sprintf("lme(%s, data = Ovary, random = ~ 1 | Mare, correlation = corARMA(p = 2, q = 0), method = \"%s\")", OVARY_F, m),
           description = "Ovary: random intercept per Mare, AR(2) errors within Mare")
}

## one method each (the class of structure is what is tested; both methods appear above)
gls_case("nlmes_orthodont_gls_varpower_age_by_sex_reml", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, weights = varPower(form = ~ age | Sex), correlation = corCompSymm(form = ~ 1 | Subject), method = \"REML\")",
         description = "Orthodont: one power of age per Sex, compound symmetry within Subject")
gls_case("nlmes_orthodont_gls_varconstpower_age_by_sex_reml", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, weights = varConstPower(form = ~ age | Sex), method = \"REML\")",
         description = "Orthodont: SD = sigma * (const + age^power), const and power per Sex",
         notes = "const.Female goes to the boundary 0 (log scale to -Inf); nlme stops where the likelihood is flat in it.")
gls_case("nlmes_orthodont_gls_varfixed_age_reml", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, weights = varFixed(~ age), method = \"REML\")",
         description = "Orthodont: variance proportional to age (no parameter)")
gls_case("nlmes_orthodont_gls_varcomb_reml", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, weights = varComb(varIdent(form = ~ 1 | Sex), varPower(form = ~ age)), method = \"REML\")",
         description = "Orthodont: product of a per-Sex SD ratio and a power of age")
lme_case("nlmes_orthodont_lme_varexp_age_by_sex_ml", "Orthodont",
         "lme(distance ~ age * Sex, data = Orthodont, random = ~ 1 | Subject, weights = varExp(form = ~ age | Sex), method = \"ML\")",
         description = "Orthodont: random intercept, one exponent of age per Sex")

## ---------------------------------------------------------------- spatial, BodyWeight (Time | Rat)
SPATIAL <- list(
  list("gaus", "corGaus", FALSE, "ML"), list("gaus", "corGaus", TRUE, "REML"),
  list("spher", "corSpher", FALSE, "REML"), list("spher", "corSpher", TRUE, "ML"),
  list("lin", "corLin", FALSE, "ML"), list("lin", "corLin", TRUE, "REML"),
  list("ratio", "corRatio", FALSE, "REML"), list("ratio", "corRatio", TRUE, "ML")
)
for (sp in SPATIAL) {
  nug <- sp[[3]]
  gls_case(sprintf("nlmes_bodyweight_gls_%s%s_%s", sp[[1]], if (nug) "_nugget" else "", tolower(sp[[4]])), "BodyWeight",
           sprintf("gls(weight ~ Time * Diet, data = BodyWeight, correlation = %s(form = ~ Time | Rat, nugget = %s), method = \"%s\")",
                   sp[[2]], if (nug) "TRUE" else "FALSE", sp[[4]]),
           description = sprintf("BodyWeight: %s spatial correlation in Time within Rat%s", sp[[2]], if (nug) " with nugget" else ""))
}
lme_case("nlmes_bodyweight_lme_gaus_nugget_reml", "BodyWeight",
         "lme(weight ~ Time * Diet, data = BodyWeight, random = ~ 1 | Rat, correlation = corGaus(form = ~ Time, nugget = TRUE), method = \"REML\")",
         description = "BodyWeight: random intercept per Rat, Gaussian correlation with nugget in Time")
lme_case("nlmes_bodyweight_lme_lin_ml", "BodyWeight",
         "lme(weight ~ Time * Diet, data = BodyWeight, random = ~ 1 | Rat, correlation = corLin(form = ~ Time), method = \"ML\")",
         description = "BodyWeight: random intercept per Rat, linear correlation in Time (corSpher stops at nlminb's iteration limit here)")

## ---------------------------------------------------------------- spatial in two coordinates (Wheat2)
gls_case("nlmes_wheat2_gls_spher_nugget_reml", "Wheat2",
         "gls(yield ~ variety - 1, data = Wheat2, correlation = corSpher(c(28, 0.2), form = ~ latitude + longitude, nugget = TRUE), method = \"REML\")",
         description = "Wheat2: spherical correlation with nugget in (latitude, longitude), one group (Pinheiro & Bates 2000, sec. 5.3)")
gls_case("nlmes_wheat2_gls_ratio_nugget_manhattan_reml", "Wheat2",
         "gls(yield ~ variety - 1, data = Wheat2, correlation = corRatio(c(12.5, 0.2), form = ~ latitude + longitude, nugget = TRUE, metric = \"manhattan\"), method = \"REML\")",
         description = "Wheat2: rational quadratic correlation with nugget in (latitude, longitude), manhattan metric",
         notes = "Starting values as Pinheiro & Bates (2000, sec. 5.3); without them nlme's optimiser fails on this one-group design.")
gls_case("nlmes_wheat2_gls_spher_nugget_start36_reml", "Wheat2",
         "gls(yield ~ variety - 1, data = Wheat2, correlation = corSpher(c(36, 0.18), form = ~ latitude + longitude, nugget = TRUE), method = \"REML\")",
         description = "Wheat2: as nlmes_wheat2_gls_spher_nugget_reml, started near the higher optimum (range 36, nugget 0.18)",
         notes = "From Pinheiro & Bates' start c(28, 0.2) nlme stops at a local optimum (logLik 0.19 lower); from c(36, 0.18) it reaches the global one.")

## ---------------------------------------------------------------- combinations
lme_case("nlmes_bodyweight_lme_varexp_fitted_ml", "BodyWeight",
         sprintf("lme(weight ~ Time * Diet, data = BodyWeight, random = ~ 1 | Rat, weights = varExp(), method = \"ML\", %s)", TIGHT_LME),
         description = "BodyWeight: random intercept, SD = sigma * exp(expon * fitted)")
gls_case("nlmes_ovary_gls_arma01_reml", "Ovary",
         sprintf("gls(%s, data = Ovary, correlation = corARMA(q = 1, form = ~ 1 | Mare), method = \"REML\")", OVARY_F),
         description = "Ovary: MA(1) within Mare")
lme_case("nlmes_ovary_lme_arma11_ml", "Ovary",
         sprintf("lme(%s, data = Ovary, random = ~ 1 | Mare, correlation = corARMA(p = 1, q = 1), method = \"ML\")", OVARY_F),
         description = "Ovary: random intercept, ARMA(1,1) within Mare")
lme_case("nlmes_bodyweight_lme_ratio_nugget_reml", "BodyWeight",
         "lme(weight ~ Time * Diet, data = BodyWeight, random = ~ 1 | Rat, correlation = corRatio(form = ~ Time, nugget = TRUE), method = \"REML\")",
         description = "BodyWeight: random intercept, rational quadratic correlation with nugget in Time")
gls_case("nlmes_orthodont_gls_ar1_varpower_fitted_ml", "Orthodont",
         sprintf("gls(distance ~ age * Sex, data = Orthodont, correlation = corAR1(form = ~ 1 | Subject), weights = varPower(), method = \"ML\", %s)", TIGHT_GLS),
         description = "Orthodont: AR(1) within Subject and variance a power of the fitted values")
gls_case("nlmes_bodyweight_gls_gaus_varpower_time_reml", "BodyWeight",
         "gls(weight ~ Time * Diet, data = BodyWeight, correlation = corGaus(form = ~ Time | Rat), weights = varPower(form = ~ Time), method = \"REML\")",
         description = "BodyWeight: Gaussian correlation in Time within Rat and SD a power of Time")

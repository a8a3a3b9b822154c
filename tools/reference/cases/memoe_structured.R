## Class-specific residual structures of MEMoE experts (issue 12): with one expert a structured MEMoE is
## nlme's lme by maximum likelihood. These ML fits (tight tolerances, so the references are the optima
## themselves) are the references of tests/golden/test_memoe_structured_reference.py.

TIGHT <- "control = lmeControl(tolerance = 1e-10, maxIter = 500, msMaxIter = 500, niterEM = 0)"
OVARY_F <- "follicles ~ sin(2*pi*Time) + cos(2*pi*Time)"

lme_case("memoe_struct_ovary_lme_ar1_ml", "Ovary",
         sprintf("lme(%s, data = Ovary, random = ~ 1 | Mare, correlation = corAR1(), method = \"ML\", %s)", OVARY_F, TIGHT),
         description = "Ovary: random intercept per Mare, AR(1) within Mare (one-expert structured MEMoE reference)")
lme_case("memoe_struct_ovary_lme_ar1_varexp_ml", "Ovary",
         sprintf("lme(%s, data = Ovary, random = ~ 1 | Mare, correlation = corAR1(), weights = varExp(form = ~ Time), method = \"ML\", %s)", OVARY_F, TIGHT),
         description = "Ovary: random intercept, AR(1) within Mare and SD = sigma * exp(expon * Time)")
lme_case("memoe_struct_bodyweight_lme_car1_varident_ml", "BodyWeight",
         sprintf("lme(weight ~ Time * Diet, data = BodyWeight, random = ~ Time | Rat, correlation = corCAR1(form = ~ Time), weights = varIdent(form = ~ 1 | Diet), method = \"ML\", %s)", TIGHT),
         description = "BodyWeight: random intercept and slope per Rat, continuous AR(1) in Time, one SD ratio per Diet")
lme_case("memoe_struct_orthodont_lme_varident_ml", "Orthodont",
         sprintf("lme(distance ~ age * Sex, data = Orthodont, random = ~ 1 | Subject, weights = varIdent(form = ~ 1 | Sex), method = \"ML\", %s)", TIGHT),
         description = "Orthodont: random intercept per Subject, residual SD ratio per Sex")
lme_case("memoe_struct_orthodont_lme_compsymm_ml", "Orthodont",
         sprintf("lme(distance ~ age, data = Orthodont, random = ~ age - 1 | Subject, correlation = corCompSymm(), method = \"ML\", %s)", TIGHT),
         description = "Orthodont: random age slope per Subject, compound-symmetric residuals within Subject")

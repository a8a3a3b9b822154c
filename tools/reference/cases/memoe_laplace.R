## Laplace-EM for non-Gaussian MEMoE experts (issue 12): a K = 1 MEMoE with Poisson experts is glmer
## with one grouping factor (the subject). Held to R's logLik, fixed effects and conditional modes.
glmer_case(
  "grouseticks_poisson_brood_laplace", "grouseticks",
  "glmer(TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD), data = grouseticks, family = poisson)",
  "Poisson GLMM, one grouping factor (the K = 1 MEMoE with Poisson experts), Laplace"
)
glmer_case(
  "grouseticks_poisson_brood_agq9", "grouseticks",
  "glmer(TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD), data = grouseticks, family = poisson, nAGQ = 9)",
  "Poisson GLMM, one grouping factor (the K = 1 MEMoE with Poisson experts), adaptive Gauss-Hermite, 9 nodes"
)

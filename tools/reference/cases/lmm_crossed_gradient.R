## Issue 13 (analytic gradient): crossed designs large enough for memoe's blocked dense Schur path,
## where memoe fits theta with a projected BFGS on the analytic gradient instead of BOBYQA.
##
## Data: simulated InstEval-shaped design (set.seed(1313)): 4,000 ratings of 300 students `s` by
## 90 lecturers `d` in 8 departments `k`, a covariate `x`, a within-student slope on `x`; `y0` has no
## department effect (a boundary fit).
local({
  set.seed(1313)
  n <- 4000
  s <- sample.int(300, n, replace = TRUE); s[1:300] <- 1:300
  d <- sample.int(90, n, replace = TRUE); d[1:90] <- 1:90
  k <- ((d - 1) %% 8) + 1
  x <- round(rnorm(n), 4)
  bs <- rnorm(300, sd = 0.6); bx <- rnorm(300, sd = 0.3); bd <- rnorm(90, sd = 0.4); bk <- rnorm(8, sd = 0.5)
  e <- rnorm(n)
  y <- round(2 + 0.3 * x + bs[s] + bx[s] * x + bd[d] + bk[k] + e, 4)
  y0 <- round(2 + 0.3 * x + bs[s] + bd[d] + e, 4)
  df <- data.frame(y = y, y0 = y0, x = x, s = factor(paste0("s", s)), d = factor(paste0("d", d)),
                   k = factor(paste0("k", k)))
  register_dataset("crossed_grad", df,
                   "simulated InstEval-shaped crossed ratings: students s x lecturers d nested in departments k",
                   "simulated in tools/reference/cases/lmm_crossed_gradient.R with set.seed(1313), rounded to 4 digits")
})

for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("lmm_crossed3_", if (reml) "reml" else "ml"), "crossed_grad",
            sprintf("lmer(y ~ x + (1 | s) + (1 | d) + (1 | k), data = crossed_grad, REML = %s)", reml),
            description = "three scalar crossed/nested factors (dense Schur path, gradient optimiser in memoe)",
            inference = FALSE, rows = FALSE, ranefs = FALSE)
}
lmer_case("lmm_crossed_slope_reml", "crossed_grad",
          "lmer(y ~ x + (1 + x | s) + (1 | d), data = crossed_grad, REML = TRUE)",
          description = "vector-valued first factor and a scalar second factor (dense Schur path)",
          inference = FALSE, rows = FALSE, ranefs = FALSE)
lmer_case("lmm_crossed_boundary_reml", "crossed_grad",
          "lmer(y0 ~ x + (1 | s) + (1 | d) + (1 | k), data = crossed_grad, REML = TRUE)",
          description = "no department effect in the simulation: a boundary (singular) fit on the dense path",
          inference = FALSE, rows = FALSE, ranefs = FALSE)

## glmm_families.R -- issue 11: GLMM families with a dispersion (Gamma, inverse Gaussian), the negative
## binomial (lme4::glmer.nb and glmmTMB nbinom2), profile intervals of a binomial GLMM, and GLMs without
## random effects (the null model of the sigma_u^2 = 0 test). Sourced by make_reference.R.
suppressPackageStartupMessages(library(MASS))
has_tmb <- requireNamespace("glmmTMB", quietly = TRUE)

## ------------------------------------------------------------ datasets --
## Gamma and inverse-Gaussian responses with a random intercept (30 groups x 8 rows)
local({
  set.seed(1101)
  G <- 30L; m <- 8L
  g <- factor(sprintf("g%02d", rep(seq_len(G), each = m)))
  x <- round(rnorm(G * m), 4)
  trt <- factor(rep(c("a", "b"), length.out = G * m))
  u <- rnorm(G, sd = 0.4)[as.integer(g)]
  mu <- exp(1 + 0.5 * x + 0.3 * (trt == "b") + u)
  shape <- 4
  y <- round(rgamma(G * m, shape = shape, rate = shape / mu), 6)
  ## inverse Gaussian by Michael, Schucany & Haas (1976), lambda = 6
  lam <- 6; nu <- rnorm(G * m)^2
  xx <- mu + mu^2 * nu / (2 * lam) - mu / (2 * lam) * sqrt(4 * mu * lam * nu + mu^2 * nu^2)
  yig <- ifelse(runif(G * m) <= mu / (mu + xx), xx, mu^2 / xx)
  ## prior weights and an offset for the weighted / offset cases (drawn last: the columns above are unchanged)
  w <- round(runif(G * m, 0.5, 2), 4)
  off <- round(runif(G * m, -0.2, 0.2), 4)
  register_dataset("glmm_gamma_sim", data.frame(y = y, yig = round(yig, 6), x = x, trt = trt, g = g, w = w, off = off),
                   "Simulated positive responses with a random intercept: y ~ Gamma(shape 4), yig ~ inverse Gaussian (lambda 6), log mean 1 + 0.5 x + 0.3 [trt = b] + u_g, u_g ~ N(0, 0.4^2); w (prior weights) and off (offset) are unrelated uniform draws for the weighted cases",
                   "simulated in tools/reference/cases/glmm_families.R (set.seed(1101))")
})
## negative binomial counts (40 groups x 10 rows), theta = 2
local({
  set.seed(1102)
  G <- 40L; m <- 10L
  g <- factor(sprintf("s%02d", rep(seq_len(G), each = m)))
  x <- round(runif(G * m, -1, 1), 4)
  u <- rnorm(G, sd = 0.5)[as.integer(g)]
  y <- rnbinom(G * m, size = 2, mu = exp(0.8 + 0.6 * x + u))
  register_dataset("glmm_nb_sim", data.frame(y = y, x = x, g = g),
                   "Simulated overdispersed counts: y ~ NB2(mu, theta = 2), log mu = 0.8 + 0.6 x + u_g, u_g ~ N(0, 0.5^2)",
                   "simulated in tools/reference/cases/glmm_families.R (set.seed(1102))")
})

TIGHT_GLMER <- "glmerControl(optimizer = 'nloptwrap', tolPwrss = 1e-13, optCtrl = list(ftol_abs = 0, ftol_rel = 1e-15, xtol_abs = 1e-12, xtol_rel = 0, maxeval = 1e5))"
with_control <- function(call, ctl) sub("\\)\\s*$", paste0(", control = ", ctl, ")"), call)

## the glmer results plus the dispersion, the profile/Wald intervals and a tight refit
glmer_family_case <- function(case_id, dataset, r_call, description, profile = FALSE, nb = FALSE, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  assign(".fit", fit, envir = globalenv())
  res <- res_glmer(fit)
  res$sigma <- sigma(fit)
  res$use_sc <- as.logical(fit@devcomp$dims[["useSc"]])
  res$pearson_residuals <- arr(as.double(residuals(fit, type = "pearson")))
  res$deviance_residuals <- arr(as.double(residuals(fit, type = "deviance")))
  res$response_residuals <- arr(as.double(residuals(fit, type = "response")))
  res$confint_wald <- local({
    ci <- confint(fit, method = "Wald", oldNames = FALSE)
    ci <- ci[!is.na(ci[, 1]), , drop = FALSE]
    list(level = 0.95, table = lapply(seq_len(nrow(ci)), function(i)
      list(param = rownames(ci)[i], lower = ci[i, 1], upper = ci[i, 2])))
  })
  extra_calls <- list(fit = paste(".fit <-", r_call))
  if (nb) {
    th <- getME(fit, "glmer.nb.theta")
    res$nb_theta <- th
  }
  if (profile) {
    pc <- "confint(.fit, method = 'profile', level = 0.95, oldNames = FALSE)"
    ci <- run_call(pc)$value
    res$confint_profile <- list(level = 0.95, table = lapply(seq_len(nrow(ci)), function(i)
      list(param = rownames(ci)[i], lower = ci[i, 1], upper = ci[i, 2])))
    extra_calls$confint_profile <- pc
  }
  ## glmer.nb's own tol= does not reach optimize() in lme4 1.1-31 (it is passed on to glmer): refine theta
  ## with lme4:::optTheta at tol 1e-10 from the default fit
  tcall <- if (nb) sprintf("lme4:::optTheta(.fit, interval = log(getME(.fit, 'glmer.nb.theta')) + c(-0.5, 0.5), tol = 1e-10, control = %s)",
                           sub("tolPwrss = 1e-13", "tolPwrss = 1e-10", TIGHT_GLMER))
           else with_control(r_call, TIGHT_GLMER)
  rt <- try_text(tcall)
  if (inherits(rt, "failed")) {
    res$tight_refit <- list(r_call = tcall, error = rt$error)
  } else {
  ft <- rt$value
  res$tight_refit <- list(
    r_call = tcall, fixef = jvec(fixef(ft)), theta = jvec(getME(ft, "theta")), sigma = sigma(ft),
    loglik = as.numeric(logLik(ft)), deviance = deviance(ft),
    nb_theta = if (nb) getME(ft, "glmer.nb.theta") else NULL,
    vcov = jmat(as.matrix(vcov(ft))),
    loglik_gain_over_default = as.numeric(logLik(ft)) - as.numeric(logLik(fit)),
    warnings = arr(rt$warnings))
  }
  extra_calls$tight_refit <- tcall
  make_case(case_id, dataset, r_call, "lme4", "Laplace", res,
            fit_info = c(fitinfo_lmer(fit, rc), list(nAGQ = 1L)), description = description,
            family = list(family = family(fit)$family, link = family(fit)$link),
            extra_calls = extra_calls, packages = c("lme4", "MASS"),
            notes = c(notes,
              "loglik: lme4's Laplace deviance ldL2 + ||u||^2 + family$aic(y, n, mu, wt, dev), dev = sum of the conditional unit deviances; for Gamma and inverse.gaussian the aic profiles the dispersion as dev / sum(wt) and adds 2 (R's aic functions count the dispersion parameter).",
              "sigma: lme4's sigma() for a GLMM with a scale: sqrt((sum of squared Pearson residuals + ||u||^2) / n).",
              "tight_refit: tolPwrss = 1e-13 makes PIRLS converge fully, so the objective is the exact Laplace deviance."))
}

glmer_family_case("gamma_log_glmer", "glmm_gamma_sim",
  "glmer(y ~ x + trt + (1 | g), data = glmm_gamma_sim, family = Gamma(link = 'log'))",
  "Gamma GLMM, log link, random intercept (lme4 glmer, Laplace)")
glmer_family_case("gamma_inverse_glmer", "glmm_gamma_sim",
  "glmer(y ~ x + trt + (1 | g), data = glmm_gamma_sim, family = Gamma(link = 'inverse'))",
  "Gamma GLMM, canonical inverse link, random intercept (lme4 glmer, Laplace)")
glmer_family_case("invgauss_log_glmer", "glmm_gamma_sim",
  "glmer(yig ~ x + trt + (1 | g), data = glmm_gamma_sim, family = inverse.gaussian(link = 'log'))",
  "inverse Gaussian GLMM, log link, random intercept (lme4 glmer, Laplace)")
glmer_family_case("gamma_log_weights_glmer", "glmm_gamma_sim",
  "glmer(y ~ x + trt + (1 | g), data = glmm_gamma_sim, family = Gamma(link = 'log'), weights = w)",
  "Gamma GLMM, log link, with prior weights (the dispersion is sum(wt d_i) / sum(wt))")
glmer_family_case("gaussian_log_offset_glmer", "glmm_gamma_sim",
  "glmer(y ~ x + trt + (1 | g) + offset(off), data = glmm_gamma_sim, family = gaussian(link = 'log'), weights = w)",
  "Gaussian GLMM with a log link, prior weights and an offset (lme4's Laplace with the Gaussian aic)")
glmer_family_case("nb_sim_glmer_nb", "glmm_nb_sim",
  "glmer.nb(y ~ x + (1 | g), data = glmm_nb_sim)",
  "negative binomial (NB2) GLMM by lme4::glmer.nb (theta by alternating profile optimisation)", nb = TRUE)
glmer_family_case("grouseticks_glmer_nb", "grouseticks",
  "glmer.nb(TICKS ~ YEAR + HEIGHT_scaled + (1 | LOCATION), data = grouseticks)",
  "grouseticks: negative binomial GLMM with a random LOCATION intercept by lme4::glmer.nb", nb = TRUE)
glmer_family_case("cbpp_binomial_profile", "cbpp",
  "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)",
  "cbpp binomial GLMM with confint(method = 'profile') and Wald intervals", profile = TRUE)

## ------------------------------------------------------------- glmmTMB --
tmb_case <- function(case_id, dataset, r_call, description) {
  if (!has_tmb) { cat("glmmTMB not installed: skipping", case_id, "\n"); return(invisible(NULL)) }
  rc <- run_call(r_call)
  fit <- rc$value
  ll <- logLik(fit)
  sm <- summary(fit)
  ct <- sm$coefficients$cond
  vc <- glmmTMB::VarCorr(fit)$cond
  sdr <- fit$sdr
  par <- fit$fit$par
  res <- list(
    fixef = jvec(glmmTMB::fixef(fit)$cond),
    coef_table = coef_records(ct, COEF_MAP_GLMER),
    vcov = jmat(as.matrix(vcov(fit)$cond)),
    loglik = as.numeric(ll), df = as.numeric(attr(ll, "df")),
    aic = AIC(fit), bic = BIC(fit), nobs = nobs(fit),
    nb_theta = sigma(fit),
    log_theta = unname(par[names(par) %in% c("betad", "betadisp")][1]),
    log_theta_se = unname(sqrt(diag(sdr$cov.fixed))[names(par) %in% c("betad", "betadisp")][1]),
    re_sd = jvec(vapply(vc, function(v) attr(v, "stddev")[[1]], 0)),
    log_re_sd = unname(par[names(par) == "theta"]),
    log_re_sd_se = unname(sqrt(diag(sdr$cov.fixed))[names(par) == "theta"]),
    convergence = fit$fit$convergence)
  make_case(case_id, dataset, r_call, "glmmTMB", "Laplace", res, description = description,
            family = list(family = "nbinom2", link = "log"), packages = c("glmmTMB", "TMB"),
            extra_calls = list(fit = r_call),
            notes = c("glmmTMB's Laplace approximation uses the exact (observed) Hessian of the joint log density in the random effects; lme4 uses the expected (Fisher) working weights. For a non-canonical link (NB2 with log link) the two Laplace likelihoods differ slightly, so glmer.nb and glmmTMB reach slightly different optima.",
                      "nb_theta = sigma(fit) (glmmTMB's dispersion for nbinom2 is theta); log_theta and its SE from the joint fit (betadisp / betad parameter)."))
}
tmb_case("nb_sim_glmmtmb", "glmm_nb_sim",
         "glmmTMB::glmmTMB(y ~ x + (1 | g), data = glmm_nb_sim, family = glmmTMB::nbinom2)",
         "negative binomial (NB2) GLMM by glmmTMB (joint ML of theta)")
tmb_case("grouseticks_glmmtmb_nb", "grouseticks",
         "glmmTMB::glmmTMB(TICKS ~ YEAR + HEIGHT_scaled + (1 | LOCATION), data = grouseticks, family = glmmTMB::nbinom2)",
         "grouseticks: NB2 GLMM with a random LOCATION intercept by glmmTMB")

## ---------------------------------------------------------------- GLMs --
glm_case <- function(case_id, dataset, r_call, description, glmer_call = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  sm <- summary(fit)
  ll <- logLik(fit)
  ct <- sm$coefficients
  map <- list(estimate = "Estimate", std_error = "Std. Error", z_value = "z value", t_value = "t value",
              p_value = if ("Pr(>|z|)" %in% colnames(ct)) "Pr(>|z|)" else "Pr(>|t|)")
  res <- list(
    coef = jvec(coef(fit)), coef_table = coef_records(ct, map),
    vcov = jmat(vcov(fit)), dispersion = sm$dispersion,
    loglik = as.numeric(ll), df = as.numeric(attr(ll, "df")), aic = AIC(fit), bic = BIC(fit),
    deviance = deviance(fit), null_deviance = fit$null.deviance, df_residual = fit$df.residual,
    nobs = nobs(fit),
    fitted = arr(as.double(fitted(fit))),
    deviance_residuals = arr(as.double(residuals(fit, type = "deviance"))),
    pearson_residuals = arr(as.double(residuals(fit, type = "pearson"))),
    theta = if (inherits(fit, "negbin")) fit$theta else NULL,
    theta_se = if (inherits(fit, "negbin")) fit$SE.theta else NULL)
  extra_calls <- list(fit = r_call)
  ## glm.fit stops when the deviance changes by < 1e-8 relative: a tight refit shows the exact MLE
  tcall <- sub("\\)\\s*$", ", control = glm.control(epsilon = 1e-15, maxit = 200))", r_call)
  ft <- run_call(tcall)$value
  res$tight_refit <- list(r_call = tcall, coef = jvec(coef(ft)), loglik = as.numeric(logLik(ft)),
                          deviance = deviance(ft), std_error = jvec(sqrt(diag(vcov(ft)))),
                          theta = if (inherits(ft, "negbin")) ft$theta else NULL,
                          theta_se = if (inherits(ft, "negbin")) ft$SE.theta else NULL)
  extra_calls$tight_refit <- tcall
  if (!is.null(glmer_call)) {
    ## the chi-bar-square test of sigma_u^2 = 0: 0.5 chi2(0) + 0.5 chi2(1)
    g1 <- run_call(glmer_call)$value
    lrt <- 2 * (as.numeric(logLik(g1)) - as.numeric(ll))
    res$boundary_lrt <- list(glmer_call = glmer_call, glmer_loglik = as.numeric(logLik(g1)),
                             lrt = lrt, p_chibar = 0.5 * stats::pchisq(lrt, 1, lower.tail = FALSE),
                             r_code = "0.5 * pchisq(2 * (logLik(glmer_fit) - logLik(glm_fit)), 1, lower.tail = FALSE)")
    extra_calls$glmer <- glmer_call
  }
  make_case(case_id, dataset, r_call, if (inherits(fit, "negbin")) "MASS" else "stats", "ML", res,
            description = description, family = list(family = family(fit)$family, link = family(fit)$link),
            extra_calls = extra_calls,
            notes = c("glm: coefficient SEs use summary.glm's dispersion (Pearson chi-square / df.residual for Gamma and inverse.gaussian, 1 for binomial and poisson); logLik profiles the dispersion as deviance / n (family$aic)."))
}
glm_case("cbpp_binomial_glm", "cbpp",
         "glm(cbind(incidence, size - incidence) ~ period, data = cbpp, family = binomial)",
         "cbpp binomial GLM (no random effects) and the chi-bar-square test of the herd variance",
         glmer_call = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial, control = glmerControl(tolPwrss = 1e-13))")
glm_case("grouseticks_poisson_glm", "grouseticks",
         "glm(TICKS ~ YEAR + HEIGHT_scaled, data = grouseticks, family = poisson)",
         "grouseticks Poisson GLM (no random effects)",
         glmer_call = "glmer(TICKS ~ YEAR + HEIGHT_scaled + (1 | LOCATION), data = grouseticks, family = poisson, control = glmerControl(tolPwrss = 1e-13))")
glm_case("gamma_log_glm", "glmm_gamma_sim",
         "glm(y ~ x + trt, data = glmm_gamma_sim, family = Gamma(link = 'log'))",
         "Gamma GLM, log link (no random effects)")
glm_case("invgauss_log_glm", "glmm_gamma_sim",
         "glm(yig ~ x + trt, data = glmm_gamma_sim, family = inverse.gaussian(link = 'log'))",
         "inverse Gaussian GLM, log link (no random effects)")
glm_case("gaussian_log_offset_glm", "glmm_gamma_sim",
         "glm(y ~ x + trt + offset(off), data = glmm_gamma_sim, family = gaussian(link = 'log'), weights = w)",
         "Gaussian GLM with a log link, prior weights and an offset")
glm_case("gamma_log_weights_glm", "glmm_gamma_sim",
         "glm(y ~ x + trt, data = glmm_gamma_sim, family = Gamma(link = 'log'), weights = w)",
         "Gamma GLM, log link, prior weights")
glm_case("nb_sim_glm_nb", "glmm_nb_sim",
         "MASS::glm.nb(y ~ x, data = glmm_nb_sim)",
         "negative binomial GLM by MASS::glm.nb (no random effects)")

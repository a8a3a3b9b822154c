## Nested random effects in nlme::lme (issue 11): several grouping levels,
## random = list(Dog = ~ day, Side = ~ 1) and ~ 1 | Block/Variety, with and
## without a residual structure within the innermost groups.
##
## Each case holds res_lme()'s results plus, for the nested levels:
##   theta_levels   per level (outermost first), lme4's theta of Psi_q / sigma^2
##                  (column-wise lower triangle of the lower Cholesky factor);
##   fitted_levels / residuals_levels   fitted(fit, level = 0:Q) column by column;
##   coef_levels    coef(fit, level = q) per level (records with the group label);
##   ddf            the t table's and anova's containment df (fixDF);
##   predictions    predict(fit, newdata, level = 0:Q) on a few rows;
##   lmer_equivalent  (no residual structure) the same marginal model by lmerTest::lmer: its
##                  logLik and Satterthwaite t table;
##   tight_refit    the best of the default fit and two refits with other optimiser
##                  settings (the "tight optimum" the tests compare estimates with).
## nlme labels inner groups "outer/inner" (1/L); memoe's factor Dog:Side labels
## them "1:L" and the test maps one to the other.

register_dataset("Pixel", nlme::Pixel,
                 "Pixel intensities of CT scans: left and right lymph nodes (Side) within Dogs over days",
                 "nlme::Pixel (groupedData converted to data.frame)")
register_dataset("Oats", nlme::Oats,
                 "Split-plot oats yields: Variety plots within Blocks, nitrogen subplots",
                 "nlme::Oats (groupedData converted to data.frame)")

nested_theta <- function(fit) {
  re <- fit$modelStruct$reStruct
  ## reStruct lists the innermost level first; report outermost first
  out <- list()
  for (g in rev(names(re))) {
    P <- as.matrix(re[[g]])
    L <- t(chol(P))
    nm <- colnames(P)
    idx <- which(lower.tri(L, diag = TRUE), arr.ind = TRUE)
    idx <- idx[order(idx[, 2], idx[, 1]), , drop = FALSE]
    lab <- ifelse(idx[, 1] == idx[, 2], nm[idx[, 1]], paste(nm[idx[, 1]], nm[idx[, 2]], sep = "."))
    out[[g]] <- jvec(L[idx], lab)
  }
  out
}
nested_levels <- function(fit) {
  Q <- fit$dims$Q
  ft <- fitted(fit, level = 0:Q); rs <- residuals(fit, level = 0:Q)
  lev <- colnames(ft)
  list(
    level_names = arr(lev),
    fitted_levels = setNames(lapply(seq_along(lev), function(k) arr(as.double(ft[, k]))), lev),
    residuals_levels = setNames(lapply(seq_along(lev), function(k) arr(as.double(rs[, k]))), lev),
    coef_levels = setNames(lapply(seq_len(Q), function(q) {
      cf <- coef(fit, level = q)
      lapply(seq_len(nrow(cf)), function(j)
        c(list(group = rownames(cf)[j]), setNames(as.list(as.double(cf[j, ])), colnames(cf))))
    }), lev[-1])
  )
}
nested_case <- function(case_id, dataset, r_call, description, newdata = NULL, notes = NULL, lmer_call = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  assign(".fit", fit, envir = globalenv())
  res <- res_lme(fit)
  res$theta_levels <- nested_theta(fit)
  res <- c(res, nested_levels(fit))
  res$ddf <- list(coef = jvec(fit$fixDF$X), terms = jvec(fit$fixDF$terms))
  if (!is.null(newdata)) {
    Q <- fit$dims$Q
    p <- predict(fit, newdata = newdata, level = 0:Q)
    lev <- colnames(p)[colnames(p) %in% c("predict.fixed", paste0("predict.", names(fit$groups)))]
    res$predictions <- list(newdata = df_records(newdata),
                            levels = setNames(lapply(lev, function(k) arr(as.double(p[[k]]))), lev))
  }
  ## the tight optimum: the best (highest logLik) of nlme's default fit and refits with other
  ## optimiser settings; nlme's nlminb usually wins (optim stops earlier on these likelihoods)
  controls <- c(nlminb_no_em = "lmeControl(msMaxIter = 1000, msMaxEval = 5000, niterEM = 0)",
                optim_bfgs = "lmeControl(opt = \"optim\", optimMethod = \"BFGS\", msMaxIter = 1000, reltol = 1e-15)")
  tight_call <- r_call; tr <- fit
  for (ctl in controls) {
    cl <- sub("\\)$", paste0(", control = ", ctl, ")"), r_call)
    cand <- tryCatch(run_call(cl)$value, error = function(e) NULL)
    if (!is.null(cand) && as.numeric(logLik(cand)) > as.numeric(logLik(tr))) { tr <- cand; tight_call <- cl }
  }
  res$tight_refit <- list(
    r_call = tight_call,
    loglik = as.numeric(logLik(tr)), fixef = jvec(fixef(tr)), vcov = jmat(vcov(tr)), sigma = tr$sigma,
    theta_levels = nested_theta(tr), varcorr = varcorr_lme(tr), ranef = ranef_lme(tr),
    corStruct = struct_info(tr$modelStruct$corStruct, "cor"),
    varStruct = struct_info(tr$modelStruct$varStruct, "var"),
    coef_table = coef_records(summary(tr)$tTable, COEF_MAP_NLME),
    fitted_levels = nested_levels(tr)$fitted_levels
  )
  if (!is.null(lmer_call)) {
    ## the same marginal model through lme4 (no residual structure): lmerTest's Satterthwaite df
    lm <- run_call(lmer_call)$value
    ct <- coef(summary(lm))
    res$lmer_equivalent <- list(r_call = lmer_call, loglik = as.numeric(logLik(lm)),
                                satterthwaite = coef_records(ct, COEF_MAP_LMERTEST))
  }
  make_case(case_id, dataset, r_call, "nlme", fit$method, res,
            fit_info = fitinfo_nlme(fit, rc), description = description,
            extra_calls = list(fit = paste(".fit <-", r_call), tight_refit = tight_call),
            notes = c(notes,
                      "theta_levels: per grouping level (outermost first) the column-wise lower triangle of the lower Cholesky factor of Psi_q / sigma^2, named by the random-effects columns.",
                      "ranef / coef_levels: nlme labels the inner groups outer/inner (e.g. 1/L for Dog 1, Side L).",
                      "coef_table df, anova den_df and ddf are nlme's containment (between/within) degrees of freedom over the nesting levels.",
                      "tight_refit: the highest logLik among the default fit and refits with lmeControl(niterEM = 0, msMaxIter = 1000) and lmeControl(opt = 'optim', optimMethod = 'BFGS', reltol = 1e-15); its r_call says which."),
            contrasts = contrast_info(fit$contrasts), packages = "nlme")
}

pixel_new <- data.frame(Dog = factor(c("1", "4", "10", "7"), levels = levels(Pixel$Dog)),
                        Side = factor(c("L", "R", "L", "R"), levels = levels(Pixel$Side)),
                        day = c(3, 8, 12.5, 20))
for (m in c("REML", "ML")) {
  nested_case(paste0("pixel_lme_nested_", tolower(m)), "Pixel",
              sprintf("lme(pixel ~ day + I(day^2), data = Pixel, random = list(Dog = ~ day, Side = ~ 1), method = \"%s\")", m),
              description = "Pixel: random intercept and slope on day per Dog, random intercept per Side within Dog",
              newdata = pixel_new,
              lmer_call = sprintf("lmerTest::lmer(pixel ~ day + I(day^2) + (day | Dog) + (1 | Dog:Side), data = Pixel, REML = %s)", m == "REML"))
}
nested_case("pixel_lme_nested_ar1_reml", "Pixel",
            "lme(pixel ~ day + I(day^2), data = Pixel, random = list(Dog = ~ day, Side = ~ 1), correlation = corAR1(), method = \"REML\")",
            description = "Pixel with AR(1) errors within the innermost groups (Side within Dog), in row order",
            newdata = pixel_new)
nested_case("pixel_lme_nested_varident_ml", "Pixel",
            "lme(pixel ~ day + I(day^2), data = Pixel, random = list(Dog = ~ day, Side = ~ 1), weights = varIdent(form = ~ 1 | Side), method = \"ML\")",
            description = "Pixel with a residual SD per Side (varIdent)")
nested_case("oats_lme_nested_reml", "Oats",
            "lme(yield ~ nitro + Variety, data = Oats, random = ~ 1 | Block/Variety, method = \"REML\")",
            description = "Oats split plot: random intercepts for Block and Variety within Block",
            lmer_call = "lmerTest::lmer(yield ~ nitro + Variety + (1 | Block/Variety), data = Oats, REML = TRUE)",
            newdata = data.frame(Block = factor(c("I", "VI", "III"), levels = levels(Oats$Block), ordered = is.ordered(Oats$Block)),
                                 Variety = factor(c("Victory", "Marvellous", "Golden Rain"), levels = levels(Oats$Variety)),
                                 nitro = c(0.1, 0.3, 0.6)))
nested_case("pastes_lme_nested_ml", "Pastes",
            "lme(strength ~ 1, data = Pastes, random = ~ 1 | batch/cask, method = \"ML\")",
            description = "Pastes: casks within batches, random intercepts at both levels, ML",
            lmer_call = "lmerTest::lmer(strength ~ 1 + (1 | batch/cask), data = Pastes, REML = FALSE)")

## Issue 11 (LMM part): lme4 prior weights and offsets, stateful formula transforms (poly, scale),
## `||` with a factor, and lmList (two-stage per-group OLS).
##
## Data: sleepstudy plus simulated prior weights `w`, an offset `o`, a factor `phase` that varies
## within subjects and `fday` = factor(Days) for a crossed design (set.seed(1111)).
local({
  set.seed(1111)
  ss <- lme4::sleepstudy
  n <- nrow(ss)
  d <- data.frame(Reaction = ss$Reaction, Days = ss$Days, Subject = ss$Subject,
                  w = round(runif(n, 0.3, 3), 4), o = round(rnorm(n, sd = 5), 4),
                  phase = factor(ifelse(ss$Days < 3, "early", ifelse(ss$Days < 7, "mid", "late")),
                                 levels = c("early", "mid", "late")),
                  fday = factor(ss$Days))
  register_dataset("sleep_weighted", d,
                   "sleepstudy with prior weights w, an offset o, a within-subject factor phase and fday = factor(Days)",
                   "lme4::sleepstudy; w = runif(0.3, 3), o = rnorm(sd = 5) with set.seed(1111), rounded to 4 digits")
})

nd_weighted <- function() {
  data.frame(Days = c(0, 2.5, 7, 10, 12, 4),
             Subject = factor(c("308", "309", "330", "372", "308", "351"), levels = levels(sleep_weighted$Subject)),
             o = c(1, -2, 0.5, 3, 0, -1), w = c(1, 2, 3, 4, 5, 6),
             phase = factor(c("early", "early", "late", "late", "late", "mid"), levels = levels(sleep_weighted$phase)),
             fday = factor(c("0", "2", "7", "9", "9", "4"), levels = levels(sleep_weighted$fday)))
}
weighted_extra <- function(fit) {
  nd <- nd_weighted()
  list(
    residuals_pearson = arr(as.double(residuals(fit, type = "pearson"))),
    residuals_response = arr(as.double(residuals(fit, type = "response"))),
    residuals_scaled = arr(as.double(residuals(fit, scaled = TRUE))),
    predictions = list(
      newdata = df_records(nd),
      population = arr(as.double(predict(fit, newdata = nd, re.form = NA))),
      conditional = arr(as.double(predict(fit, newdata = nd))))
  )
}
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("lmm_weights_offset_", if (reml) "reml" else "ml"), "sleep_weighted",
            sprintf("lmer(Reaction ~ Days + offset(o) + (Days | Subject), data = sleep_weighted, weights = w, REML = %s)", reml),
            description = "prior weights and a formula offset, correlated random slope (one grouping factor)",
            profile = !reml, extra = weighted_extra)
}
lmer_case("lmm_weights_crossed_reml", "sleep_weighted",
          "lmer(Reaction ~ Days + (1 | Subject) + (1 | fday), data = sleep_weighted, weights = w, offset = o, REML = TRUE)",
          description = "prior weights and the offset= argument with crossed random intercepts (Subject x fday)",
          extra = weighted_extra)
lmer_case("lmm_weights_only_ml", "sleep_weighted",
          "lmer(Reaction ~ Days + (Days || Subject), data = sleep_weighted, weights = w, REML = FALSE)",
          description = "prior weights only, uncorrelated random slope", inference = FALSE, extra = weighted_extra)

transform_extra <- function(fit) {
  nd <- nd_weighted()
  list(predictions = list(
    newdata = df_records(nd),
    population = arr(as.double(predict(fit, newdata = nd, re.form = NA))),
    conditional = arr(as.double(predict(fit, newdata = nd)))))
}
lmer_case("lmm_poly_reml", "sleep_weighted",
          "lmer(Reaction ~ poly(Days, 2) + (Days | Subject), data = sleep_weighted, REML = TRUE)",
          description = "R's orthogonal poly(Days, 2) in the fixed effects; predictions on new data replay it",
          inference = FALSE, extra = transform_extra)
lmer_case("lmm_scale_ml", "sleep_weighted",
          "lmer(Reaction ~ scale(Days) + (scale(Days) | Subject), data = sleep_weighted, REML = FALSE)",
          description = "scale(Days) in the fixed and random parts; predictions on new data replay its centre and scale",
          inference = FALSE, extra = transform_extra)
lmer_case("lmm_doublebar_factor_reml", "sleep_weighted",
          "lmer(Reaction ~ Days + phase + (Days + phase || Subject), data = sleep_weighted, REML = TRUE)",
          description = "(Days + phase || Subject) with a factor: lme4 splits it into (1|S) + (0+Days|S) + (0+phase|S), the last with a full 3x3 covariance",
          inference = FALSE, extra = transform_extra)

## lmList: per-subject OLS fits, pooled-SD coefficient table and confint
lmlist_results <- function(fit) {
  s <- summary(fit)
  cf <- coef(fit)
  arr3 <- s$coefficients
  tab <- list()
  for (g in dimnames(arr3)[[1]]) for (k in dimnames(arr3)[[3]])
    tab[[length(tab) + 1]] <- list(group = g, term = k, estimate = arr3[g, 1, k], std_error = arr3[g, 2, k],
                                   t_value = arr3[g, 3, k], p_value = arr3[g, 4, k])
  ci <- confint(fit)@.Data
  dn <- dimnames(ci)
  cis <- list()
  for (i in seq_along(dn[[1]])) for (j in seq_along(dn[[3]]))
    cis[[length(cis) + 1]] <- list(group = dn[[1]][i], term = dn[[3]][j], lower = ci[i, 1, j], upper = ci[i, 2, j])
  list(coef = df_records(cbind(group = rownames(cf), cf)), coefficients = tab, confint = cis,
       confint_level = 0.95, pooled_sd = s$RSE, pooled_df = s$df.residual, r_squared = arr(s$r.squared),
       loglik = as.numeric(logLik(fit)), loglik_df = attr(logLik(fit), "df"),
       fixef = jvec(fixef(fit)), fitted_values = arr(as.double(fitted(fit))),
       predict_newdata = list(newdata = df_records(nd_weighted()[, c("Days", "Subject")]),
                              predicted = arr(as.double(predict(fit, newdata = nd_weighted())))))
}
for (spec in list(
  list(id = "lmlist_sleepstudy", call = "lme4::lmList(Reaction ~ Days | Subject, data = sleep_weighted)",
       desc = "lme4::lmList per-subject OLS on sleepstudy"),
  list(id = "lmlist_sleepstudy_short", call = "lme4::lmList(Reaction ~ Days | Subject, data = sleep_weighted[!(sleep_weighted$Subject == '309' & sleep_weighted$Days > 0), ])",
       desc = "lmList where subject 309 has a single row: its Days coefficient is NA"))) {
  rc <- run_call(spec$call)
  make_case(spec$id, "sleep_weighted", spec$call, "lme4", "OLS", lmlist_results(rc$value),
            description = spec$desc)
}

## Kenward-Roger of a weighted fit: pbkrtest builds V with an identity residual block, ignoring the
## prior weights. The same model written without weights, on the whitened rows sqrt(w) (y - o),
## sqrt(w), sqrt(w) Days, has the weighted model's V up to the scaling W^(1/2), so pbkrtest's KR of
## this fit is the KR of the weighted model.
local({
  d <- sleep_weighted
  sw <- sqrt(d$w)
  register_dataset("sleep_whitened",
                   data.frame(yw = sw * (d$Reaction - d$o), sw = sw, swd = sw * d$Days, Subject = d$Subject),
                   "sleep_weighted whitened by sqrt(w): yw = sqrt(w) (Reaction - o), sw = sqrt(w), swd = sqrt(w) Days",
                   "derived from sleep_weighted in lmm_weights_transforms.R")
})
lmer_case("lmm_weights_whitened_reml", "sleep_whitened",
          "lmer(yw ~ 0 + sw + swd + (0 + sw + swd | Subject), data = sleep_whitened, REML = TRUE)",
          description = "the weighted REML fit of lmm_weights_offset_reml written on whitened rows (no weights): its pbkrtest KR is the weighted model's",
          rows = FALSE)
lmer_case("lmm_weights_factor_reml", "sleep_weighted",
          "lmer(Reaction ~ Days * phase + (1 | Subject), data = sleep_weighted, weights = w, REML = TRUE)",
          description = "prior weights with a 3-level factor and its interaction: multi-df anova (types 1 and 3)",
          extra = weighted_extra)

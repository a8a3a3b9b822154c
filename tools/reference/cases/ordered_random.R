## Ordered factors inside random-effects terms: lme4 builds the random-term model matrix with R's
## default contrasts (lmer's contrasts= argument reaches the fixed part only), so an ordered factor
## in `(per | Subject)` is coded by contr.poly (columns per.L, per.Q) and an unordered one by
## contr.treatment; `(0 + per | Subject)` has one indicator per level whatever the coding.
##
## Data: sleepstudy with `per`, an ordered three-level period of the study (early < mid < late).
local({
  ss <- lme4::sleepstudy
  per <- factor(ifelse(ss$Days < 3, "early", ifelse(ss$Days < 6, "mid", "late")),
                levels = c("early", "mid", "late"), ordered = TRUE)
  register_dataset("sleep_ordered", data.frame(Reaction = ss$Reaction, Days = ss$Days, Subject = ss$Subject,
                                               per = per),
                   "sleepstudy with an ordered within-subject period factor per (early < mid < late)",
                   "lme4::sleepstudy; per = cut of Days at 3 and 6")
})
ordered_predictions <- function(fit) {
  nd <- data.frame(Days = c(0, 4, 8, 2, 9),
                   Subject = factor(c("308", "309", "330", "372", "351"), levels = levels(sleep_ordered$Subject)),
                   per = factor(c("early", "mid", "late", "early", "late"), levels = levels(sleep_ordered$per),
                                ordered = TRUE))
  list(predictions = list(
    newdata = df_records(nd),
    population = arr(as.double(predict(fit, newdata = nd, re.form = NA))),
    conditional = arr(as.double(predict(fit, newdata = nd)))))
}
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("ordered_random_slope_", if (reml) "reml" else "ml"), "sleep_ordered",
            sprintf("lmer(Reaction ~ Days + (per | Subject), data = sleep_ordered, REML = %s)", reml),
            description = "ordered factor in a random term: contr.poly columns per.L, per.Q (lme4's default contrasts)",
            inference = FALSE, extra = ordered_predictions)
}
lmer_case("ordered_random_indicators_reml", "sleep_ordered",
          "lmer(Reaction ~ Days + (0 + per | Subject), data = sleep_ordered, REML = TRUE)",
          description = "(0 + ordered factor | g): one indicator per level, as for an unordered factor",
          inference = FALSE, extra = ordered_predictions)

## Real-data mixture of LMM experts: flexmix::FLXMRlmm on survival::pbcseq (the bundled pbcseq.csv),
## log bilirubin trajectories with a multinomial-logit gate on baseline age, sex and treatment.
## Peer fit of examples/pbc_memoe.py (memoe.MEMoE("logbili ~ years + (years | id)", gating="~ age + sex + trt", k=2)).
local({
  src <- file.path(SCRIPT_DIR, "..", "..", "src", "memoe", "datasets", "data", "pbcseq.csv")
  raw <- utils::read.csv(src, na.strings = "")
  d <- data.frame(id = as.integer(raw$id), years = as.double(raw$years), bili = as.double(raw$bili),
                  logbili = as.double(raw$logbili), albumin = as.double(raw$albumin),
                  protime = as.double(raw$protime), platelet = as.double(raw$platelet),
                  stage = as.integer(raw$stage), age = as.double(raw$age),
                  sex = factor(raw$sex, levels = c("m", "f")),
                  trt = factor(raw$trt, levels = c("placebo", "D-penicillamine")),
                  futime_years = as.double(raw$futime_years),
                  status = factor(raw$status, levels = c("censored", "transplant", "dead")))
  register_dataset("pbcseq", d, "Mayo Clinic primary biliary cirrhosis follow-up (312 patients, 1945 visits)",
                   "survival::pbcseq via ../shared/data/make_pbcseq.R (the package's bundled pbcseq.csv)")
})

## No polish step (unlike memoe_sim2_flexmix): continuing from posterior(.best) stops in flexmix 2.3.18 with
## "Multinom requires at least two components" for this concomitant model, so the best start with flexmix's
## default tolerance (relative logLik change 1e-6) is recorded; its logLik is ~0.07 below the maximum.
pbc_flexmix_case <- function(K, nrep = 3L, seed_base = 2000L, iter.max = 1000L) {
  base <- sprintf(paste0("flexmix(logbili ~ years | id, data = pbcseq, k = %d, model = FLXMRlmm(random = ~ years), ",
                         "concomitant = FLXPmultinom(~ age + sex + trt)"), K)
  r_call <- sprintf("%s, control = list(iter.max = %d))", base, iter.max)
  starts <- list(); fits <- list()
  for (r in seq_len(nrep)) {
    set.seed(seed_base + r)
    rc <- run_call(r_call)
    f <- rc$value
    fits[[r]] <- f
    starts[[r]] <- list(start = r, seed = seed_base + r, loglik = as.numeric(logLik(f)), iterations = f@iter,
                        converged = f@converged, k_final = f@k, seconds = rc$seconds, warnings = arr(rc$warnings))
    cat(sprintf("  pbcseq flexmix K=%d start %d: logLik %.4f, iter %d, k %d, %.1f s\n", K, r, starts[[r]]$loglik,
                f@iter, f@k, rc$seconds))
  }
  lls <- vapply(starts, function(s) if (s$k_final == K) s$loglik else -Inf, 0)
  best <- which.max(lls)
  fp <- fits[[best]]
  pr <- parameters(fp)
  conc <- parameters(fp, which = "concomitant")  # terms x components, component 1 the reference
  first <- !duplicated(pbcseq$id)
  nm2 <- c("(Intercept)", "years")
  comps <- lapply(seq_len(fp@k), function(k) {
    v <- pr[, k]
    D <- matrix(v[grep("^sigma2.Random", names(v))], 2, 2, dimnames = list(nm2, nm2))
    list(component = k, fixef = jvec(v[c("coef.(Intercept)", "coef.years")], nm2), ranef_cov = jmat(D),
         ranef_sd = jvec(sqrt(diag(D)), nm2), ranef_corr = D[1, 2] / sqrt(D[1, 1] * D[2, 2]),
         sigma = sqrt(as.double(v[["sigma2.Residual"]])), prior = as.double(prior(fp)[k]))
  })
  res <- list(
    loglik = as.numeric(logLik(fp)), df = as.numeric(attr(logLik(fp), "df")), aic = AIC(fp), bic = BIC(fp),
    nobs = nrow(pbcseq), n_subjects = sum(first), k_final = fp@k, iterations = fp@iter, converged = fp@converged,
    components = comps,
    gating = list(reference_component = 1L, coefficients = jmat(conc)),
    subjects = arr(pbcseq$id[first]),
    clusters = arr(as.integer(clusters(fp)[first])),
    posterior = jmat(posterior(fp)[first, , drop = FALSE]),
    r_fit_seconds_all_starts = sum(vapply(starts, function(s) s$seconds, 0)),
    tolerance = fp@control@tolerance, best_start = best, starts = starts, timing_machine = machine_info())
  make_case(sprintf("pbcseq_flexmix_k%d", K), "pbcseq", r_call, "flexmix", "ML (EM)", res,
            fit_info = list(nrep = nrep, seeds = arr(seed_base + seq_len(nrep)),
                            selection = "best of the starts, flexmix's default tolerance (no polish: see the script)",
                            warnings = arr(starts[[best]]$warnings)),
            description = sprintf(paste0("Real data: mixture of K=%d LMM experts of log bilirubin (random intercept + ",
                                         "slope on years, full 2x2 covariance and residual variance per expert) with a ",
                                         "multinomial-logit gate on age + sex + trt, flexmix::FLXMRlmm; best of %d ",
                                         "random starts (default tolerance, not polished)."), K, nrep),
            notes = c("components and gating in flexmix's own labels (component 1 the gating reference); match them to memoe's experts by the MAP classes (clusters, one per subject in the order of subjects).",
                      "df counts 2 fixed effects + 3 covariance parameters + 1 residual variance per expert + 4*(K-1) gating coefficients."),
            packages = c("flexmix"))
}
pbc_flexmix_case(2L)

## make_reference.R -- regenerates the visible golden reference corpus
## (CSV datasets + one JSON per case + index.json).
##
## Usage: tools/reference/regenerate.sh (stages a work folder, runs this
## script there, validates, and copies the JSONs to tests/data and the CSVs
## to src/memoe/datasets/data).  Directly:
##   Rscript tools/reference/make_reference.R [OUTDIR]
## works in OUTDIR (default: the script's own folder) and writes only
## relative paths; OUTDIR/memoe_sim2 must hold generate.py and the truth JSON.
##
## Requires R (4.2) with lme4, nlme, lmerTest, pbkrtest, clubSandwich,
## geepack, flexmix, mvtnorm, jsonlite.  The simulated data set
## memoe_sim2/memoe_sim2.csv is produced by memoe_sim2/generate.py (Python,
## numpy); it is re-run from here only if the CSV is missing or the
## environment variable REGENERATE_SIM=1 is set (interpreter: $PYTHON,
## default "python3").
## See README.md for the JSON schema.
GENERATED_BY <- "make_reference.R"
## ========================================================================
## Helper block (shared verbatim with the project's other reference
## generator script, so that each script is self-contained).
## ========================================================================
options(warn = 1, stringsAsFactors = FALSE, width = 120)
suppressPackageStartupMessages({
  library(lme4)
  library(nlme)
  library(geepack)
  library(flexmix)
  library(jsonlite)
})
## lmerTest, pbkrtest and clubSandwich are used with pkg:: only (not attached),
## so `lmer` below is always lme4::lmer.

## Work in OUTDIR (first trailing argument) or else in the directory that
## holds this script, so every path is relative.
SCRIPT_DIR <- local({
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grep("^--file=", a)])
  if (length(f) == 1 && nzchar(f)) normalizePath(dirname(f)) else getwd()
})
local({
  out <- commandArgs(trailingOnly = TRUE)
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grep("^--file=", a)])
  if (length(out) >= 1 && nzchar(out[1])) {
    dir.create(out[1], showWarnings = FALSE, recursive = TRUE)
    setwd(out[1])
  } else if (length(f) == 1 && nzchar(f)) setwd(dirname(f))
})

pkg_version <- function(p) as.character(utils::packageVersion(p))
R_VERSION <- paste(R.version$major, R.version$minor, sep = ".")

## ---------------------------------------------------------------- JSON --
.json_str <- function(s) {
  s <- enc2utf8(as.character(s))
  s <- gsub("\\", "\\\\", s, fixed = TRUE)
  s <- gsub("\"", "\\\"", s, fixed = TRUE)
  s <- gsub("\n", "\\n", s, fixed = TRUE)
  s <- gsub("\r", "\\r", s, fixed = TRUE)
  s <- gsub("\t", "\\t", s, fixed = TRUE)
  paste0("\"", s, "\"")
}
## full double precision: 17 significant digits; non-finite -> null
.json_num <- function(x) {
  x <- as.double(x)
  out <- sprintf("%.17g", x)
  out[!is.finite(x)] <- "null"
  out
}
## mark a vector so that it is written as a JSON array even if length 1
arr <- function(x) { x <- unname(x); attr(x, "json_array") <- TRUE; x }
## named numeric vector -> JSON object
jvec <- function(x, nms = names(x)) { force(nms); x <- as.double(x); names(x) <- nms; x }
## matrix -> {"rownames": [...], "colnames": [...], "values": [[row 1], [row 2], ...]}
jmat <- function(m) {
  m <- as.matrix(m)
  list(rownames = arr(as.character(if (is.null(rownames(m))) character(0) else rownames(m))),
       colnames = arr(as.character(if (is.null(colnames(m))) character(0) else colnames(m))),
       values = lapply(seq_len(nrow(m)), function(i) arr(as.double(m[i, ]))))
}
to_json <- function(x, ind = 0L) {
  pad <- strrep(" ", ind + 1L); pad0 <- strrep(" ", ind)
  if (is.null(x)) return("null")
  if (is.factor(x)) x <- as.character(x)
  if (is.list(x)) {
    nm <- names(x)
    if (length(x) == 0L) return(if (is.null(nm)) "[]" else "{}")
    items <- vapply(x, to_json, "", ind = ind + 1L, USE.NAMES = FALSE)
    if (!is.null(nm)) {
      if (any(!nzchar(nm)) || anyDuplicated(nm)) stop("bad names in list: ", paste(nm, collapse = ","))
      return(paste0("{\n", paste0(pad, .json_str(nm), ": ", items, collapse = ",\n"), "\n", pad0, "}"))
    }
    return(paste0("[\n", paste0(pad, items, collapse = ",\n"), "\n", pad0, "]"))
  }
  if (is.matrix(x)) stop("use jmat() for matrices")
  vals <- if (is.logical(x)) ifelse(is.na(x), "null", ifelse(x, "true", "false"))
          else if (is.character(x)) ifelse(is.na(x), "null", .json_str(x))
          else if (is.numeric(x)) .json_num(x)
          else stop("unsupported type: ", class(x)[1])
  nm <- names(x)
  if (!is.null(nm)) {
    if (length(x) == 0L) return("{}")
    if (anyDuplicated(nm)) stop("duplicated names: ", paste(nm, collapse = ","))
    return(paste0("{\n", paste0(pad, .json_str(nm), ": ", vals, collapse = ",\n"), "\n", pad0, "}"))
  }
  if (length(x) == 1L && is.null(attr(x, "json_array"))) return(vals)
  paste0("[", paste(vals, collapse = ", "), "]")
}
write_json_file <- function(x, file) {
  con <- file(file, open = "w", encoding = "UTF-8")
  on.exit(close(con))
  writeLines(to_json(x), con, useBytes = TRUE)
  invisible(file)
}

## ----------------------------------------------------------------- CSV --
## shortest decimal string that round-trips (15, 16 or 17 significant digits)
fmt_num <- function(x) {
  out <- rep("", length(x))
  for (d in 15:17) {
    s <- sprintf(paste0("%.", d, "g"), x)
    ok <- !nzchar(out) & is.finite(x) & as.numeric(s) == x
    out[ok] <- s[ok]
  }
  left <- !nzchar(out) & is.finite(x)
  out[left] <- sprintf("%.17g", x[left])
  out[is.na(x)] <- "NA"
  out
}
.csv_quote <- function(s) ifelse(is.na(s), "NA", paste0("\"", gsub("\"", "\"\"", s, fixed = TRUE), "\""))
## column specification (type, factor levels, ordered) taken from the R object
col_spec <- function(df) {
  lapply(df, function(v) {
    if (is.factor(v)) list(type = "factor", levels = arr(levels(v)), ordered = is.ordered(v))
    else if (is.integer(v)) list(type = "integer")
    else if (is.numeric(v)) list(type = "numeric")
    else if (is.logical(v)) list(type = "logical")
    else list(type = "character")
  })
}
write_dataset <- function(df, file) {
  cols <- lapply(df, function(v) {
    if (is.factor(v) || is.character(v)) .csv_quote(as.character(v))
    else if (is.logical(v)) ifelse(is.na(v), "NA", ifelse(v, "TRUE", "FALSE"))
    else fmt_num(as.double(v))
  })
  lines <- c(paste(.csv_quote(names(df)), collapse = ","), do.call(paste, c(cols, sep = ",")))
  con <- file(file, open = "w", encoding = "UTF-8")
  on.exit(close(con))
  writeLines(lines, con, useBytes = TRUE)
}
read_dataset <- function(file, spec) {
  raw <- utils::read.csv(file, colClasses = "character", check.names = FALSE, na.strings = "NA")
  stopifnot(identical(names(raw), names(spec)))
  out <- lapply(names(spec), function(n) {
    s <- spec[[n]]; v <- raw[[n]]
    switch(s$type,
           factor = { f <- factor(v, levels = as.character(s$levels), ordered = isTRUE(s$ordered))
                      if (any(is.na(f) & !is.na(v))) stop("unknown level in ", n); f },
           integer = as.integer(v), numeric = as.numeric(v), logical = as.logical(v), v)
  })
  names(out) <- names(spec)
  as.data.frame(out, check.names = FALSE, stringsAsFactors = FALSE)
}
DATASETS <- list()
## write `df` once as <name>.csv, read it back, restore factor levels, and
## assign it to `name` in the global environment: every fit below uses the
## data exactly as stored in the CSV.
register_dataset <- function(name, df, description, source, prep = NULL) {
  df <- as.data.frame(df)
  attr(df, "formula") <- NULL; attr(df, "outer") <- NULL; attr(df, "labels") <- NULL
  attr(df, "units") <- NULL; attr(df, "FUN") <- NULL; attr(df, "order.groups") <- NULL
  class(df) <- "data.frame"
  rownames(df) <- NULL
  spec <- col_spec(df)
  file <- paste0(name, ".csv")
  write_dataset(df, file)
  back <- read_dataset(file, spec)
  ## sanity check: data read back equals the original (numeric within 1e-15 rel.)
  for (n in names(df)) {
    a <- df[[n]]; b <- back[[n]]
    if (is.numeric(a)) stopifnot(isTRUE(all.equal(as.double(a), as.double(b), tolerance = 1e-14)))
    else stopifnot(identical(as.character(a), as.character(b)))
  }
  assign(name, back, envir = globalenv())
  DATASETS[[name]] <<- list(file = file, nrow = nrow(back), ncol = ncol(back), columns = spec,
                            description = description, source = source, prep = prep)
  invisible(back)
}
dataset_meta <- function(name) {
  d <- DATASETS[[name]]
  list(file = d$file, nrow = d$nrow, source = d$source, preparation = d$prep, columns = d$columns)
}

## ------------------------------------------------------------- fitting --
## evaluate a call given as text in the global environment, capturing
## warnings/messages and the elapsed time.
run_call <- function(txt) {
  warns <- character(0); msgs <- character(0)
  t0 <- proc.time()[["elapsed"]]
  val <- withCallingHandlers(
    eval(parse(text = txt), envir = globalenv()),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
  list(value = val, warnings = warns, messages = msgs,
       seconds = proc.time()[["elapsed"]] - t0)
}
try_text <- function(txt) {
  r <- tryCatch(run_call(txt), error = function(e) structure(list(error = conditionMessage(e)), class = "failed"))
  r
}
## records helper: data.frame -> list of objects
df_records <- function(df) {
  lapply(seq_len(nrow(df)), function(i) {
    r <- lapply(df, function(col) { v <- col[i]; if (is.factor(v)) as.character(v) else v })
    names(r) <- names(df); r
  })
}
## coefficient table (matrix with rownames) -> records with normalised keys
coef_records <- function(m, map) {
  m <- as.data.frame(m, check.names = FALSE)
  out <- data.frame(term = rownames(m), stringsAsFactors = FALSE)
  for (k in names(map)) if (map[[k]] %in% names(m)) out[[k]] <- as.double(m[[map[[k]]]])
  df_records(out)
}
COEF_MAP_LMERTEST <- list(estimate = "Estimate", std_error = "Std. Error", df = "df",
                          t_value = "t value", p_value = "Pr(>|t|)")
ANOVA_MAP_LMERTEST <- list(sum_sq = "Sum Sq", mean_sq = "Mean Sq", num_df = "NumDF",
                           den_df = "DenDF", f_value = "F value", p_value = "Pr(>F)")
COEF_MAP_NLME <- list(estimate = "Value", std_error = "Std.Error", df = "DF",
                      t_value = "t-value", p_value = "p-value")
ANOVA_MAP_NLME <- list(num_df = "numDF", den_df = "denDF", f_value = "F-value", p_value = "p-value")
COEF_MAP_GLMER <- list(estimate = "Estimate", std_error = "Std. Error", z_value = "z value",
                       p_value = "Pr(>|z|)")

## contrasts used for factors in the fixed-effects design
contrast_info <- function(contr, data = NULL) {
  if (is.null(contr) || length(contr) == 0) return(structure(list(), names = character(0)))
  out <- lapply(names(contr), function(f) {
    c0 <- contr[[f]]
    if (is.character(c0)) {
      v <- data[[f]]
      cm <- if (is.null(v)) NULL else stats::contrasts(v)
      if (!is.null(cm) && is.null(rownames(cm))) rownames(cm) <- levels(v)
      list(type = c0, matrix = if (is.null(cm)) NULL else jmat(cm))
    } else {
      c0 <- as.matrix(c0); n <- nrow(c0); ty <- "matrix"
      ct <- stats::contr.treatment(n); cp <- stats::contr.poly(n)
      if (ncol(c0) == ncol(ct) && isTRUE(all.equal(unname(c0), unname(ct)))) ty <- "contr.treatment"
      else if (ncol(c0) == ncol(cp) && isTRUE(all.equal(unname(c0), unname(cp)))) ty <- "contr.poly"
      list(type = ty, matrix = jmat(c0))
    }
  })
  names(out) <- names(contr)
  out
}

## ------------------------------------------------- lme4 (lmer/glmer) --
varcorr_lmer <- function(fit) {
  vc <- VarCorr(fit)
  grp <- names(getME(fit, "cnms"))
  lapply(seq_along(vc), function(i) {
    v <- vc[[i]]
    list(name = names(vc)[i], group = grp[i], terms = arr(colnames(v)),
         sd = jvec(attr(v, "stddev")), variance = jvec(diag(as.matrix(v)), colnames(v)),
         corr = jmat(attr(v, "correlation")), cov = jmat(unclass(v)[seq_len(nrow(v)), seq_len(ncol(v)), drop = FALSE]))
  })
}
ranef_lmer <- function(fit) {
  rr <- as.data.frame(ranef(fit, condVar = TRUE))
  val <- list(); sds <- list()
  for (g in unique(as.character(rr$grpvar))) {
    sub <- rr[as.character(rr$grpvar) == g, ]
    terms <- unique(as.character(sub$term))
    lev <- unique(as.character(sub$grp))
    cv <- matrix(NA_real_, length(lev), length(terms)); cs <- cv
    cv[cbind(match(as.character(sub$grp), lev), match(as.character(sub$term), terms))] <- sub$condval
    cs[cbind(match(as.character(sub$grp), lev), match(as.character(sub$term), terms))] <- sub$condsd
    mk <- function(M) lapply(seq_along(lev), function(j) c(list(group = lev[j]), setNames(as.list(M[j, ]), terms)))
    val[[g]] <- mk(cv); sds[[g]] <- mk(cs)
  }
  list(ranef = val, condsd = sds)
}
fitinfo_lmer <- function(fit, rc) {
  msgs <- as.character(unlist(fit@optinfo$conv$lme4$messages))
  ## "converged": optimizer returned 0 and lme4 raised no convergence warning
  ## (the "boundary (singular) fit" message is not a convergence failure)
  list(optimizer = as.character(fit@optinfo$optimizer),
       converged = fit@optinfo$conv$opt == 0 && !any(!grepl("singular", msgs)),
       convergence_messages = arr(msgs),
       singular = isSingular(fit),
       warnings = arr(rc$warnings), messages = arr(rc$messages))
}
res_lmer <- function(fit, rows = TRUE, ranefs = TRUE) {
  reml <- isREML(fit)
  ll <- logLik(fit)
  re <- if (ranefs) ranef_lmer(fit) else list(ranef = NULL, condsd = NULL)
  list(
    fixef = jvec(fixef(fit)),
    vcov = jmat(as.matrix(vcov(fit))),
    sigma = sigma(fit),
    theta = jvec(getME(fit, "theta")),
    varcorr = varcorr_lmer(fit),
    loglik = as.numeric(ll),
    df = as.numeric(attr(ll, "df")),
    deviance = if (reml) NULL else deviance(fit),
    reml_criterion = if (reml) REMLcrit(fit) else NULL,
    aic = AIC(fit), bic = BIC(fit),
    nobs = nobs(fit),
    ngroups = as.list(ngrps(fit)),
    ranef = re$ranef,
    ranef_condsd = re$condsd,
    fitted = if (rows) arr(as.double(fitted(fit))) else NULL,
    residuals = if (rows) arr(as.double(residuals(fit))) else NULL
  )
}
## lmerTest (Satterthwaite; Kenward-Roger via pbkrtest), REML fits get KR
inference_lmer <- function(fit_name) {
  fit <- get(fit_name, envir = globalenv())
  reml <- isREML(fit)
  assign(".lt", lmerTest::as_lmerModLmerTest(fit), envir = globalenv())
  calls <- list(
    lmerTest_object = sprintf(".lt <- lmerTest::as_lmerModLmerTest(%s)", fit_name),
    satterthwaite_coef = "summary(.lt, ddf = 'Satterthwaite')$coefficients",
    satterthwaite_anova_type3 = "anova(.lt, type = 3, ddf = 'Satterthwaite')",
    satterthwaite_anova_type1 = "anova(.lt, type = 1, ddf = 'Satterthwaite')")
  if (reml) calls <- c(calls, list(
    kenward_roger_coef = "summary(.lt, ddf = 'Kenward-Roger')$coefficients",
    kenward_roger_anova_type3 = "anova(.lt, type = 3, ddf = 'Kenward-Roger')",
    kenward_roger_anova_type1 = "anova(.lt, type = 1, ddf = 'Kenward-Roger')",
    vcov_kenward_roger = sprintf("as.matrix(pbkrtest::vcovAdj(%s))", fit_name)))
  ev <- function(k) run_call(calls[[k]])$value
  out <- list(
    satterthwaite = list(coef = coef_records(ev("satterthwaite_coef"), COEF_MAP_LMERTEST),
                         anova_type3 = coef_records(ev("satterthwaite_anova_type3"), ANOVA_MAP_LMERTEST),
                         anova_type1 = coef_records(ev("satterthwaite_anova_type1"), ANOVA_MAP_LMERTEST)),
    kenward_roger = if (reml) list(
      coef = coef_records(ev("kenward_roger_coef"), COEF_MAP_LMERTEST),
      anova_type3 = coef_records(ev("kenward_roger_anova_type3"), ANOVA_MAP_LMERTEST),
      anova_type1 = coef_records(ev("kenward_roger_anova_type1"), ANOVA_MAP_LMERTEST),
      vcov_adjusted = jmat(ev("vcov_kenward_roger"))) else NULL)
  list(results = out, calls = calls,
       note = if (reml) NULL else "Kenward-Roger is only defined for REML fits (lmerTest refuses ML fits); kenward_roger is null.")
}
## clubSandwich cluster-robust covariance (CR0, CR2)
robust_cr <- function(fit_name, cluster_expr) {
  calls <- list(CR0 = sprintf("clubSandwich::vcovCR(%s, cluster = %s, type = 'CR0')", fit_name, cluster_expr),
                CR2 = sprintf("clubSandwich::vcovCR(%s, cluster = %s, type = 'CR2')", fit_name, cluster_expr))
  r0 <- try_text(calls$CR0); r2 <- try_text(calls$CR2)
  if (inherits(r0, "failed") || inherits(r2, "failed")) {
    return(list(results = list(available = FALSE, reason = if (inherits(r0, "failed")) r0$error else r2$error,
                               cluster = cluster_expr, CR0 = NULL, CR2 = NULL), calls = calls))
  }
  cl <- eval(parse(text = cluster_expr), envir = globalenv())
  list(results = list(available = TRUE, reason = NULL, cluster = cluster_expr,
                      n_clusters = length(unique(cl)),
                      CR0 = jmat(as.matrix(unclass(r0$value)[, , drop = FALSE])),
                      CR2 = jmat(as.matrix(unclass(r2$value)[, , drop = FALSE]))),
       calls = calls)
}
res_glmer <- function(fit, rows = TRUE) {
  ll <- logLik(fit)
  re <- ranef_lmer(fit)
  vrx <- suppressWarnings(as.matrix(vcov(fit, use.hessian = FALSE)))
  list(
    fixef = jvec(fixef(fit)),
    vcov = jmat(as.matrix(vcov(fit))),
    vcov_rx = jmat(vrx),
    coef_table = coef_records(summary(fit)$coefficients, COEF_MAP_GLMER),
    theta = jvec(getME(fit, "theta")),
    varcorr = varcorr_lmer(fit),
    loglik = as.numeric(ll),
    df = as.numeric(attr(ll, "df")),
    deviance = deviance(fit),
    aic = AIC(fit), bic = BIC(fit),
    nobs = nobs(fit),
    ngroups = as.list(ngrps(fit)),
    ranef = re$ranef,
    ranef_condsd = re$condsd,
    fitted = if (rows) arr(as.double(fitted(fit))) else NULL,
    residuals = NULL
  )
}

## ---------------------------------------------------------- nlme / gls --
struct_info <- function(s, kind) {
  if (is.null(s)) return(NULL)
  p <- if (kind == "var" && inherits(s, "varIdent")) coef(s, unconstrained = FALSE, allCoef = TRUE)
       else coef(s, unconstrained = FALSE)
  pn <- names(p)
  if (is.null(pn)) pn <- if (inherits(s, "corSymm")) {
    ## corSymm: correlations in nlme order (1,2),(1,3),...,(2,3),...
    M <- corMatrix(s)[[which.max(vapply(corMatrix(s), nrow, 1L))]]
    idx <- which(upper.tri(M), arr.ind = TRUE); idx <- idx[order(idx[, 1], idx[, 2]), , drop = FALSE]
    sprintf("cor(%d,%d)", idx[, 1], idx[, 2])
  } else sprintf("p%d", seq_along(p))
  out <- list(class = class(s)[1], formula = paste(deparse(formula(s)), collapse = " "),
              params = jvec(p, pn),
              params_unconstrained = jvec(coef(s, unconstrained = TRUE),
                                          if (is.null(names(coef(s, TRUE)))) sprintf("u%d", seq_along(coef(s, TRUE))) else names(coef(s, TRUE))))
  if (inherits(s, "corStruct")) {
    cms <- corMatrix(s)
    if (!is.list(cms)) cms <- list(cms)
    big <- which.max(vapply(cms, nrow, 1L))
    out$example_corr_matrix <- list(group = names(cms)[big], matrix = jmat(cms[[big]]))
  }
  out
}
lme_theta <- function(fit) {
  re <- fit$modelStruct$reStruct
  if (length(re) != 1) return(NULL)
  P <- as.matrix(re[[1]])  # Psi / sigma^2
  L <- t(chol(P))
  nm <- colnames(P); g <- names(re)[1]
  idx <- which(lower.tri(L, diag = TRUE), arr.ind = TRUE)
  idx <- idx[order(idx[, 2], idx[, 1]), , drop = FALSE]
  lab <- ifelse(idx[, 1] == idx[, 2], paste(g, nm[idx[, 1]], sep = "."),
                paste(g, nm[idx[, 1]], nm[idx[, 2]], sep = "."))
  jvec(L[idx], lab)
}
varcorr_lme <- function(fit) {
  re <- fit$modelStruct$reStruct
  lapply(names(re), function(g) {
    S <- as.matrix(re[[g]]) * fit$sigma^2
    sd <- sqrt(diag(S))
    list(name = g, group = g, terms = arr(colnames(S)), sd = jvec(sd, colnames(S)),
         variance = jvec(diag(S), colnames(S)),
         corr = jmat(stats::cov2cor(S)), cov = jmat(S))
  })
}
ranef_lme <- function(fit) {
  r <- ranef(fit)
  if (is.data.frame(r)) { r <- list(r); names(r) <- names(fit$modelStruct$reStruct) }
  lapply(r, function(d) lapply(seq_len(nrow(d)), function(j)
    c(list(group = rownames(d)[j]), setNames(as.list(as.double(d[j, ])), colnames(d)))))
}
intervals_records <- function(fit) {
  iv <- tryCatch(intervals(fit, which = "all"), error = function(e) e)
  if (inherits(iv, "error")) return(list(available = FALSE, reason = conditionMessage(iv)))
  tab <- function(m) { m <- as.matrix(m); lapply(seq_len(nrow(m)), function(i)
    list(param = rownames(m)[i], lower = m[i, "lower"], est = m[i, "est."], upper = m[i, "upper"])) }
  out <- list(available = TRUE, level = 0.95, fixed = if (!is.null(iv$fixed)) tab(iv$fixed) else tab(iv$coef))
  if (!is.null(iv$reStruct)) out$reStruct <- lapply(iv$reStruct, tab)
  if (!is.null(iv$corStruct)) out$corStruct <- tab(iv$corStruct)
  if (!is.null(iv$varStruct)) out$varStruct <- tab(iv$varStruct)
  if (!is.null(iv$sigma)) out$sigma <- list(lower = iv$sigma[["lower"]], est = iv$sigma[["est."]], upper = iv$sigma[["upper"]])
  out
}
res_lme <- function(fit) {
  ll <- logLik(fit)
  Q <- fit$dims$Q
  ft <- fitted(fit, level = 0:Q); rs <- residuals(fit, level = 0:Q)
  list(
    fixef = jvec(fixef(fit)),
    vcov = jmat(vcov(fit)),
    sigma = fit$sigma,
    theta = lme_theta(fit),
    varcorr = varcorr_lme(fit),
    corStruct = struct_info(fit$modelStruct$corStruct, "cor"),
    varStruct = struct_info(fit$modelStruct$varStruct, "var"),
    loglik = as.numeric(ll),
    df = as.numeric(attr(ll, "df")),
    aic = AIC(fit), bic = BIC(fit),
    nobs = fit$dims$N,
    ngroups = as.list(fit$dims$ngrps[seq_len(Q)]),
    ranef = ranef_lme(fit),
    ranef_condsd = NULL,
    coef_table = coef_records(summary(fit)$tTable, COEF_MAP_NLME),
    anova_sequential = coef_records(anova(fit, type = "sequential"), ANOVA_MAP_NLME),
    anova_marginal = coef_records(anova(fit, type = "marginal"), ANOVA_MAP_NLME),
    intervals = intervals_records(fit),
    fitted = arr(as.double(ft[, ncol(ft)])),
    residuals = arr(as.double(rs[, ncol(rs)])),
    fitted_marginal = arr(as.double(ft[, 1])),
    residuals_marginal = arr(as.double(rs[, 1]))
  )
}
res_gls <- function(fit) {
  ll <- logLik(fit)
  list(
    fixef = jvec(coef(fit)),
    vcov = jmat(vcov(fit)),
    sigma = fit$sigma,
    corStruct = struct_info(fit$modelStruct$corStruct, "cor"),
    varStruct = struct_info(fit$modelStruct$varStruct, "var"),
    loglik = as.numeric(ll),
    df = as.numeric(attr(ll, "df")),
    aic = AIC(fit), bic = BIC(fit),
    nobs = fit$dims$N,
    coef_table = coef_records(summary(fit)$tTable, list(estimate = "Value", std_error = "Std.Error",
                                                        t_value = "t-value", p_value = "p-value")),
    residual_df = fit$dims$N - fit$dims$p,
    anova_sequential = coef_records(anova(fit, type = "sequential"), ANOVA_MAP_NLME),
    anova_marginal = coef_records(anova(fit, type = "marginal"), ANOVA_MAP_NLME),
    intervals = intervals_records(fit),
    fitted = arr(as.double(fitted(fit))),
    residuals = arr(as.double(residuals(fit)))
  )
}
fitinfo_nlme <- function(fit, rc) {
  list(optimizer = if (!is.null(fit$call$control)) paste(deparse(fit$call$control), collapse = " ") else "nlme default (nlminb)",
       converged = TRUE, convergence_note = "nlme stops with an error when the optimisation does not converge, so a returned fit has converged",
       numIter = if (!is.null(fit$numIter)) fit$numIter else NULL,
       warnings = arr(rc$warnings), messages = arr(rc$messages))
}

## ------------------------------------------------------------ geepack --
res_geeglm <- function(fit) {
  g <- fit$geese
  s <- summary(fit)
  nm <- names(coef(fit))
  vr <- g$vbeta; dimnames(vr) <- list(nm, nm)
  vn <- g$vbeta.naiv; dimnames(vn) <- list(nm, nm)
  list(
    coefficients = jvec(coef(fit)),
    robust_se = jvec(sqrt(diag(vr)), nm),
    naive_se = jvec(sqrt(diag(vn)), nm),
    vcov_robust = jmat(vr),
    vcov_naive = jmat(vn),
    coef_table = coef_records(s$coefficients, list(estimate = "Estimate", std_error = "Std.err",
                                                   wald = "Wald", p_value = "Pr(>|W|)")),
    corstr = g$model$corstr,
    working_correlation = jvec(g$alpha),
    working_correlation_se = jvec(sqrt(diag(as.matrix(g$valpha))), names(g$alpha)),
    scale = jvec(g$gamma),
    scale_se = jvec(sqrt(diag(as.matrix(g$vgamma))), names(g$gamma)),
    nobs = length(fit$y),
    n_clusters = length(g$clusz),
    max_cluster_size = max(g$clusz),
    qic = jvec(geepack::QIC(fit)),
    fitted = arr(as.double(fitted(fit))),
    residuals = arr(as.double(residuals(fit, type = "response")))
  )
}

## description of the machine for timings (no paths)
machine_info <- function() {
  cpu <- tryCatch({
    l <- grep("^model name", readLines("/proc/cpuinfo", warn = FALSE), value = TRUE)
    if (length(l)) trimws(sub("^model name\\s*:", "", l[1])) else NA_character_
  }, error = function(e) NA_character_)
  si <- utils::sessionInfo()
  list(sysname = Sys.info()[["sysname"]], machine = Sys.info()[["machine"]], cpu = cpu,
       logical_cores = parallel::detectCores(),
       blas = if (!is.null(si$BLAS)) basename(si$BLAS) else NA_character_,
       lapack = if (!is.null(si$LAPACK)) basename(si$LAPACK) else NA_character_,
       r_version = R_VERSION)
}

## ----------------------------------------------------------- case I/O --
CASES <- list()
make_case <- function(case_id, dataset, r_call, package, method, results, fit_info = NULL,
                      description = NULL, family = NULL, extra_calls = NULL, notes = NULL,
                      contrasts = NULL, packages = NULL, extra = NULL) {
  pk <- unique(c(package, packages, if (package %in% c("lme4", "lmerTest")) "Matrix"))
  case <- list(
    schema_version = 1L,
    case_id = case_id,
    dataset = DATASETS[[dataset]]$file,
    description = description,
    r_call = r_call,
    package = package,
    package_version = pkg_version(package),
    package_versions = as.list(setNames(vapply(pk, pkg_version, ""), pk)),
    r_version = R_VERSION,
    method = method,
    family = family,
    data = dataset_meta(dataset),
    contrasts = contrasts,
    extra_calls = extra_calls,
    fit_info = fit_info,
    notes = if (is.null(notes)) NULL else arr(notes),
    results = results
  )
  if (!is.null(extra)) case <- c(case, extra)
  write_json_file(case, paste0(case_id, ".json"))
  CASES[[case_id]] <<- list(case_id = case_id, dataset = case$dataset, r_call = r_call,
                            method = method, package = package,
                            checked = paste(names(Filter(Negate(is.null), results)), collapse = ", "))
  cat(sprintf("[%s] wrote %s.json\n", format(Sys.time(), "%H:%M:%S"), case_id))
  invisible(case)
}

## Standard LMM case via lme4::lmer, with lmerTest / pbkrtest / clubSandwich
## `extra`: NULL or a function of the fit returning a list of additional top-level entries
lmer_case <- function(case_id, dataset, r_call, description, cluster = NULL,
                      inference = TRUE, profile = FALSE, rows = TRUE, ranefs = TRUE,
                      timing_runs = 0L, tight = TRUE, notes = NULL, extra = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  if (timing_runs > 0) {
    secs <- c(rc$seconds, vapply(seq_len(timing_runs - 1L), function(i) run_call(r_call)$seconds, 0))
  }
  assign(".fit", fit, envir = globalenv())
  res <- res_lmer(fit, rows = rows, ranefs = ranefs)
  extra_calls <- list(fit = paste(".fit <-", r_call))
  pk <- c("lme4")
  if (inference) {
    inf <- inference_lmer(".fit")
    res$satterthwaite <- inf$results$satterthwaite
    res$kenward_roger <- inf$results$kenward_roger
    extra_calls <- c(extra_calls, inf$calls)
    notes <- c(notes, inf$note)
    pk <- c(pk, "lmerTest", "pbkrtest")
  }
  if (!is.null(cluster)) {
    cr <- robust_cr(".fit", cluster)
    res$clubSandwich <- cr$results
    extra_calls <- c(extra_calls, list(clubSandwich_CR0 = cr$calls$CR0, clubSandwich_CR2 = cr$calls$CR2))
    pk <- c(pk, "clubSandwich")
  }
  if (tight) {
    ## refit with much tighter optimizer tolerances: shows how far the default
    ## optimum is from the exact one (a sharper target for comparisons)
    tctl <- "lmerControl(optimizer = 'nloptwrap', optCtrl = list(ftol_abs = 0, ftol_rel = 1e-15, xtol_abs = 1e-12, xtol_rel = 0, maxeval = 1e5))"
    tcall <- sub("\\)\\s*$", paste0(", control = ", tctl, ")"), r_call)
    rt <- run_call(tcall); ft <- rt$value
    res$tight_refit <- list(
      r_call = tcall,
      fixef = jvec(fixef(ft)), theta = jvec(getME(ft, "theta")), sigma = sigma(ft),
      loglik = as.numeric(logLik(ft)),
      reml_criterion = if (isREML(ft)) REMLcrit(ft) else NULL,
      deviance = if (isREML(ft)) NULL else deviance(ft),
      fevals = ft@optinfo$feval, fevals_default = fit@optinfo$feval,
      loglik_gain_over_default = as.numeric(logLik(ft)) - as.numeric(logLik(fit)),
      max_abs_diff_theta = max(abs(getME(ft, "theta") - getME(fit, "theta"))),
      max_rel_diff_fixef = max(abs(fixef(ft) - fixef(fit)) / pmax(abs(fixef(fit)), 1e-8)),
      rel_diff_sigma = abs(sigma(ft) - sigma(fit)) / sigma(fit),
      warnings = arr(rt$warnings))
    extra_calls$tight_refit <- tcall
  }
  if (profile) {
    pc <- "confint(.fit, method = 'profile', level = 0.95, oldNames = FALSE)"
    ci <- run_call(pc)$value
    res$confint_profile <- list(level = 0.95, table = lapply(seq_len(nrow(ci)), function(i)
      list(param = rownames(ci)[i], lower = ci[i, 1], upper = ci[i, 2])))
    extra_calls$confint_profile <- pc
  }
  if (timing_runs > 0) {
    res$r_fit_seconds <- stats::median(secs)
    res$r_fit_seconds_runs <- arr(secs)
    res$timing_machine <- machine_info()
  }
  make_case(case_id, dataset, r_call, "lme4", if (isREML(fit)) "REML" else "ML", res,
            fit_info = fitinfo_lmer(fit, rc), description = description,
            extra_calls = extra_calls, notes = notes,
            contrasts = contrast_info(attr(getME(fit, "X"), "contrasts"), model.frame(fit)),
            packages = pk, extra = if (is.null(extra)) NULL else extra(fit))
}
glmer_case <- function(case_id, dataset, r_call, description, timing_runs = 0L, rows = TRUE, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  res <- res_glmer(fit, rows = rows)
  if (timing_runs > 0) {
    secs <- c(rc$seconds, vapply(seq_len(timing_runs - 1L), function(i) run_call(r_call)$seconds, 0))
    res$r_fit_seconds <- stats::median(secs)
    res$r_fit_seconds_runs <- arr(secs)
    res$timing_machine <- machine_info()
  }
  nagq <- fit@devcomp$dims[["nAGQ"]]
  make_case(case_id, dataset, r_call, "lme4", if (nagq <= 1) "Laplace" else "AGQ", res,
            fit_info = c(fitinfo_lmer(fit, rc), list(nAGQ = nagq)), description = description,
            family = list(family = family(fit)$family, link = family(fit)$link),
            notes = c(notes,
                      "vcov: lme4 default for GLMMs (use.hessian = TRUE: inverse of the finite-difference Hessian of the deviance w.r.t. (theta, beta), beta block); vcov_rx: vcov(fit, use.hessian = FALSE), from the RX factor at the optimum (conditional on theta).",
                      "loglik/aic/bic/deviance as reported by lme4 (they include the normalising constants of the response family, e.g. log binomial coefficients)."),
            contrasts = contrast_info(attr(getME(fit, "X"), "contrasts"), model.frame(fit)),
            packages = "lme4")
}
lme_case <- function(case_id, dataset, r_call, description, cluster = NULL, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  assign(".fit", fit, envir = globalenv())
  res <- res_lme(fit)
  extra_calls <- list(fit = paste(".fit <-", r_call))
  pk <- "nlme"
  if (!is.null(cluster)) {
    cr <- robust_cr(".fit", cluster)
    res$clubSandwich <- cr$results
    extra_calls <- c(extra_calls, list(clubSandwich_CR0 = cr$calls$CR0, clubSandwich_CR2 = cr$calls$CR2))
    pk <- c(pk, "clubSandwich")
  }
  make_case(case_id, dataset, r_call, "nlme", fit$method, res,
            fit_info = fitinfo_nlme(fit, rc), description = description,
            extra_calls = extra_calls,
            notes = c(notes, "theta is derived for comparison with lme4: column-wise lower triangle of the lower Cholesky factor of Psi/sigma^2 (lme4 ordering).",
                      "coef_table df and anova den_df are nlme's containment (between/within-group) degrees of freedom.",
                      "fitted/residuals are conditional on the random effects (innermost level); *_marginal are at level 0."),
            contrasts = contrast_info(fit$contrasts), packages = pk)
}
gls_case <- function(case_id, dataset, r_call, description, cluster = NULL, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  assign(".fit", fit, envir = globalenv())
  res <- res_gls(fit)
  extra_calls <- list(fit = paste(".fit <-", r_call))
  pk <- "nlme"
  if (!is.null(cluster)) {
    cr <- robust_cr(".fit", cluster)
    res$clubSandwich <- cr$results
    extra_calls <- c(extra_calls, list(clubSandwich_CR0 = cr$calls$CR0, clubSandwich_CR2 = cr$calls$CR2))
    pk <- c(pk, "clubSandwich")
  }
  make_case(case_id, dataset, r_call, "nlme", fit$method, res,
            fit_info = fitinfo_nlme(fit, rc), description = description,
            extra_calls = extra_calls, notes = notes,
            contrasts = contrast_info(fit$contrasts), packages = pk)
}

gee_case <- function(case_id, dataset, r_call, description, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  res <- res_geeglm(fit)
  make_case(case_id, dataset, r_call, "geepack", "GEE", res,
            fit_info = list(converged = fit$geese$error == 0, geese_error_code = fit$geese$error,
                            warnings = arr(rc$warnings), messages = arr(rc$messages)),
            description = description,
            family = list(family = family(fit)$family, link = family(fit)$link),
            notes = c(notes,
                      "robust_se / vcov_robust: sandwich (geese vbeta, std.err = 'san.se', no small-sample correction); naive_se / vcov_naive: model-based (geese vbeta.naiv).",
                      "working_correlation is geese alpha (moment estimator); scale is geese gamma (the dispersion, i.e. residual variance for gaussian)."),
            contrasts = contrast_info(fit$contrasts, fit$data), packages = "geepack")
}

## --------------------------------------------- flexmix (MoE of LMMs) --
.perms <- function(n) {
  if (n == 1L) return(list(1L))
  out <- list()
  for (i in seq_len(n)) for (p in .perms(n - 1L)) out[[length(out) + 1L]] <- c(i, setdiff(seq_len(n), i)[p])
  out
}
.logsumexp <- function(a) { m <- max(a); m + log(sum(exp(a - m))) }
## observed-data log-likelihood of the mixture of LMM experts with softmax gating
## comps: list of list(beta = c(int, time, x), D = 2x2, sigma2); gamma: K x 3 (int, w1, w2)
moe_loglik <- function(d, comps, gamma) {
  K <- length(comps)
  sp <- split(d, d$id)
  sum(vapply(sp, function(s) {
    n <- nrow(s)
    X <- cbind(1, s$time, s$x); Z <- cbind(1, s$time); w <- c(1, s$w1[1], s$w2[1])
    eta <- as.double(gamma %*% w); lp <- eta - .logsumexp(eta)
    lk <- vapply(seq_len(K), function(k) {
      V <- Z %*% comps[[k]]$D %*% t(Z) + comps[[k]]$sigma2 * diag(n)
      mvtnorm::dmvnorm(s$y, mean = as.double(X %*% comps[[k]]$beta), sigma = V, log = TRUE)
    }, 0)
    .logsumexp(lp + lk)
  }, 0))
}
## summary of one flexmix fit of the MoE-LMM (raw and relabelled to the truth)
summarise_flexmix <- function(f, d, truth, K) {
  pr <- parameters(f)
  conc <- parameters(f, which = "concomitant")
  Kf <- f@k
  comps <- lapply(seq_len(Kf), function(k) {
    v <- pr[, k]
    list(beta = as.double(v[c("coef.(Intercept)", "coef.time", "coef.x")]),
         D = matrix(v[grep("^sigma2.Random", names(v))], 2, 2),
         sigma2 = as.double(v[["sigma2.Residual"]]))
  })
  gam <- t(conc)  # K x 3: (Intercept), w1, w2
  first <- !duplicated(d$id)
  est_cl <- clusters(f)[first]
  post <- posterior(f)[first, , drop = FALSE]
  tc <- d$true_class[first]
  best_perm <- NULL; best_acc <- -1
  if (Kf == K) for (p in .perms(K)) {
    acc <- mean(est_cl == p[tc])
    if (acc > best_acc) { best_acc <- acc; best_perm <- p }
  }
  conf <- table(factor(tc, levels = seq_len(K)), factor(est_cl, levels = seq_len(Kf)))
  nm2 <- c("(Intercept)", "time")
  comp_rec <- function(k) {
    cp <- comps[[k]]
    list(component = k, fixef = jvec(cp$beta, c("(Intercept)", "time", "x")),
         ranef_cov = jmat(matrix(cp$D, 2, 2, dimnames = list(nm2, nm2))),
         ranef_sd = jvec(sqrt(diag(cp$D)), nm2),
         ranef_corr = cp$D[1, 2] / sqrt(cp$D[1, 1] * cp$D[2, 2]),
         sigma = sqrt(cp$sigma2), residual_variance = cp$sigma2,
         prior = as.double(prior(f)[k]))
  }
  matched <- if (is.null(best_perm)) NULL else
    lapply(seq_len(K), function(k) { r <- comp_rec(best_perm[k]); c(list(true_expert = k), r) })
  gam_m <- if (is.null(best_perm)) NULL else
    t(vapply(seq_len(K), function(k) gam[best_perm[k], ] - gam[best_perm[1], ], c(0, 0, 0)))
  list(
    loglik = as.numeric(logLik(f)),
    loglik_recomputed = moe_loglik(d, comps, gam),
    df = as.numeric(attr(logLik(f), "df")),
    aic = AIC(f), bic = BIC(f),
    nobs = nrow(d), n_subjects = sum(first),
    k_final = Kf, iterations = f@iter, converged = f@converged,
    components = lapply(seq_len(Kf), comp_rec),
    gating = list(reference_component = 1L, coefficients = jmat(conc)),
    label_matching = list(
      rule = "permutation of estimated labels maximising subject-level MAP accuracy against true_class",
      estimated_component_for_true_expert = if (is.null(best_perm)) NULL else jvec(best_perm, as.character(seq_len(K)))),
    classification_accuracy = if (is.null(best_perm)) NULL else best_acc,
    confusion_true_rows_estimated_cols = jmat(unclass(conf)),
    mean_max_posterior = mean(apply(post, 1, max)),
    components_matched = matched,
    gating_matched = if (is.null(gam_m)) NULL else list(reference_expert = 1L,
      coefficients = jmat(matrix(gam_m, K, 3, dimnames = list(as.character(seq_len(K)), c("(Intercept)", "w1", "w2"))))))
}
memoe_flexmix_case <- function(dir, name, K, nrep = 5L, iter.max = 1000L, seed_base = 1000L,
                               polish_tol = 1e-10, polish_iter = 5000L) {
  old <- setwd(dir); on.exit(setwd(old))
  csv <- paste0(name, ".csv")
  if (!file.exists(csv) || Sys.getenv("REGENERATE_SIM") == "1") {
    py <- Sys.getenv("PYTHON", "python3")
    cat("running", py, "generate.py in", dir, "\n")
    st <- system2(py, "generate.py")
    if (st != 0) stop("generator failed")
  }
  truth <- jsonlite::fromJSON(paste0(name, "_truth.json"), simplifyVector = FALSE)
  raw <- utils::read.csv(csv)
  d <- data.frame(id = as.integer(raw$id), time = as.double(raw$time), x = as.double(raw$x),
                  w1 = as.double(raw$w1), w2 = as.integer(raw$w2), y = as.double(raw$y),
                  true_class = as.integer(raw$true_class))
  assign(name, d, envir = globalenv())
  DATASETS[[name]] <<- list(file = csv, nrow = nrow(d), ncol = ncol(d), columns = col_spec(d),
                            description = "simulated mixture of LMM experts (see generate.py and the truth JSON)",
                            source = paste0("generate.py (numpy default_rng(", truth$seed, "))"),
                            prep = "none (read as written by generate.py)")
  base <- sprintf("flexmix(y ~ time + x | id, data = %s, k = %d, model = FLXMRlmm(random = ~ time), concomitant = FLXPmultinom(~ w1 + w2)", name, K)
  r_call <- sprintf("%s, control = list(iter.max = %d))", base, iter.max)
  polish_call <- sprintf("%s, cluster = posterior(.best), control = list(iter.max = %d, tolerance = %g))", base, polish_iter, polish_tol)
  starts <- list(); fits <- list()
  for (r in seq_len(nrep)) {
    set.seed(seed_base + r)
    rc <- run_call(r_call)
    f <- rc$value
    fits[[r]] <- f
    starts[[r]] <- list(start = r, seed = seed_base + r, loglik = as.numeric(logLik(f)),
                        iterations = f@iter, converged = f@converged, k_final = f@k,
                        seconds = rc$seconds, warnings = arr(rc$warnings))
    cat(sprintf("  flexmix start %d: logLik %.4f, iter %d, k %d, %.1f s\n", r, starts[[r]]$loglik, f@iter, f@k, rc$seconds))
  }
  lls <- vapply(starts, function(s) if (s$k_final == K) s$loglik else -Inf, 0)
  best <- which.max(lls)
  assign(".best", fits[[best]], envir = globalenv())
  rcp <- run_call(polish_call)
  fp <- rcp$value
  cat(sprintf("  polished: logLik %.6f, iter %d, %.1f s\n", as.numeric(logLik(fp)), fp@iter, rcp$seconds))
  ## truth
  tcomps <- lapply(truth$parameters$experts, function(e) list(
    beta = c(e$fixef[["(Intercept)"]], e$fixef[["time"]], e$fixef[["x"]]),
    D = matrix(unlist(e$ranef_cov), 2, 2, byrow = TRUE), sigma2 = e$sigma^2))
  tgam <- do.call(rbind, lapply(truth$parameters$gating$coefficients, function(g) c(g[["(Intercept)"]], g[["w1"]], g[["w2"]])))
  res <- summarise_flexmix(fp, d, truth, K)
  res <- c(res, list(
    loglik_at_truth = moe_loglik(d, tcomps, tgam),
    loglik_at_truth_python = truth$true_model$loglik_at_truth,
    true_model_accuracy = truth$true_model$accuracy_map,
    r_fit_seconds = starts[[best]]$seconds,
    r_fit_seconds_all_starts = sum(vapply(starts, function(s) s$seconds, 0)),
    r_polish_seconds = rcp$seconds,
    timing_machine = machine_info(),
    best_start = best,
    starts = starts,
    default_tolerance_best = summarise_flexmix(fits[[best]], d, truth, K)))
  make_case(paste0(name, "_flexmix"), name, r_call, "flexmix", "ML (EM)", res,
            fit_info = list(nrep = nrep, seeds = arr(seed_base + seq_len(nrep)),
                            control = list(iter.max = iter.max, tolerance = fits[[best]]@control@tolerance,
                                           minprior = fits[[best]]@control@minprior),
                            random_starts = "flexmix default initialisation (random hard assignment of subjects) after set.seed(seed)",
                            polish_call = polish_call,
                            polish = sprintf("the best start is continued from its posterior with tolerance %g (results at top level); default_tolerance_best holds the unpolished best start", polish_tol),
                            warnings = arr(rcp$warnings)),
            description = sprintf("Mixture of K=%d LMM experts (random intercept + slope on time, full 2x2 covariance per expert, own residual variance) with multinomial-logit gating on w1 + w2, fitted with flexmix::FLXMRlmm; best of %d random starts, then polished.", K, nrep),
            notes = c("flexmix logLik is the observed-data (marginal) log-likelihood; loglik_recomputed re-evaluates it at the estimates with mvtnorm (check); loglik_at_truth evaluates it at the generating parameters (loglik_at_truth_python: same value from generate.py).",
                      "components: raw flexmix labels; components_matched / gating_matched: relabelled to the true experts (gating re-referenced so that true expert 1 has zero coefficients).",
                      "FLXMRlmm supports one grouping factor with an arbitrary random-effects design (here intercept + time, full 2x2 covariance); estimation is EM with the random effects as missing data. EM converges slowly: with the default tolerance (1e-6, relative) different starts stop at log-likelihoods differing by ~1e-2, hence the polish step.",
                      "r_fit_seconds: elapsed seconds of the best start with default control; r_fit_seconds_all_starts: all starts; r_polish_seconds: the polish run.",
                      "df counts 3 fixed effects + 3 covariance parameters + 1 residual variance per expert + 3*(K-1) gating coefficients."),
            packages = c("flexmix", "mvtnorm"),
            extra = list(truth_file = paste0(name, "_truth.json")))
  CASES[[paste0(name, "_flexmix")]]$dataset <<- file.path(dir, csv)
  invisible(res)
}
write_index <- function() {
  idx <- lapply(CASES, function(c) list(case_id = c$case_id, dataset = c$dataset, method = c$method,
                                        package = c$package, r_call = c$r_call, checked = c$checked))
  names(idx) <- NULL
  write_json_file(list(generated_by = GENERATED_BY, r_version = R_VERSION,
                       data_dir = "../../src/memoe/datasets/data",
                       data_dir_note = "case 'dataset' entries name a CSV file (by its base name) in data_dir, relative to this folder",
                       cases = idx), "index.json")
}
## ======================================================== end helpers ==

## ========================================================================
## Visible reference cases
## ========================================================================
cat("R", R_VERSION, "| lme4", pkg_version("lme4"), "| nlme", pkg_version("nlme"), "\n")

## ---------------------------------------------------------------- data --
register_dataset("sleepstudy", lme4::sleepstudy,
                 "Reaction times in a sleep deprivation study", "lme4::sleepstudy")
register_dataset("Dyestuff", lme4::Dyestuff, "Yield of dyestuff by batch", "lme4::Dyestuff")
register_dataset("Dyestuff2", lme4::Dyestuff2, "Simulated yield by batch (singular fit)", "lme4::Dyestuff2")
register_dataset("Penicillin", lme4::Penicillin, "Penicillin assay: plates crossed with samples", "lme4::Penicillin")
register_dataset("Pastes", lme4::Pastes, "Paste strength: casks nested in batches", "lme4::Pastes")
register_dataset("Orthodont", nlme::Orthodont, "Orthodontic growth curves", "nlme::Orthodont (groupedData converted to data.frame)")
register_dataset("Ovary", nlme::Ovary, "Ovarian follicle counts in mares", "nlme::Ovary (groupedData converted to data.frame)")
register_dataset("BodyWeight", nlme::BodyWeight, "Rat body weight growth curves by diet", "nlme::BodyWeight (groupedData converted to data.frame)")
register_dataset("cbpp", lme4::cbpp, "Contagious bovine pleuropneumonia incidence", "lme4::cbpp")
gt <- lme4::grouseticks
gt$HEIGHT_scaled <- as.numeric(scale(gt$HEIGHT))
register_dataset("grouseticks", gt, "Ticks on red grouse chicks", "lme4::grouseticks",
                 prep = "HEIGHT_scaled = as.numeric(scale(HEIGHT)) (mean 0, SD 1), stored in the CSV; the fit uses the stored (shortest round-trip decimal) values")
rm(gt)

## ------------------------------------------------------------ sleepstudy --
SLEEP <- list(
  list(id = "sleepstudy_corr_slope", re = "(Days | Subject)",
       desc = "sleepstudy, correlated random intercept and slope per Subject"),
  list(id = "sleepstudy_uncorr_slope", re = "(Days || Subject)",
       desc = "sleepstudy, uncorrelated random intercept and slope per Subject (double-bar)"),
  list(id = "sleepstudy_intercept", re = "(1 | Subject)",
       desc = "sleepstudy, random intercept per Subject"))
for (s in SLEEP) for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0(s$id, if (reml) "_reml" else "_ml"), "sleepstudy",
            sprintf("lmer(Reaction ~ Days + %s, data = sleepstudy, REML = %s)", s$re, reml),
            description = paste0(s$desc, if (reml) " (REML)" else " (ML)"),
            cluster = "sleepstudy$Subject",
            profile = s$id == "sleepstudy_corr_slope",
            notes = if (s$id == "sleepstudy_uncorr_slope")
              "(Days || Subject) expands to (1 | Subject) + (0 + Days | Subject): two varcorr blocks with the same grouping factor; ranef merges them per Subject." else NULL)
}

## -------------------------------------------------------------- Dyestuff --
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("dyestuff_", if (reml) "reml" else "ml"), "Dyestuff",
            sprintf("lmer(Yield ~ 1 + (1 | Batch), data = Dyestuff, REML = %s)", reml),
            description = "Dyestuff one-way random effects", cluster = "Dyestuff$Batch")
  lmer_case(paste0("dyestuff2_", if (reml) "reml" else "ml"), "Dyestuff2",
            sprintf("lmer(Yield ~ 1 + (1 | Batch), data = Dyestuff2, REML = %s)", reml),
            description = "Dyestuff2 one-way random effects: boundary (singular) fit, theta = 0",
            cluster = "Dyestuff2$Batch",
            notes = "Singular fit: the Batch variance is estimated at the boundary (theta = 0); BLUPs and their conditional SDs are 0.")
}

## ------------------------------------------------------------ Penicillin --
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("penicillin_", if (reml) "reml" else "ml"), "Penicillin",
            sprintf("lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = Penicillin, REML = %s)", reml),
            description = "Penicillin: crossed random effects for plate and sample",
            cluster = "Penicillin$plate",
            notes = "clubSandwich does not support crossed (non-nested) random effects; clubSandwich.available is false with the error message.")
}

## ---------------------------------------------------------------- Pastes --
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("pastes_", if (reml) "reml" else "ml"), "Pastes",
            sprintf("lmer(strength ~ 1 + (1 | batch/cask), data = Pastes, REML = %s)", reml),
            description = "Pastes: casks nested within batches; (1 | batch/cask) = (1 | batch) + (1 | batch:cask)",
            cluster = "Pastes$batch",
            notes = "lme4 names the nested factor 'cask:batch' and its levels '<cask>:<batch>' (e.g. 'a:A').")
}

## ------------------------------------------------------------- Orthodont --
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("orthodont_lmer_", if (reml) "reml" else "ml"), "Orthodont",
            sprintf("lmer(distance ~ age * Sex + (age | Subject), data = Orthodont, REML = %s)", reml),
            description = "Orthodont growth curves, random intercept and slope on age, via lme4",
            cluster = "Orthodont$Subject",
            notes = "Sex has levels (Male, Female) as in nlme, so the coefficients are SexFemale and age:SexFemale.")
  lme_case(paste0("orthodont_lme_", if (reml) "reml" else "ml"), "Orthodont",
           sprintf("lme(distance ~ age * Sex, data = Orthodont, random = ~ age | Subject, method = \"%s\")", if (reml) "REML" else "ML"),
           description = "Orthodont growth curves, random intercept and slope on age, via nlme::lme",
           cluster = "Orthodont$Subject",
           notes = "Sex has levels (Male, Female) as in nlme, so the coefficients are SexFemale and age:SexFemale.")
}

## ---------------------------------------- ML likelihood-ratio comparison --
local({
  calls <- c(m0 = "lmer(Reaction ~ Days + (1 | Subject), data = sleepstudy, REML = FALSE)",
             m1 = "lmer(Reaction ~ Days + (Days || Subject), data = sleepstudy, REML = FALSE)",
             m2 = "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy, REML = FALSE)")
  for (k in names(calls)) assign(k, run_call(calls[[k]])$value, envir = globalenv())
  a3 <- run_call("anova(m0, m1, m2)")$value
  a2 <- run_call("anova(m0, m2)")$value
  tab <- function(a) lapply(seq_len(nrow(a)), function(i) list(
    model = rownames(a)[i], npar = a$npar[i], aic = a$AIC[i], bic = a$BIC[i], loglik = a$logLik[i],
    deviance = a$deviance[i], chisq = a$Chisq[i], chi_df = a$Df[i], p_value = a[["Pr(>Chisq)"]][i]))
  ll <- c(m0 = as.numeric(logLik(m0)), m1 = as.numeric(logLik(m1)), m2 = as.numeric(logLik(m2)))
  lrt01 <- 2 * (ll[["m1"]] - ll[["m0"]])
  lrt02 <- 2 * (ll[["m2"]] - ll[["m0"]])
  lrt12 <- 2 * (ll[["m2"]] - ll[["m1"]])
  res <- list(
    models = list(m0 = list(r_call = calls[["m0"]], loglik = ll[["m0"]], df = as.numeric(attr(logLik(m0), "df")), deviance = deviance(m0), aic = AIC(m0), bic = BIC(m0)),
                  m1 = list(r_call = calls[["m1"]], loglik = ll[["m1"]], df = as.numeric(attr(logLik(m1), "df")), deviance = deviance(m1), aic = AIC(m1), bic = BIC(m1)),
                  m2 = list(r_call = calls[["m2"]], loglik = ll[["m2"]], df = as.numeric(attr(logLik(m2), "df")), deviance = deviance(m2), aic = AIC(m2), bic = BIC(m2))),
    anova_m0_m1_m2 = tab(a3),
    anova_m0_m2 = tab(a2),
    chibar = list(
      slope_variance_m0_vs_m1 = list(
        description = "H0: (1|Subject) vs H1: (Days||Subject); one variance on the boundary; null distribution 0.5*chi2(0) + 0.5*chi2(1)",
        lrt = lrt01, p_naive_chisq1 = stats::pchisq(lrt01, 1, lower.tail = FALSE),
        p_chibar = 0.5 * stats::pchisq(lrt01, 1, lower.tail = FALSE),
        r_code = "0.5 * pchisq(2 * (logLik(m1) - logLik(m0)), df = 1, lower.tail = FALSE)"),
      slope_variance_and_cov_m0_vs_m2 = list(
        description = "H0: (1|Subject) vs H1: (Days|Subject); slope variance on the boundary plus a free covariance; null distribution 0.5*chi2(1) + 0.5*chi2(2)",
        lrt = lrt02, p_naive_chisq2 = stats::pchisq(lrt02, 2, lower.tail = FALSE),
        p_chibar = 0.5 * stats::pchisq(lrt02, 1, lower.tail = FALSE) + 0.5 * stats::pchisq(lrt02, 2, lower.tail = FALSE),
        r_code = "0.5 * pchisq(lrt, 1, lower.tail = FALSE) + 0.5 * pchisq(lrt, 2, lower.tail = FALSE)"),
      correlation_m1_vs_m2 = list(
        description = "H0: (Days||Subject) vs H1: (Days|Subject); correlation is interior, plain chi2(1)",
        lrt = lrt12, p_chisq1 = stats::pchisq(lrt12, 1, lower.tail = FALSE))))
  make_case("sleepstudy_lrt_ml", "sleepstudy",
            paste0("m0 <- ", calls[["m0"]], "; m1 <- ", calls[["m1"]], "; m2 <- ", calls[["m2"]], "; anova(m0, m1, m2)"),
            "lme4", "ML", res,
            description = "ML likelihood-ratio comparison of random-effects structures for sleepstudy, with chi-bar-square (50:50 mixture) p-values for the boundary tests",
            extra_calls = list(anova_m0_m2 = "anova(m0, m2)"),
            notes = c("anova() orders models by npar and compares consecutive rows; Chisq = 2*(logLik_i - logLik_{i-1}).",
                      "chibar p-values (Self & Liang 1987; Stram & Lee 1994) computed in R from the ML log-likelihoods as shown in r_code."))
})

## ------------------------------------------------ nlme serial correlation --
for (reml in c(TRUE, FALSE)) {
  m <- if (reml) "REML" else "ML"
  lme_case(paste0("ovary_lme_ar1_", tolower(m)), "Ovary",
           sprintf("lme(follicles ~ sin(2*pi*Time) + cos(2*pi*Time), data = Ovary, random = ~ 1 | Mare, correlation = corAR1(), method = \"%s\")", m),
           description = "Ovary: random intercept per Mare with AR(1) within-Mare errors (corAR1 uses the row order within Mare)",
           cluster = "Ovary$Mare")
  lme_case(paste0("bodyweight_lme_exp_nugget_", tolower(m)), "BodyWeight",
           sprintf("lme(weight ~ Time * Diet, data = BodyWeight, random = ~ Time | Rat, correlation = corExp(form = ~ Time, nugget = TRUE), method = \"%s\")", m),
           description = "BodyWeight: random intercept and slope per Rat with exponential spatial correlation in Time plus nugget",
           cluster = "BodyWeight$Rat",
           notes = "corExp with nugget: cor(d) = (1 - nugget) * exp(-d / range) for d > 0 (nlme parameterisation); params are (range, nugget).")
  gls_case(paste0("bodyweight_gls_car1_", tolower(m)), "BodyWeight",
           sprintf("gls(weight ~ Time * Diet, data = BodyWeight, correlation = corCAR1(form = ~ Time | Rat), method = \"%s\")", m),
           description = "BodyWeight: marginal model with continuous-time AR(1) within Rat",
           cluster = "BodyWeight$Rat",
           notes = "corCAR1: cor(d) = Phi^d with d the Time difference (days).")
}

## ---------------------------------------------------------- MMRM (gls) --
gls_case("orthodont_gls_mmrm_reml", "Orthodont",
         "gls(distance ~ factor(age) * Sex, data = Orthodont, correlation = corSymm(form = ~ 1 | Subject), weights = varIdent(form = ~ 1 | factor(age)), method = \"REML\")",
         description = "MMRM-style marginal model: unstructured correlation (corSymm) and per-visit variances (varIdent) within Subject",
         cluster = "Orthodont$Subject",
         notes = c("corSymm params are the correlations in nlme order (1,2),(1,3),(1,4),(2,3),(2,4),(3,4) over the within-Subject visit positions (ages 8,10,12,14).",
                   "varIdent params are SD ratios relative to the reference stratum age 8 (ratio 1); SD at age a = sigma * ratio_a."))

## ---------------------------------------------------------------- GLMMs --
glmer_case("cbpp_binomial_laplace", "cbpp",
           "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)",
           description = "cbpp: binomial GLMM with random herd intercept, Laplace approximation")
glmer_case("cbpp_binomial_agq25", "cbpp",
           "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial, nAGQ = 25)",
           description = "cbpp: binomial GLMM with random herd intercept, adaptive Gauss-Hermite quadrature with 25 points")
glmer_case("grouseticks_poisson_laplace", "grouseticks",
           "glmer(TICKS ~ YEAR + HEIGHT_scaled + (1 | BROOD) + (1 | LOCATION), data = grouseticks, family = poisson)",
           description = "grouseticks: Poisson GLMM with crossed random intercepts for BROOD and LOCATION, Laplace",
           notes = "HEIGHT_scaled is scale(HEIGHT) precomputed and stored in the CSV.")

## ------------------------------------------------------------------ GEE --
gee_case("orthodont_gee_exchangeable", "Orthodont",
         "geeglm(distance ~ age * Sex, id = Subject, data = Orthodont, family = gaussian, corstr = \"exchangeable\")",
         description = "Orthodont: GEE with exchangeable working correlation")
gee_case("orthodont_gee_ar1", "Orthodont",
         "geeglm(distance ~ age * Sex, id = Subject, data = Orthodont, family = gaussian, corstr = \"ar1\")",
         description = "Orthodont: GEE with AR(1) working correlation (order of rows within Subject)")

## ---------------------------------------------- simulated MoE (visible) --
memoe_flexmix_case("memoe_sim2", "memoe_sim2", K = 2L, nrep = 5L)

## ------------------------------------------- contrasts (issue 15) --
## Ordered factors get contr.poly by default; sum and Helmert contrasts set by
## lmer's `contrasts =` argument. Simulated (R's RNG, seed 15): 24 subjects,
## 6 observations each; `dose` is an ordered factor with non-alphabetical
## levels, `dept` an unordered factor, `x` a covariate.
local({
  set.seed(15)
  ns <- 24L; m <- 6L; n <- ns * m
  subj <- factor(sprintf("s%02d", rep(seq_len(ns), each = m)))
  dose <- factor(sample(c("none", "low", "mid", "high", "max"), n, replace = TRUE),
                 levels = c("none", "low", "mid", "high", "max"), ordered = TRUE)
  dept <- factor(sample(c("chem", "bio", "phys"), n, replace = TRUE), levels = c("bio", "chem", "phys"))
  x <- round(rnorm(n), 3)
  b <- rnorm(ns, sd = 0.8)
  eff_dose <- c(none = 0, low = 0.6, mid = 1.0, high = 1.2, max = 1.1)[as.character(dose)]
  eff_dept <- c(bio = 0, chem = 0.5, phys = -0.4)[as.character(dept)]
  y <- round(2 + eff_dose + eff_dept + 0.3 * x + 0.25 * x * (dept == "phys") + b[as.integer(subj)] +
             rnorm(n, sd = 0.6), 4)
  register_dataset("contrasts_sim", data.frame(y = y, dose = dose, dept = dept, x = x, subj = subj),
                   "Simulated LMM data with an ordered factor (dose) and an unordered factor (dept)",
                   "make_reference.R, set.seed(15); see the contrasts section")
})
## predictions on new data (fixed-effects only and with the subjects' BLUPs);
## the new rows list `dose` in another order than its levels
contrasts_predictions <- function(fit) {
  nd <- data.frame(dose = factor(c("max", "none", "mid", "low", "high", "mid"),
                                 levels = levels(contrasts_sim$dose), ordered = TRUE),
                   dept = factor(c("phys", "bio", "chem", "bio", "phys", "chem"), levels = levels(contrasts_sim$dept)),
                   x = c(-1.5, 0, 0.25, 1, 2, -0.5),
                   subj = c("s01", "s02", "s03", "s24", "s10", "s05"))
  list(predictions = list(
    newdata = df_records(nd),
    population = arr(as.double(predict(fit, newdata = nd, re.form = NA))),
    conditional = arr(as.double(predict(fit, newdata = nd)))))
}
for (reml in c(TRUE, FALSE)) {
  lmer_case(paste0("contrasts_ordered_", if (reml) "reml" else "ml"), "contrasts_sim",
            sprintf("lmer(y ~ dose + dept * x + (1 | subj), data = contrasts_sim, REML = %s)", reml),
            description = "ordered factor (contr.poly by default) and unordered factor (contr.treatment)",
            inference = FALSE, extra = contrasts_predictions)
}
lmer_case("contrasts_sum_helmert_reml", "contrasts_sim",
          paste("lmer(y ~ dose + dept * x + (1 | subj), data = contrasts_sim, REML = TRUE,",
                "contrasts = list(dept = 'contr.sum', dose = 'contr.helmert'))"),
          description = "contrasts set by the argument: contr.sum for dept, contr.helmert for the ordered dose",
          inference = FALSE, extra = contrasts_predictions)
lmer_case("contrasts_treatment_helmert_reml", "contrasts_sim",
          paste("lmer(y ~ dose + dept * x + (1 | subj), data = contrasts_sim, REML = TRUE,",
                "contrasts = list(dose = 'contr.treatment', dept = 'contr.helmert'))"),
          description = "contr.treatment for the ordered dose (overrides contr.poly), contr.helmert for dept",
          inference = FALSE, extra = contrasts_predictions)

## Topic scripts: each file in cases/ adds its cases with the helpers above
## (one file per feature, so features extend the corpus without touching this file).
for (case_file in sort(list.files(file.path(SCRIPT_DIR, "cases"), pattern = "[.]R$", full.names = TRUE))) {
  cat("--", basename(case_file), "\n")
  source(case_file, local = new.env(parent = globalenv()))
}

write_index()
cat("done\n")

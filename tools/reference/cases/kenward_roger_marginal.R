## Kenward-Roger on the marginal path: gls / lme fits with residual structures (MMRM-type models).
##
## There is no R mmrm package on these machines, so the reference applies pbkrtest's Kenward-Roger
## algebra to the marginal model of the nlme fit, densely (N x N) and independently of memoe:
##
##   V(phi) = Z G Z' + sigma^2 S C(psi) S          (block diagonal over the groups)
##   phi    = (G entries [lower triangle, column by column], psi, sigma^2)
##   psi    = memoe's unconstrained correlation / variance-function parameters:
##            corSymm: canonical partial correlations tanh(psi) (pairs (1,2), (1,3), ..., (2,3), ...);
##            corAR1: Phi = tanh(psi / 2); corCompSymm: Rho = lo + (1 - lo) plogis(psi), lo = -1/(m-1);
##            varIdent: log SD ratios against the first level in sorted order.
##   V_r, V_rs: central differences of V(phi) with one Richardson step.
##   P_r = -X'V^-1 V_r V^-1 X, Q_rs = X'V^-1 V_r V^-1 V_s V^-1 X, R_rs = X'V^-1 V_rs V^-1 X,
##   IE2_rs = tr(Pm V_r Pm V_s) with Pm = V^-1 - V^-1 X Phi X' V^-1, W = 2 IE2^-1 (pbkrtest::vcovAdj),
##   PhiA_linear = Phi + 2 Phi sum W_rs (Q_rs - P_r Phi P_s) Phi      ("kenward-roger-linear")
##   PhiA        = PhiA_linear - Phi sum W_rs R_rs Phi / 2             ("kenward-roger")
## and again with W_observed = 2 H^-1, H the (central-difference) Hessian of the REML criterion
## -2 l_R(phi) (R's mmrm convention; memoe's information = "observed").
## and the denominator df / F scaling from pbkrtest's own code (pbkrtest::Lb_ddf and
## pbkrtest:::.KR_adjust with attributes P and W set on PhiA).
## gls with corCompSymm and lme with random effects only are lmer models: those cases also store
## pbkrtest::vcovAdj / Lb_ddf / KRmodcomp on the equivalent lmer fit.

krm_symm_matrix <- function(u, m) {
  z <- matrix(0, m, m)
  idx <- which(upper.tri(z), arr.ind = TRUE)
  idx <- idx[order(idx[, 1], idx[, 2]), , drop = FALSE]
  z[idx] <- tanh(u)
  L <- matrix(0, m, m); L[1, 1] <- 1
  for (i in seq_len(m)[-1]) {
    rest <- 1
    for (j in seq_len(i - 1)) { L[i, j] <- z[j, i] * sqrt(rest); rest <- rest - L[i, j]^2 }
    L[i, i] <- sqrt(max(rest, 0))
  }
  L %*% t(L)
}
krm_symm_u <- function(R) {
  m <- nrow(R); L <- t(chol(R)); z <- matrix(0, m, m)
  for (i in seq_len(m)[-1]) {
    rest <- 1
    for (j in seq_len(i - 1)) { z[j, i] <- L[i, j] / sqrt(rest); rest <- rest - L[i, j]^2 }
  }
  idx <- which(upper.tri(z), arr.ind = TRUE)
  idx <- idx[order(idx[, 1], idx[, 2]), , drop = FALSE]
  atanh(z[idx])
}

## the marginal model of an nlme fit as a function of phi
krm_model <- function(fit, data, group, cor = "none", var_by = NULL, re_formula = NULL, visit = NULL) {
  X <- model.matrix(if (inherits(fit, "lme")) fit$terms else formula(fit), data)
  beta <- if (inherits(fit, "lme")) fixef(fit) else coef(fit)
  grp <- as.character(data[[group]])
  ## position within the group (row order), or the integer visit (nlme's corSymm(form = ~ visit | g))
  pos <- if (is.null(visit)) ave(seq_along(grp), grp, FUN = seq_along) else as.integer(data[[visit]])
  same <- outer(grp, grp, "==")
  m <- max(pos)
  s2 <- sigma(fit)^2
  psi_cor <- numeric(0)
  if (cor != "none") {
    nat <- coef(fit$modelStruct$corStruct, unconstrained = FALSE)
    if (cor == "symm") {
      Rm <- diag(m)
      idx <- which(upper.tri(Rm), arr.ind = TRUE)
      idx <- idx[order(idx[, 1], idx[, 2]), , drop = FALSE]
      Rm[idx] <- nat; Rm[idx[, 2:1]] <- nat
      psi_cor <- krm_symm_u(Rm)
    } else if (cor == "ar1") psi_cor <- 2 * atanh(nat[[1]])
    else if (cor == "cs") { lo <- -1 / (m - 1); psi_cor <- qlogis((nat[[1]] - lo) / (1 - lo)) }
  }
  psi_var <- numeric(0); strat <- rep(1L, length(grp))
  if (!is.null(var_by)) {
    r <- coef(fit$modelStruct$varStruct, unconstrained = FALSE)
    levs <- sort(unique(data[[var_by]]))
    ratio <- setNames(rep(1, length(levs)), as.character(levs))
    ratio[names(r)] <- r
    ## memoe's reference stratum is the first sorted level
    s2 <- s2 * ratio[[1]]^2
    ratio <- ratio / ratio[[1]]
    psi_var <- log(ratio[-1])
    strat <- match(as.character(data[[var_by]]), as.character(levs))
  }
  G0 <- NULL; Z <- NULL; gnames <- character(0)
  if (!is.null(re_formula)) {
    Z <- model.matrix(re_formula, data)
    G0 <- as.matrix(getVarCov(fit))
    q <- ncol(Z)
    for (c in seq_len(q)) for (r in c:q)
      gnames <- c(gnames, if (r == c) sprintf("var(%s)", colnames(Z)[r]) else sprintf("cov(%s, %s)", colnames(Z)[r], colnames(Z)[c]))
  }
  lower <- if (is.null(G0)) NULL else which(lower.tri(G0, diag = TRUE), arr.ind = TRUE)
  if (!is.null(lower)) lower <- lower[order(lower[, 2], lower[, 1]), , drop = FALSE]
  gvals <- if (is.null(G0)) numeric(0) else G0[lower]
  ncor <- length(psi_cor); nvar <- length(psi_var); ng <- length(gvals)
  corfun <- function(u) {
    if (cor == "none") return(diag(length(grp)))
    if (cor == "symm") { C <- krm_symm_matrix(u, m); return(C[pos, pos] * same) }
    if (cor == "ar1") return(tanh(u[1] / 2)^abs(outer(pos, pos, "-")) * same)
    lo <- -1 / (m - 1); rho <- lo + (1 - lo) * plogis(u[1])
    out <- ifelse(same, rho, 0); diag(out) <- 1; out
  }
  Vfun <- function(phi) {
    g <- phi[seq_len(ng)]; psi <- phi[ng + seq_len(ncor + nvar)]; sig2 <- phi[length(phi)]
    s <- exp(c(0, psi[ncor + seq_len(nvar)]))[strat]
    V <- sig2 * outer(s, s) * corfun(psi[seq_len(ncor)])
    if (ng) {
      Gm <- matrix(0, ncol(Z), ncol(Z)); Gm[lower] <- g; Gm[lower[, 2:1, drop = FALSE]] <- g
      V <- V + (Z %*% Gm %*% t(Z)) * same
    }
    V
  }
  phi <- c(gvals, psi_cor, psi_var, s2)
  names(phi) <- c(gnames, if (ncor) paste0("cor", seq_len(ncor)), if (nvar) paste0("var: log ratio ", names(psi_var)), "residual")
  list(X = X, y = as.numeric(model.response(model.frame(if (inherits(fit, "lme")) fit$terms else formula(fit), data))),
       beta = beta, Vfun = Vfun, phi = phi)
}

## first and second derivatives of V by central differences, one Richardson step
krm_derivs <- function(Vfun, phi) {
  K <- length(phi); sc <- pmax(abs(phi), 1)
  e <- function(i, h) { v <- numeric(K); v[i] <- h; v }
  d1 <- lapply(seq_len(K), function(i) {
    D <- function(h) (Vfun(phi + e(i, h)) - Vfun(phi - e(i, h))) / (2 * h)
    h <- 1e-3 * sc[i]; (4 * D(h / 2) - D(h)) / 3
  })
  d2 <- vector("list", K * K)
  for (i in seq_len(K)) for (j in i:K) {
    D <- function(hi, hj) {
      if (i == j) return((Vfun(phi + e(i, hi)) - 2 * Vfun(phi) + Vfun(phi - e(i, hi))) / hi^2)
      (Vfun(phi + e(i, hi) + e(j, hj)) - Vfun(phi + e(i, hi) - e(j, hj)) -
         Vfun(phi - e(i, hi) + e(j, hj)) + Vfun(phi - e(i, hi) - e(j, hj))) / (4 * hi * hj)
    }
    hi <- 5e-3 * sc[i]; hj <- 5e-3 * sc[j]
    d2[[(i - 1) * K + j]] <- d2[[(j - 1) * K + i]] <- (4 * D(hi / 2, hj / 2) - D(hi, hj)) / 3
  }
  list(d1 = d1, d2 = d2)
}

## the Kenward-Roger pieces, both variants, per-coefficient df and F tests
krm_compute <- function(mod, tests) {
  X <- mod$X; phi <- mod$phi; K <- length(phi)
  V <- mod$Vfun(phi); Vi <- solve(V)
  Phi <- solve(t(X) %*% Vi %*% X)
  dd <- krm_derivs(mod$Vfun, phi)
  VX <- Vi %*% X
  P <- lapply(dd$d1, function(Vr) -t(VX) %*% Vr %*% VX)
  Pm <- Vi - VX %*% Phi %*% t(VX)
  IE2 <- matrix(0, K, K); U <- matrix(0, ncol(X), ncol(X)); UR <- U
  PV <- lapply(dd$d1, function(Vr) Pm %*% Vr)
  for (r in seq_len(K)) for (s in seq_len(K)) IE2[r, s] <- sum(PV[[r]] * t(PV[[s]]))
  W <- 2 * solve(IE2)
  for (r in seq_len(K)) for (s in seq_len(K)) {
    Qrs <- t(VX) %*% dd$d1[[r]] %*% Vi %*% dd$d1[[s]] %*% VX
    Rrs <- t(VX) %*% dd$d2[[(r - 1) * K + s]] %*% VX
    U <- U + W[r, s] * (Qrs - P[[r]] %*% Phi %*% P[[s]])
    UR <- UR + W[r, s] * Rrs
  }
  PhiA_lin <- Phi + 2 * Phi %*% U %*% Phi
  PhiA <- PhiA_lin - 0.5 * Phi %*% UR %*% Phi
  dimnames(Phi) <- dimnames(PhiA) <- dimnames(PhiA_lin) <- list(colnames(X), colnames(X))
  attr(PhiA, "P") <- attr(PhiA_lin, "P") <- P
  attr(PhiA, "W") <- attr(PhiA_lin, "W") <- W
  p <- ncol(X)
  df <- vapply(seq_len(p), function(j) pbkrtest::Lb_ddf(diag(p)[j, , drop = FALSE], Phi, PhiA), 0)
  beta <- mod$beta
  ft <- lapply(names(tests), function(nm) {
    L <- tests[[nm]]
    a <- pbkrtest:::.KR_adjust(PhiA, Phi, L, beta, numeric(p))
    b <- pbkrtest:::.KR_adjust(PhiA_lin, Phi, L, beta, numeric(p))
    list(label = nm, L = jmat(L), ndf = a$ndf, ddf = a$ddf, scale = a$F.scaling,
         F_kr = a$Fstat, F_kr_linear = b$Fstat, p_kr = a$p.value, p_kr_linear = b$p.value)
  })
  ## the same with W from the observed information (R's mmrm convention)
  Wo <- 2 * solve(krm_observed_hessian(mod))
  Uo <- matrix(0, ncol(X), ncol(X)); URo <- Uo
  for (r in seq_len(K)) for (s in seq_len(K)) {
    Qrs <- t(VX) %*% dd$d1[[r]] %*% Vi %*% dd$d1[[s]] %*% VX
    Rrs <- t(VX) %*% dd$d2[[(r - 1) * K + s]] %*% VX
    Uo <- Uo + Wo[r, s] * (Qrs - P[[r]] %*% Phi %*% P[[s]])
    URo <- URo + Wo[r, s] * Rrs
  }
  PhiAo_lin <- Phi + 2 * Phi %*% Uo %*% Phi
  PhiAo <- PhiAo_lin - 0.5 * Phi %*% URo %*% Phi
  attr(PhiAo, "P") <- attr(PhiAo_lin, "P") <- P
  attr(PhiAo, "W") <- attr(PhiAo_lin, "W") <- Wo
  dfo <- vapply(seq_len(p), function(j) pbkrtest::Lb_ddf(diag(p)[j, , drop = FALSE], Phi, PhiAo), 0)
  fto <- lapply(names(tests), function(nm) {
    L <- tests[[nm]]
    a <- pbkrtest:::.KR_adjust(PhiAo, Phi, L, beta, numeric(p))
    b <- pbkrtest:::.KR_adjust(PhiAo_lin, Phi, L, beta, numeric(p))
    list(label = nm, ndf = a$ndf, ddf = a$ddf, scale = a$F.scaling, F_kr = a$Fstat, F_kr_linear = b$Fstat)
  })
  observed <- list(W = jmat(Wo), se_kr = arr(sqrt(diag(PhiAo))), se_kr_linear = arr(sqrt(diag(PhiAo_lin))),
                   df = arr(dfo), ftests = fto)
  list(parameterisation = "phi = (G entries on the variance scale, memoe's unconstrained psi, sigma^2)",
       phi_names = arr(names(phi)), phi = arr(unname(phi)),
       coef = list(term = arr(colnames(X)), estimate = arr(unname(beta)), se = arr(sqrt(diag(Phi))),
                   se_kr = arr(sqrt(diag(PhiA))), se_kr_linear = arr(sqrt(diag(PhiA_lin))), df = arr(df)),
       W = jmat(W), PhiA = jmat(PhiA), PhiA_linear = jmat(PhiA_lin), ftests = ft,
       observed_information = observed)
}

## one restriction matrix per fixed-effects term (its columns = 0), plus all non-intercept columns
krm_term_tests <- function(X) {
  asg <- attr(X, "assign")
  p <- ncol(X); out <- list()
  tl <- unique(asg[asg > 0])
  for (t in tl) {
    cols <- which(asg == t)
    out[[paste(colnames(X)[cols], collapse = ",")]] <- diag(p)[cols, , drop = FALSE]
  }
  out[["all slopes"]] <- diag(p)[-1, , drop = FALSE]
  out
}

## observed Hessian of the REML criterion -2 l_R(phi) (beta profiled by GLS), central differences
## with one Richardson step: W_observed = 2 H^-1 (R's mmrm: the inverse Hessian of -l_R)
krm_observed_hessian <- function(mod) {
  X <- mod$X; y <- mod$y; phi <- mod$phi; K <- length(phi); sc <- pmax(abs(phi), 1)
  crit <- function(ph) {
    V <- mod$Vfun(ph); cV <- chol(V)
    Xt <- backsolve(cV, X, transpose = TRUE); yt <- backsolve(cV, y, transpose = TRUE)
    A <- crossprod(Xt); b <- solve(A, crossprod(Xt, yt)); e <- yt - Xt %*% b
    2 * sum(log(diag(cV))) + as.numeric(determinant(A)$modulus) + sum(e^2)
  }
  e <- function(i, h) { v <- numeric(K); v[i] <- h; v }
  hess <- function(f) {
    H <- matrix(0, K, K)
    for (i in seq_len(K)) for (j in i:K) {
      hi <- f * sc[i]; hj <- f * sc[j]
      H[i, j] <- H[j, i] <- (crit(phi + e(i, hi) + e(j, hj)) - crit(phi + e(i, hi) - e(j, hj)) -
                               crit(phi - e(i, hi) + e(j, hj)) + crit(phi - e(i, hi) - e(j, hj))) / (4 * hi * hj)
    }
    H
  }
  (4 * hess(5e-4) - hess(1e-3)) / 3
}

## pbkrtest on the equivalent lmer fit
krm_pbkrtest <- function(lmer_call, tests) {
  lf <- eval(parse(text = lmer_call), envir = globalenv())
  Va <- pbkrtest::vcovAdj(lf)
  V0 <- as.matrix(vcov(lf))
  p <- ncol(V0)
  df <- vapply(seq_len(p), function(j) pbkrtest::Lb_ddf(diag(p)[j, , drop = FALSE], V0, Va), 0)
  ft <- lapply(names(tests), function(nm) {
    k <- pbkrtest::KRmodcomp(lf, tests[[nm]])$stats
    list(label = nm, ndf = k$ndf, ddf = k$ddf, scale = k$F.scaling, F = k$Fstat, p = k$p.value)
  })
  list(r_call = lmer_call, package_version = pkg_version("pbkrtest"), reml_criterion = REMLcrit(lf),
       fixef = arr(unname(fixef(lf))), se_kr = arr(sqrt(diag(as.matrix(Va)))), df_kr = arr(df), ftests = ft)
}

krm_case <- function(case_id, dataset, r_call, description, group, cor = "none", var_by = NULL,
                     re_formula = NULL, lmer_call = NULL, data_expr = dataset, visit = NULL, notes = NULL) {
  rc <- run_call(r_call)
  fit <- rc$value
  data <- eval(parse(text = data_expr), envir = globalenv())
  mod <- krm_model(fit, data, group, cor = cor, var_by = var_by, re_formula = re_formula, visit = visit)
  tests <- krm_term_tests(mod$X)
  res <- list(loglik = as.numeric(logLik(fit)), sigma = sigma(fit), fixef = jvec(mod$beta),
              kenward_roger_marginal = krm_compute(mod, tests))
  extra <- list(fit = paste(".fit <-", r_call))
  if (!is.null(lmer_call)) {
    res$pbkrtest_lmer <- krm_pbkrtest(lmer_call, tests)
    extra$pbkrtest_lmer <- lmer_call
  }
  make_case(case_id, dataset, r_call, "nlme", fit$method, res,
            fit_info = fitinfo_nlme(fit, rc), description = description, extra_calls = extra,
            notes = c(notes, "kenward_roger_marginal: pbkrtest's Kenward-Roger algebra applied densely to the marginal model of the nlme fit at nlme's estimates (see tools/reference/cases/kenward_roger_marginal.R); se_kr / PhiA include the second-derivative term R_rs in the parameterisation phi_names, se_kr_linear / PhiA_linear omit it; df, ddf and scale are pbkrtest's (Lb_ddf, .KR_adjust) from Phi, P_r and W.",
                      "ftests: each fixed-effects term's columns = 0 and all non-intercept columns = 0; L rows in the column order of coef$term.",
                      if (!is.null(lmer_call)) "pbkrtest_lmer: pbkrtest::vcovAdj, Lb_ddf and KRmodcomp on the equivalent lmer fit (the same marginal model)."),
            contrasts = contrast_info(fit$contrasts), packages = c("nlme", "pbkrtest"))
}

krm_case("kr_orthodont_gls_symm_varident", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, correlation = corSymm(form = ~ 1 | Subject), weights = varIdent(form = ~ 1 | age), method = \"REML\")",
         "MMRM-type gls: unstructured correlation and per-age variances; Kenward-Roger on the marginal model",
         group = "Subject", cor = "symm", var_by = "age")
krm_case("kr_orthodont_gls_ar1", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, correlation = corAR1(form = ~ 1 | Subject), method = \"REML\")",
         "gls with AR(1) within Subject; Kenward-Roger on the marginal model",
         group = "Subject", cor = "ar1")
krm_case("kr_orthodont_gls_cs", "Orthodont",
         "gls(distance ~ age * Sex, data = Orthodont, correlation = corCompSymm(form = ~ 1 | Subject), method = \"REML\")",
         "gls with compound symmetry within Subject (= lmer random intercept); Kenward-Roger on the marginal model and pbkrtest on the lmer fit",
         group = "Subject", cor = "cs",
         lmer_call = paste("lmer(distance ~ age * Sex + (1 | Subject), data = Orthodont, REML = TRUE,",
                           "control = lmerControl(optimizer = 'nloptwrap', optCtrl = list(ftol_abs = 0, ftol_rel = 1e-15, xtol_abs = 1e-12, xtol_rel = 0, maxeval = 1e5)))"))
krm_case("kr_sleepstudy_lme_slope", "sleepstudy",
         "lme(Reaction ~ Days, random = ~ Days | Subject, data = sleepstudy, method = \"REML\", control = lmeControl(tolerance = 1e-12, msTol = 1e-12, msMaxIter = 1000, maxIter = 1000, niterEM = 0))",
         "lme with correlated random intercept and slope (= lmer); Kenward-Roger on the marginal model and pbkrtest on the lmer fit",
         group = "Subject", re_formula = ~ Days,
         lmer_call = paste("lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy, REML = TRUE,",
                           "control = lmerControl(optimizer = 'nloptwrap', optCtrl = list(ftol_abs = 0, ftol_rel = 1e-15, xtol_abs = 1e-12, xtol_rel = 0, maxeval = 1e5)))"))
krm_case("kr_orthodont_lme_ar1", "Orthodont",
         "lme(distance ~ age * Sex, random = ~ 1 | Subject, correlation = corAR1(), data = Orthodont, method = \"REML\")",
         "lme with random intercept and AR(1) residuals within Subject; Kenward-Roger on the marginal model",
         group = "Subject", cor = "ar1", re_formula = ~ 1)

## unbalanced designs: groups of several sizes (several size buckets on the Python side)
ORTH_UNB <- "transform(Orthodont, visit = as.integer(age / 2 - 3))[-c(4, 7, 14, 22, 35, 61, 78, 90, 103), ]"
krm_case("kr_orthodont_gls_symm_missing_visits", "Orthodont",
         paste0("gls(distance ~ age * Sex, data = ", ORTH_UNB, ", correlation = corSymm(form = ~ visit | Subject), weights = varIdent(form = ~ 1 | age), method = \"REML\")"),
         "MMRM-type gls with missed visits: unstructured correlation over visit = age / 2 - 3, per-age variances",
         group = "Subject", cor = "symm", var_by = "age", data_expr = ORTH_UNB, visit = "visit",
         notes = "data: Orthodont with visit = age / 2 - 3 and rows 4, 7, 14, 22, 35, 61, 78, 90, 103 (1-based) dropped")
krm_case("kr_ovary_gls_ar1", "Ovary",
         "gls(follicles ~ sin(2 * pi * Time) + cos(2 * pi * Time), data = Ovary, correlation = corAR1(form = ~ 1 | Mare), method = \"REML\")",
         "gls with AR(1) within Mare (groups of different sizes); Kenward-Roger on the marginal model",
         group = "Mare", cor = "ar1")

"""GLMM speed against lme4 (``glmer``) and glmmTMB, same data, same run (issue 13).

Workloads:

* ``verbagg``: lme4's ``VerbAgg`` (written to CSV by R; simulated with the same shape where R is missing),
  ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``, binomial, Laplace: 7,584 rows, 316 x 24
  crossed levels;
* ``binslope``: ``y ~ trt + (trt | g)``, binary, a random slope on a binary covariate, 60 groups x 34 = 2,040 rows;
* ``long_binomial``: ``y ~ t + x + (t | id)``, binary, 10,000 subjects x 10 = 100,000 rows;
* ``pois1m``: ``y ~ x + (1 | id)``, Poisson, 100,000 subjects x 10 = 1,000,000 rows.
* group ``small`` (``--workloads small``): ``cbpp`` (lme4's cbpp, ``cbind(incidence, size - incidence) ~ period +
  (1 | herd)``, 56 rows, 15 herds), ``pois_ri`` (``y ~ x + (1 | g)``, Poisson, 50 groups x 10 = 500 rows),
  ``bin_ri`` (``y ~ x + (1 | g)``, binary, 100 groups x 10 = 1,000 rows), ``binslope`` and a wider panel of
  realistic small shapes (fifth round): ``crossed_bin`` (binary ``y ~ cond + (1 | subj) + (1 | item)``, 40 x 50
  crossed, 2,000 rows), ``probit_ri`` (binary probit ``y ~ x + (1 | g)``, 80 x 10), ``pois_slope`` (Poisson
  ``y ~ t + (t | id)``, 100 x 10), ``pois_offset`` (Poisson with ``offset(logexpo)``, 60 x 8), ``bin_q3`` (binary
  ``y ~ a + b + (1 + a + b | g)``, 50 x 30), ``agq5`` (trials binomial ``(1 | g)``, 30 x 4, ``nAGQ = 5``; glmmTMB
  has no quadrature and is skipped), ``pois_agq9`` (Poisson ``(1 | g)``, 40 x 5, ``nAGQ = 9``), ``bin_agq7``
  (binary ``(1 | g)``, 60 x 6, ``nAGQ = 7``) and ``nb_ri`` (negative binomial ``(1 | g)``, 50 x 10: lme4's ``glmer.nb``,
  glmmTMB's ``nbinom2``). ``--phases`` prints memoe's per-fit phases (design, stage 1, stage 2, derivative
  check, result) for these instead of the comparison. A fit takes
  milliseconds, so each side is the median of ``--small-repeats`` fits after a warm-up fit of the same data, wall
  clock and process CPU; lme4 and glmmTMB fit the whole group in one Rscript each (``system.time`` user + sys of
  each call), like ``bench_lmm_speed.py``'s small group.

What is timed: memoe ``memoe.glmm(formula, df, family).fit()`` from the DataFrame (design included), in this
process after a warm-up fit on a subset; lme4 ``glmer(formula, d, family)`` and glmmTMB
``glmmTMB(formula, d, family)`` (data read and factors made before the clock starts), in one Rscript per
tool and workload, after a warm-up fit on a subset. Medians of ``--repeats`` runs (the two large workloads
run ``--large-repeats`` times). CPU seconds (user + system) of memoe's process and of each Rscript's fits are
printed too, with CPU-time ratios: on a loaded shared machine the wall time includes time other processes took.

Usage::

    python benchmarks/bench_glmm_speed.py                       # all workloads, memoe + lme4 + glmmTMB
    python benchmarks/bench_glmm_speed.py --workloads verbagg,binslope --tools memoe,lme4
    python benchmarks/bench_glmm_speed.py --json glmm_speed.json
    python benchmarks/bench_glmm_speed.py --workloads small --small-repeats 20
    python benchmarks/bench_glmm_speed.py --workloads small --phases --small-repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_facts, median_runs, rscript_available, run_r, timed, write_results

# name: (formula, family, grouping columns, large)
WORKLOADS = {
    "verbagg": ("r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "binomial", ("id", "item"), False),
    "binslope": ("y ~ trt + (trt | g)", "binomial", ("g",), False),
    "long_binomial": ("y ~ t + x + (t | id)", "binomial", ("id",), True),
    "pois1m": ("y ~ x + (1 | id)", "poisson", ("id",), True),
}
TOOLS = ("memoe", "lme4", "glmmTMB")
# the small group: (formula, family, grouping columns, factor columns); binslope as above. Panel entries may add
# options in SMALL_OPTIONS: memoe's family object (``memoe_family``), R's family expression (``r_family``), ``nAGQ``,
# ``nb`` (negative binomial: lme4's glmer.nb, glmmTMB's nbinom2, memoe's "negative_binomial")
SMALL = {
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial", ("herd",), ("period",)),
    "pois_ri": ("y ~ x + (1 | g)", "poisson", ("g",), ()),
    "bin_ri": ("y ~ x + (1 | g)", "binomial", ("g",), ()),
    "binslope": ("y ~ trt + (trt | g)", "binomial", ("g",), ()),
    # the wider panel (fifth round): shapes a held-out check may time
    "crossed_bin": ("y ~ cond + (1 | subj) + (1 | item)", "binomial", ("subj", "item"), ()),
    "probit_ri": ("y ~ x + (1 | g)", "binomial", ("g",), ()),
    "pois_slope": ("y ~ t + (t | id)", "poisson", ("id",), ()),
    "pois_offset": ("y ~ x + offset(logexpo) + (1 | g)", "poisson", ("g",), ()),
    "bin_q3": ("y ~ a + b + (1 + a + b | g)", "binomial", ("g",), ()),
    "agq5": ("cbind(k, n - k) ~ x + (1 | g)", "binomial", ("g",), ()),
    "nb_ri": ("y ~ x + (1 | g)", "negative_binomial", ("g",), ()),
    # quadrature with the analytic AGQ gradient (branch i13agq)
    "pois_agq9": ("y ~ x + (1 | g)", "poisson", ("g",), ()),
    "bin_agq7": ("y ~ x + (1 | g)", "binomial", ("g",), ()),
}
SMALL_OPTIONS = {
    "probit_ri": {"link": "probit", "r_family": 'binomial(link = "probit")'},
    "agq5": {"nAGQ": 5},
    "pois_agq9": {"nAGQ": 9},
    "bin_agq7": {"nAGQ": 7},
    "nb_ri": {"nb": True, "r_family": "poisson"},  # r_family unused: glmer.nb, nbinom2
}
GROUPS = {"small": tuple(SMALL)}


# ---------------------------------------------------------------------------------------------- data
def verbagg(tmp: str) -> pd.DataFrame:
    """lme4's VerbAgg (r2 as 0/1), or a simulation of the same shape without R."""
    path = os.path.join(tmp, "verbagg_src.csv")
    if rscript_available():
        out = run_r(
            f'suppressMessages(library(lme4)); data(VerbAgg); write.csv(VerbAgg, "{path}", row.names = FALSE); '
            'cat("{}\\n")'
        )
        if "skipped" not in out:
            df = pd.read_csv(path)
            df["r2"] = (df["r2"] == "Y").astype(float)
            return df[["r2", "Anger", "Gender", "btype", "situ", "id", "item"]]
    print("VerbAgg not available from R: simulating the same shape")
    rng = np.random.default_rng(7584)
    n_s, n_i = 316, 24
    sid, item = np.repeat(np.arange(n_s), n_i), np.tile(np.arange(n_i), n_s)
    anger = rng.integers(11, 40, n_s)[sid]
    gender = np.where(rng.random(n_s) < 0.77, "F", "M")[sid]
    btype = np.array(["curse", "scold", "shout"])[item % 3]
    situ = np.where(item < 12, "other", "self")
    eta = 0.2 + 0.06 * (anger - 20) + np.array([0.0, -1.0, -2.0])[item % 3] - 1.0 * (situ == "self")
    eta = eta + rng.normal(0, 1.3, n_s)[sid] + rng.normal(0, 0.6, n_i)[item]
    r2 = (rng.random(len(sid)) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"r2": r2, "Anger": anger, "Gender": gender, "btype": btype, "situ": situ,
                         "id": sid, "item": item})


def binslope(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 60, 34
    g = np.repeat(np.arange(G), m)
    trt = rng.integers(0, 2, len(g)).astype(float)
    b = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.64]], G)
    eta = -0.2 + 0.7 * trt + b[g, 0] + b[g, 1] * trt
    y = (rng.random(len(g)) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "trt": trt, "g": g})


def long_binomial(N: int = 10_000, visits: int = 10, seed: int = 100_000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(N), visits)
    t = np.tile(np.arange(visits) / (visits - 1.0), N)
    x = rng.standard_normal(N * visits)
    b = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.15], [0.15, 0.25]], size=N)
    eta = -0.5 + 1.0 * t + 0.3 * x + b[ids, 0] + b[ids, 1] * t
    return pd.DataFrame({"y": (rng.random(len(ids)) < 1 / (1 + np.exp(-eta))).astype(float), "t": t, "x": x,
                         "id": ids})


def pois1m(N: int = 100_000, visits: int = 10, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(N), visits)
    x = rng.standard_normal(N * visits)
    eta = 0.5 + 0.3 * x + rng.normal(0, 0.5, N)[ids]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "id": ids})


def pois_ri(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 50, 10
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = 0.5 + 0.3 * x + rng.normal(0, 0.6, G)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": g})


def bin_ri(seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 100, 10
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = -0.3 + 0.5 * x + rng.normal(0, 1.0, G)[g]
    return pd.DataFrame({"y": (rng.random(G * m) < 1 / (1 + np.exp(-eta))).astype(float), "x": x, "g": g})


def _expit(eta: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-eta))


def crossed_bin(seed: int = 5) -> pd.DataFrame:
    """Psycholinguistic shape: 40 subjects x 50 items, every pair once, a +-0.5 condition within both."""
    rng = np.random.default_rng(seed)
    S, I = 40, 50
    subj, item = np.repeat(np.arange(S), I), np.tile(np.arange(I), S)
    cond = np.where((subj + item) % 2 == 0, -0.5, 0.5)
    eta = 0.4 + 0.6 * cond + rng.normal(0, 0.8, S)[subj] + rng.normal(0, 0.5, I)[item]
    return pd.DataFrame({"y": (rng.random(S * I) < _expit(eta)).astype(float), "cond": cond, "subj": subj,
                         "item": item})


def probit_ri(seed: int = 6) -> pd.DataFrame:
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    G, m = 80, 10
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = 0.2 + 0.4 * x + rng.normal(0, 0.6, G)[g]
    return pd.DataFrame({"y": (rng.random(G * m) < ndtr(eta)).astype(float), "x": x, "g": g})


def pois_slope(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    N, m = 100, 10
    ids = np.repeat(np.arange(N), m)
    t = np.tile(np.arange(m) / (m - 1.0), N)
    b = rng.multivariate_normal([0.0, 0.0], [[0.25, 0.03], [0.03, 0.09]], N)
    eta = 1.0 + 0.5 * t + b[ids, 0] + b[ids, 1] * t
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "t": t, "id": ids})


def pois_offset(seed: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 60, 8
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    logexpo = np.log(rng.uniform(0.5, 5.0, G * m))
    eta = -0.5 + 0.3 * x + logexpo + rng.normal(0, 0.5, G)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "logexpo": logexpo, "g": g})


def bin_q3(seed: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 50, 30
    g = np.repeat(np.arange(G), m)
    a, b = rng.standard_normal(G * m), rng.integers(0, 2, G * m).astype(float)
    cov = [[0.8, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.4]]
    r = rng.multivariate_normal([0.0, 0.0, 0.0], cov, G)
    eta = -0.2 + 0.5 * a + 0.4 * b + r[g, 0] + r[g, 1] * a + r[g, 2] * b
    return pd.DataFrame({"y": (rng.random(G * m) < _expit(eta)).astype(float), "a": a, "b": b, "g": g})


def agq5(seed: int = 10) -> pd.DataFrame:
    """Binomial with trials (10 per row), 30 groups x 4 rows: few rows per group, where quadrature matters."""
    rng = np.random.default_rng(seed)
    G, m = 30, 4
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = -1.0 + 0.5 * x + rng.normal(0, 1.0, G)[g]
    n = np.full(G * m, 10.0)
    return pd.DataFrame({"k": rng.binomial(10, _expit(eta)).astype(float), "n": n, "x": x, "g": g})


def pois_agq9(seed: int = 12) -> pd.DataFrame:
    """Poisson counts, 40 groups x 5 rows, nAGQ = 9: small clusters with a sizeable random-intercept SD."""
    rng = np.random.default_rng(seed)
    G, m = 40, 5
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = 0.2 + 0.4 * x + rng.normal(0, 0.9, G)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "g": g})


def bin_agq7(seed: int = 13) -> pd.DataFrame:
    """Binary outcomes, 60 groups x 6 rows, nAGQ = 7: where Laplace is biased and quadrature is used."""
    rng = np.random.default_rng(seed)
    G, m = 60, 6
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = -0.5 + 0.6 * x + rng.normal(0, 1.3, G)[g]
    return pd.DataFrame({"y": (rng.random(G * m) < _expit(eta)).astype(float), "x": x, "g": g})


def nb_ri(seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    G, m = 50, 10
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    mu = np.exp(1.0 + 0.3 * x + rng.normal(0, 0.5, G)[g])
    return pd.DataFrame({"y": rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float), "x": x, "g": g})


def cbpp() -> pd.DataFrame:
    import memoe

    return memoe.datasets.load("cbpp")


def make_data(workload: str, tmp: str) -> pd.DataFrame:
    return {"verbagg": lambda: verbagg(tmp), "binslope": binslope, "long_binomial": long_binomial,
            "pois1m": pois1m, "cbpp": cbpp, "pois_ri": pois_ri, "bin_ri": bin_ri, "crossed_bin": crossed_bin,
            "probit_ri": probit_ri, "pois_slope": pois_slope, "pois_offset": pois_offset, "bin_q3": bin_q3,
            "agq5": agq5, "nb_ri": nb_ri, "pois_agq9": pois_agq9, "bin_agq7": bin_agq7}[workload]()


def warmup_subset(df: pd.DataFrame, groups: tuple[str, ...]) -> pd.DataFrame:
    """A small subset with every crossed factor kept (first grouping factor's first levels)."""
    g = groups[0]
    keep = df[g].isin(pd.unique(df[g])[: max(20, min(200, df[g].nunique() // 10))])
    return df[keep]


# ---------------------------------------------------------------------------------------------- fitters
def fit_memoe(df: pd.DataFrame, workload: str, repeats: int) -> dict:
    import memoe

    formula, family, groups, _ = WORKLOADS[workload]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memoe.glmm(formula, warmup_subset(df, groups), family).fit()  # imports, first-call costs

        cpus = []

        def one():
            fit, wall, cpu = timed(lambda: memoe.glmm(formula, df, family).fit())
            cpus.append(cpu)
            return {"seconds": wall, "cpu_seconds": cpu, "loglik": float(fit.loglik),
                    "converged": bool(fit.converged), "evals": [fit.stage1.opt.feval, fit.stage2.opt.feval]}

        out = median_runs(one, repeats)
        out["cpu_seconds"] = float(np.median(cpus))
        out["cpu_runs"] = cpus
        return out


R_TEMPLATE = r"""
suppressMessages({{library(lme4); library(glmmTMB); library(jsonlite)}})
d <- read.csv("{path}")
for (g in c({groups})) d[[g]] <- factor(d[[g]])
for (v in c({factors})) d[[v]] <- factor(d[[v]])
fam <- {family}()
f <- {formula}
fitter <- function(data) {call}
sub <- d[d[[{first}]] %in% levels(d[[{first}]])[seq_len(min(nlevels(d[[{first}]]), 200))], ]
invisible(suppressWarnings(suppressMessages(fitter(droplevels(sub)))))
secs <- c(); cpus <- c(); msgs <- c()
for (r in seq_len({repeats})) {{
  gc()
  t0 <- proc.time()
  m <- withCallingHandlers(fitter(d), warning = function(w) {{
    msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") }},
    message = function(m) invokeRestart("muffleMessage"))
  dt <- proc.time() - t0
  secs <- c(secs, dt[["elapsed"]])
  cpus <- c(cpus, dt[["user.self"]] + dt[["sys.self"]])
}}
cat(toJSON(list(seconds = median(secs), runs = secs, cpu_seconds = median(cpus), loglik = as.numeric(logLik(m)),
                warnings = unique(msgs), version = as.character(packageVersion("{pkg}"))),
           auto_unbox = TRUE, digits = NA), "\n")
"""


def fit_r(tool: str, workload: str, csv: str, repeats: int, timeout: float) -> dict | None:
    formula, family, groups, _ = WORKLOADS[workload]
    call = "glmer(f, data, family = fam)" if tool == "lme4" else "glmmTMB(f, data, family = fam)"
    factors = '"Gender", "btype", "situ"' if workload == "verbagg" else ""
    code = R_TEMPLATE.format(
        path=csv, groups=", ".join(f'"{g}"' for g in groups), factors=factors, family=family, formula=formula,
        call=call, first=f'"{groups[0]}"', repeats=repeats, pkg=tool,
    )
    r = run_r(code, timeout=timeout)
    if r and "loglik" in r:
        # a fit that failed reports its logLik as "NA"/"NaN" text: keep the row, as a NaN
        try:
            r["loglik"] = float(r["loglik"])
        except (TypeError, ValueError):
            r["loglik"] = float("nan")
    return r


R_SMALL = r"""
suppressMessages({{library(lme4); library(glmmTMB); library(jsonlite)}})
out <- list()
for (job in fromJSON("{jobs}", simplifyVector = FALSE)) {{
  d <- read.csv(job$csv)
  for (v in unlist(job$factors)) d[[v]] <- factor(d[[v]])
  f <- as.formula(job$formula)
  fam <- eval(parse(text = job$r_family))
  nagq <- job$nAGQ
  if ("{tool}" == "glmmTMB" && nagq > 1) {{ out[[job$name]] <- list(skipped = "glmmTMB has no nAGQ"); next }}
  fitter <- if (isTRUE(job$nb)) {{
    if ("{tool}" == "lme4") function() glmer.nb(f, d) else function() glmmTMB(f, d, family = nbinom2)
  }} else {{
    if ("{tool}" == "lme4") function() glmer(f, d, family = fam, nAGQ = nagq)
    else function() glmmTMB(f, d, family = fam)
  }}
  m <- suppressWarnings(suppressMessages(fitter()))  # warm-up
  w <- numeric(0); cpu <- numeric(0)
  for (i in seq_len({repeats})) {{
    t <- system.time(m <- suppressWarnings(suppressMessages(fitter())))
    w <- c(w, t[["elapsed"]]); cpu <- c(cpu, t[["user.self"]] + t[["sys.self"]])
  }}
  out[[job$name]] <- list(seconds = median(w), cpu_seconds = median(cpu), loglik = as.numeric(logLik(m)),
                          version = as.character(packageVersion("{tool}")))
}}
cat(toJSON(out, auto_unbox = TRUE, digits = NA), "\n")
"""


def small_family(w: str):
    """memoe's family for a small-group workload (a Family object where a link other than the default is asked)."""
    from memoe.glmm import get_family

    _, family, _, _ = SMALL[w]
    opts = SMALL_OPTIONS.get(w, {})
    return get_family(family, link=opts["link"]) if "link" in opts else family


def fit_memoe_small(df: pd.DataFrame, formula: str, family, repeats: int, nAGQ: int = 1) -> dict:
    """Median wall and process-CPU seconds of ``repeats`` fits from the DataFrame after a warm-up fit."""
    import memoe

    walls, cpus = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memoe.glmm(formula, df, family).fit(nAGQ=nAGQ)
        for _ in range(repeats):
            fit, wall, cpu = timed(lambda: memoe.glmm(formula, df, family).fit(nAGQ=nAGQ))
            walls.append(wall)
            cpus.append(cpu)
    return {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus), "runs": walls,
            "cpu_runs": cpus, "loglik": float(fit.loglik), "evals": [fit.stage1.opt.feval, fit.stage2.opt.feval]}


def run_small(names: list[str], tools: list[str], repeats: int, timeout: float, tmp: str) -> list[dict]:
    """The ``small`` group: memoe in this process, each R tool in one Rscript for all the group's fits."""
    data = {w: make_data(w, tmp) for w in names}
    jobs = []
    for w in names:
        csv = os.path.join(tmp, f"small_{w}.csv")
        data[w].to_csv(csv, index=False)
        formula, family, groups, factors = SMALL[w]
        opts = SMALL_OPTIONS.get(w, {})
        jobs.append({"name": w, "csv": csv, "formula": formula, "r_family": opts.get("r_family", family),
                     "nAGQ": opts.get("nAGQ", 1), "nb": bool(opts.get("nb", False)),
                     "factors": list(groups) + list(factors)})
    jobs_path = os.path.join(tmp, "small_jobs.json")
    with open(jobs_path, "w") as fh:
        json.dump(jobs, fh)
    out: dict[str, dict] = {w: {} for w in names}
    load = [os.getloadavg()[0]]
    if "memoe" in tools:
        for w in names:
            formula = SMALL[w][0]
            out[w]["memoe"] = fit_memoe_small(data[w], formula, small_family(w), repeats,
                                              SMALL_OPTIONS.get(w, {}).get("nAGQ", 1))
    for tool in (t for t in tools if t != "memoe"):
        if not rscript_available():
            for w in names:
                out[w][tool] = {"skipped": "Rscript not found"}
            continue
        r = run_r(R_SMALL.format(jobs=jobs_path, tool=tool, repeats=repeats), timeout=timeout)
        for w in names:
            out[w][tool] = r.get(w, {"skipped": r.get("skipped", "no result")}) if r else {"skipped": "R failed"}
    load.append(os.getloadavg()[0])
    rows = []
    print(f"small group, medians of {repeats} fits after a warm-up, load {load[0]:.1f} / {load[1]:.1f}")
    print("| workload | rows | memoe wall (CPU) | lme4 wall (CPU) | glmmTMB wall (CPU) | lme4 / memoe wall (CPU) | "
          "glmmTMB / memoe wall (CPU) | memoe evaluations | logLik memoe - lme4 | logLik memoe - glmmTMB |")
    print("|" + "---|" * 10)
    for w in names:
        m = out[w].get("memoe")

        def cell(r):
            if not r or "seconds" not in r:
                return "-"
            return f"{r['seconds'] * 1e3:.1f} ms ({r['cpu_seconds'] * 1e3:.1f})"

        def ratio(t, m=m, w=w):
            r = out[w].get(t)
            if not (m and r and "seconds" in r):
                return "-"
            return f"{r['seconds'] / m['seconds']:.1f}x ({r['cpu_seconds'] / max(m['cpu_seconds'], 1e-9):.1f}x)"

        def dll(t, m=m, w=w):
            r = out[w].get(t)
            ok = m and r and "loglik" in r and r["loglik"] is not None
            return f"{m['loglik'] - float(r['loglik']):+.2e}" if ok else "-"

        ev = "/".join(str(e) for e in m["evals"]) if m else "-"
        print(f"| {w} | {len(data[w]):,} | {cell(m)} | {cell(out[w].get('lme4'))} | {cell(out[w].get('glmmTMB'))} | "
              f"{ratio('lme4')} | {ratio('glmmTMB')} | {ev} | {dll('lme4')} | {dll('glmmTMB')} |", flush=True)
        for tool, r in out[w].items():
            rows.append({"workload": w, "rows": len(data[w]), "tool": tool, "group": "small", "load": load, **r})
    return rows


# ---------------------------------------------------------------------------------------------- phases
PHASES = {  # phase: GLMM methods (or model-module names) whose time it sums
    "design": ("__init__",), "stage 1": ("_stage1",),
    "stage 2": ("_beta_whitening", "_quasi_newton", "_minimize_restarting", "_modes_at"),
    "derivative check": ("_check",), "result": ("GlmmResult", "separation"),
}


def phases(names: list[str], repeats: int, tmp: str) -> None:
    """Per-fit phases of memoe's fit (median ms over ``repeats`` fits after a warm-up), by wrapping GLMM's stage
    methods with timers; prints a markdown table. PIRLS solves are counted too."""
    import time

    import memoe
    from memoe.glmm import model as gm
    from memoe.glmm import pirls

    acc: dict[str, float] = {}
    count = {"solves": 0}

    def timer(owner, attr, key):
        orig = getattr(owner, attr)

        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, wrapped)
        return orig

    saved = []
    for attrs in PHASES.values():
        for attr in attrs:
            owner = gm if attr == "GlmmResult" else gm.GLMM
            saved.append((owner, attr, timer(owner, attr, attr)))
    solve = pirls.PirlsProblem.solve

    def counted(self, *a, **kw):
        count["solves"] += 1
        return solve(self, *a, **kw)

    pirls.PirlsProblem.solve = counted
    print(f"phases, ms, medians of {repeats} fits (load {os.getloadavg()[0]:.1f})")
    print("| workload | total | " + " | ".join(PHASES) + " | other | evaluations stage 1 / 2 | PIRLS solves |")
    print("|" + "---|" * (len(PHASES) + 5))
    try:
        for w in names:
            df = make_data(w, tmp)
            formula, fam, nagq = SMALL[w][0], small_family(w), SMALL_OPTIONS.get(w, {}).get("nAGQ", 1)
            rows = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                memoe.glmm(formula, df, fam).fit(nAGQ=nagq)
                for _ in range(repeats):
                    acc.clear()
                    count["solves"] = 0
                    t0 = time.perf_counter()
                    fit = memoe.glmm(formula, df, fam).fit(nAGQ=nagq)
                    total = time.perf_counter() - t0
                    ph = {k: sum(acc.get(a, 0.0) for a in v) for k, v in PHASES.items()}
                    rows.append((total, ph, count["solves"]))
            med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
            tot = med([r[0] for r in rows])
            cells = [med([r[1][k] for r in rows]) for k in PHASES]
            ev = f"{fit.stage1.opt.feval} / {fit.stage2.opt.feval if fit.stage2 else '-'}"
            print(f"| {w} | {tot:.1f} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {tot - sum(cells):.1f} | "
                  f"{ev} | {rows[-1][2]} |", flush=True)
    finally:
        for owner, attr, orig in saved:
            setattr(owner, attr, orig)
        pirls.PirlsProblem.solve = solve


# ---------------------------------------------------------------------------------------------- driver
def _fmt(r: dict | None) -> str:
    if not r or "skipped" in r:
        return "skipped: " + str((r or {}).get("skipped", "not run"))[:80]
    return f"{r['seconds']:.3g} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"any of {', '.join(WORKLOADS)}, or the group 'small' ({', '.join(SMALL)})")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-repeats", type=int, default=1, help="repeats of long_binomial and pois1m")
    ap.add_argument("--small-repeats", type=int, default=20, help="fits per tool of each small-group workload")
    ap.add_argument("--timeout", type=float, default=900.0, help="per R tool and workload, seconds")
    ap.add_argument("--json", help="write all results and the machine facts here")
    ap.add_argument("--phases", action="store_true",
                    help="small-group workloads: memoe's per-fit phases instead of the comparison")
    args = ap.parse_args(argv)
    asked = [w for w in args.workloads.split(",") if w]
    # a group, or single members of the small panel by name
    small = [w for g in asked if g in GROUPS for w in GROUPS[g]]
    small += [w for w in asked if w in SMALL and w not in WORKLOADS]
    workloads = [w for w in asked if w not in GROUPS and (w in WORKLOADS)]
    tools = [t for t in args.tools.split(",") if t]
    facts = machine_facts()
    print("machine:", facts)
    results, rows = [], []
    if args.phases:
        with tempfile.TemporaryDirectory() as tmp:
            phases(small + [w for w in workloads if w in SMALL], args.small_repeats, tmp)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if small:
            results += run_small(small, tools, args.small_repeats, args.timeout, tmp)
        for w in workloads:
            df = make_data(w, tmp)
            reps = args.large_repeats if WORKLOADS[w][3] else args.repeats
            csv = os.path.join(tmp, f"{w}.csv")
            if any(t != "memoe" for t in tools) and rscript_available():
                df.to_csv(csv, index=False)
            out = {}
            for tool in tools:
                r = fit_memoe(df, w, reps) if tool == "memoe" else fit_r(tool, w, csv, reps, args.timeout)
                out[tool] = r
                results.append({"workload": w, "rows": len(df), "tool": tool, **(r or {"skipped": True})})
                extra = ""
                if r and "loglik" in r:
                    extra = f", logLik {r['loglik']:.6f}"
                    if "cpu_seconds" in r:
                        extra += f", CPU {r['cpu_seconds']:.3g} s"
                    if tool == "memoe":
                        extra += f", evaluations {r['evals']}"
                    elif r.get("warnings"):
                        msgs = [r["warnings"]] if isinstance(r["warnings"], str) else r["warnings"]
                        extra += f", warnings: {'; '.join(msgs)[:160]}"
                print(f"{w:14s} {tool:8s} {_fmt(r)}{extra}", flush=True)
            rows.append((w, len(df), out))
    if not rows:
        if args.json:
            write_results(args.json, facts, results)
        return 0
    print()
    print("| workload | rows | memoe wall (CPU) | lme4 wall (CPU) | glmmTMB wall (CPU) | lme4 / memoe wall (CPU) | "
          "glmmTMB / memoe wall (CPU) | logLik memoe - lme4 | logLik memoe - glmmTMB |")
    print("|" + "---|" * 9)
    for w, n, out in rows:
        m = out.get("memoe")

        def ratio(t, m=m, out=out):
            r = out.get(t)
            ok = m and r and "seconds" in r and "seconds" in m
            if not ok:
                return "-"
            text = f"{r['seconds'] / m['seconds']:.1f}x"
            if r.get("cpu_seconds") and m.get("cpu_seconds"):
                # CPU seconds of each process: on a shared, loaded machine the stable comparison
                text += f" ({r['cpu_seconds'] / m['cpu_seconds']:.1f}x)"
            return text

        def cell(r):
            text = _fmt(r)
            if r and "cpu_seconds" in r and "skipped" not in r:
                text += f" ({r['cpu_seconds']:.3g} s)"
            return text

        def dll(t, m=m, out=out):
            r = out.get(t)
            ok = m and r and "loglik" in r and "loglik" in m
            return f"{m['loglik'] - r['loglik']:+.2e}" if ok else "-"

        print(f"| {w} | {n:,} | {cell(m) if m else '-'} | {cell(out.get('lme4'))} | {cell(out.get('glmmTMB'))} | "
              f"{ratio('lme4')} | {ratio('glmmTMB')} | {dll('lme4')} | {dll('glmmTMB')} |")
    if args.json:
        write_results(args.json, facts, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

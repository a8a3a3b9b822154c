"""Validate a reference-corpus folder (default: the repository's tests/data).

    python tools/reference/validate.py [FOLDER] [--data-dir DIR]

The case JSONs name their dataset relative to their folder (``sleepstudy.csv``); in the repository
the CSVs are kept once, as the package's bundled data (src/memoe/datasets/data, the default
``--data-dir``), so a dataset not found next to its case is looked up there by file name.

Checks that every JSON file parses as strict JSON (no NaN/Infinity), that
every CSV loads with pandas (and that pandas' default float parser agrees
with the round-trip parser), and that each case JSON is consistent with its
dataset: schema keys, dataset file present, row/column counts, factor
levels, lengths of per-row arrays, symmetric vcov matrices named like
fixef, and AIC/BIC consistent with logLik/df/nobs (nlme REML: log(N - p)).  Exit status 1 on any
failure.
"""
import json
import math
import os
import sys

import numpy as np
import pandas as pd

REQUIRED = ["schema_version", "case_id", "dataset", "r_call", "package", "package_version",
            "method", "data", "results"]
ROW_ARRAYS = ["fitted", "residuals", "fitted_marginal", "residuals_marginal"]


def strict_load(path):
    def bad(tok):
        raise ValueError(f"non-finite constant {tok}")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh, parse_constant=bad)


def check_matrix(m, where, errors, names=None, symmetric=False):
    rn, cn, vals = m["rownames"], m["colnames"], m["values"]
    a = np.array(vals, dtype=float)
    if a.shape != (len(rn), len(cn)) and not (len(rn) == 0 and a.ndim == 2):
        errors.append(f"{where}: shape {a.shape} vs names {len(rn)}x{len(cn)}")
        return
    if names is not None and (list(rn) != list(names) or list(cn) != list(names)):
        errors.append(f"{where}: row/col names differ from {names}")
    if symmetric and not np.allclose(a, a.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(a).max())):
        errors.append(f"{where}: not symmetric")


def check_case(path, case, folder, csv_cache, errors):
    here = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    for k in REQUIRED:
        if k not in case:
            errors.append(f"{path}: missing key {k}")
    if case.get("case_id") != stem:
        errors.append(f"{path}: case_id {case.get('case_id')} != file name")
    ds = os.path.join(here, case["dataset"])
    if not os.path.exists(ds) and DATA_DIR:
        ds = os.path.join(DATA_DIR, os.path.basename(case["dataset"]))
    if not os.path.exists(ds):
        errors.append(f"{path}: dataset {case['dataset']} not found next to the case nor in {DATA_DIR}")
        return
    df, dfs = csv_cache[os.path.normpath(ds)]
    meta = case["data"]
    if meta["nrow"] != len(df):
        errors.append(f"{path}: data.nrow {meta['nrow']} != {len(df)} CSV rows")
    if list(meta["columns"].keys()) != list(df.columns):
        errors.append(f"{path}: data.columns differ from CSV header")
    for col, spec in meta["columns"].items():
        if spec["type"] == "factor":
            extra = set(dfs[col].unique()) - set(spec["levels"])
            if extra:
                errors.append(f"{path}: column {col} has values not in levels: {sorted(extra)[:5]}")
        elif spec["type"] in ("numeric", "integer") and not pd.api.types.is_numeric_dtype(df[col]):
            errors.append(f"{path}: column {col} not numeric in pandas")
    res = case["results"]
    n = len(df)
    for k in ROW_ARRAYS:
        if res.get(k) is not None and len(res[k]) != n:
            errors.append(f"{path}: results.{k} has {len(res[k])} values, expected {n}")
    fx = res.get("fixef") or res.get("coefficients")
    for k in ("vcov", "vcov_rx", "vcov_robust", "vcov_naive"):
        if isinstance(res.get(k), dict):
            check_matrix(res[k], f"{path}:{k}", errors, names=list(fx.keys()) if isinstance(fx, dict) else None,
                         symmetric=True)
    cs = res.get("clubSandwich")
    if isinstance(cs, dict) and cs.get("available"):
        for k in ("CR0", "CR2"):
            check_matrix(cs[k], f"{path}:clubSandwich.{k}", errors, names=list(fx.keys()), symmetric=True)
    if isinstance(res.get("kenward_roger"), dict):
        check_matrix(res["kenward_roger"]["vcov_adjusted"], f"{path}:kenward_roger.vcov_adjusted", errors,
                     names=list(fx.keys()), symmetric=True)
    ll, dfp = res.get("loglik"), res.get("df")
    if isinstance(ll, (int, float)) and isinstance(dfp, (int, float)) and res.get("aic") is not None:
        aic = -2 * ll + 2 * dfp
        if not math.isclose(aic, res["aic"], rel_tol=1e-10, abs_tol=1e-8):
            errors.append(f"{path}: aic {res['aic']} != -2 loglik + 2 df = {aic}")
        nobs = res.get("nobs")
        if res.get("bic") is not None and nobs:
            n_eff = nobs
            if case.get("package") == "nlme" and case.get("method") == "REML":
                n_eff = nobs - len(fx)  # nlme: BIC of a REML fit uses log(N - p)
            bic = -2 * ll + math.log(n_eff) * dfp
            if not math.isclose(bic, res["bic"], rel_tol=1e-10, abs_tol=1e-8):
                errors.append(f"{path}: bic {res['bic']} != -2 loglik + log(n) df = {bic}")
    for k in ("ranef", "ranef_condsd"):
        if isinstance(res.get(k), dict):
            for g, recs in res[k].items():
                ng = (res.get("ngroups") or {}).get(g)
                if ng is not None and ng != len(recs):
                    errors.append(f"{path}: {k}.{g} has {len(recs)} groups, ngroups says {ng}")


def main(folder):
    errors, cases = [], 0
    csv_cache = {}
    jsons, csvs = [], []
    roots = [folder] + ([DATA_DIR] if DATA_DIR and os.path.isdir(DATA_DIR) else [])
    for root, _, files in (w for r in roots for w in os.walk(r)):
        for f in sorted(files):
            p = os.path.join(root, f)
            if f.endswith(".json"):
                jsons.append(p)
            elif f.endswith(".csv"):
                csvs.append(p)
    for p in csvs:
        try:
            df = pd.read_csv(p)
            dfs = pd.read_csv(p, dtype=str, keep_default_na=False)
            for c in df.columns:
                if pd.api.types.is_float_dtype(df[c]):
                    exact = np.array([float(v) if v not in ("", "NA") else np.nan for v in dfs[c]])
                    if not np.array_equal(df[c].to_numpy(), exact, equal_nan=True):
                        errors.append(f"{p}: column {c}: pandas float parsing is not correctly rounded")
            csv_cache[os.path.normpath(p)] = (df, dfs)
        except Exception as e:
            errors.append(f"{p}: pandas failed: {e}")
    for p in jsons:
        try:
            obj = strict_load(p)
        except Exception as e:
            errors.append(f"{p}: JSON parse failed: {e}")
            continue
        if isinstance(obj, dict) and "case_id" in obj:
            cases += 1
            try:
                check_case(p, obj, folder, csv_cache, errors)
            except Exception as e:
                errors.append(f"{p}: check raised {type(e).__name__}: {e}")
    print(f"{folder}: {len(jsons)} JSON files ({cases} cases), {len(csvs)} CSV files")
    for e in errors:
        print("ERROR", e)
    print("OK" if not errors else f"{len(errors)} problem(s)")
    return 1 if errors else 0


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(ROOT, "src", "memoe", "datasets", "data")

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Validate a reference-corpus folder.")
    ap.add_argument("folder", nargs="?", default=os.path.join(ROOT, "tests", "data"))
    ap.add_argument("--data-dir", default=DATA_DIR, help="where datasets not next to their case are looked up")
    a = ap.parse_args()
    DATA_DIR = a.data_dir
    sys.exit(main(a.folder))

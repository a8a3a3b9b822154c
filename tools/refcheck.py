"""Check memoe's public API against the R reference fits (visible LMM cases).

Usage (from the project root, with memoe importable, e.g. ``PYTHONPATH=src``):
    python tools/refcheck.py                      # all visible LMM cases, references in tests/data
    python tools/refcheck.py --quick              # a few small cases
    python tools/refcheck.py --reference-dir DIR  # reference JSONs elsewhere (e.g. a fresh make_reference.R run)
    python tools/refcheck.py --data-dir DIR       # CSVs elsewhere (default: next to the JSONs if there,
                                                  # else the package's bundled src/memoe/datasets/data)
Prints one PASS/FAIL line per case and a last line 'SUMMARY lmm: k/n reference cases pass'.
Exit status 1 if any case fails. It uses only the public API named in the issues:
memoe.lmm(formula, data=df).fit(reml=...), fit.loglik, fit.sigma, fit.fixef, fit.fitted.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def val(x):
    """Read a property that may also be a method."""
    return x() if callable(x) else x


def norm(name: str) -> str:
    """Map a coefficient name from R or formulaic to a common form (Diet2 ~ Diet[T.2] ~ C(Diet)[T.2])."""
    s = str(name).replace(" ", "").replace("**", "^")
    s = re.sub(r"C\(([^),]*)(,[^)]*)?\)", r"\1", s)
    s = s.replace("[T.", "").replace("]", "").replace("[", "")
    s = s.lower()
    return "intercept" if s == "(intercept)" else s


def as_named(x) -> dict:
    if isinstance(x, pd.DataFrame):
        x = x.iloc[:, 0]
    if isinstance(x, (pd.Series, dict)):
        return {norm(k): float(v) for k, v in x.items()}
    raise TypeError(f"cannot read named values from {type(x).__name__}")


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-8)


def read_data(path: Path, factors, meta: dict) -> pd.DataFrame:
    """Read a reference CSV; factor columns become pandas Categoricals with R's level order."""
    df = pd.read_csv(path, dtype={f: str for f in factors})
    columns = (meta.get("data") or {}).get("columns") or {}
    for f in factors:
        levels = (columns.get(f) or {}).get("levels")
        if levels:
            df[f] = pd.Categorical(df[f], categories=[str(v) for v in levels])
    return df


def find_csv(csv: str, refdir: Path, datadir: Path | None) -> Path:
    """A dataset CSV: in ``datadir`` if given, else next to the JSONs, else the package's bundled copy."""
    if datadir is not None:
        return datadir / Path(csv).name
    if (refdir / csv).exists():
        return refdir / csv
    return BUNDLED / Path(csv).name


def check_lmm_case(memoe, refdir: Path, datadir: Path | None, case: str, csv: str, factors, formula: str, reml: bool,
                   by_name: bool):
    """Fit one case and compare with its reference JSON; returns (ok, message)."""
    meta = json.loads((refdir / f"{case}.json").read_text())
    ref = meta["results"]
    problems: list[str] = []
    extra = ""
    try:
        df = read_data(find_csv(csv, refdir, datadir), factors, meta)
        t0 = time.perf_counter()
        fit = memoe.lmm(formula, data=df).fit(reml=reml)
        extra = f" fit {time.perf_counter() - t0:.2f}s"
        # lme4's default optimiser stops slightly short of the optimum; where the reference holds a tight
        # refit, that sharper optimum is the target.
        best = ref.get("tight_refit") or {}
        ref_ll = best.get("loglik", ref["loglik"])
        ref_sigma = best.get("sigma", ref["sigma"])
        ref_fixef = best.get("fixef") or ref["fixef"]
        ll = float(val(fit.loglik))
        if abs(ll - ref_ll) > 1e-5 * max(1.0, abs(ref_ll) * 1e-3):
            problems.append(f"loglik {ll:.6f} vs {ref_ll:.6f}")
        s = float(val(fit.sigma))
        if rel(s, ref_sigma) > 1e-4:
            problems.append(f"sigma {s:.6g} vs {ref_sigma:.6g}")
        if by_name:
            fe = as_named(val(fit.fixef))
            for k, v in ref_fixef.items():
                kk = norm(k)
                if kk not in fe:
                    problems.append(f"fixef {k} missing (have {sorted(fe)[:6]})")
                    break
                if abs(fe[kk] - v) > 1e-5 * max(1.0, abs(v)):
                    problems.append(f"fixef {k} {fe[kk]:.6g} vs {v:.6g}")
        if ref.get("fitted") is not None:
            fv = np.asarray(val(fit.fitted), dtype=float).ravel()
            rf = np.asarray(ref["fitted"], dtype=float)
            if fv.shape != rf.shape:
                problems.append(f"fitted shape {fv.shape} vs {rf.shape}")
            elif np.max(np.abs(fv - rf)) > 1e-4 * max(1.0, float(np.max(np.abs(rf)))):
                problems.append(f"fitted max diff {np.max(np.abs(fv - rf)):.3g}")
        if "r_fit_seconds" in ref:
            extra += f" (lme4 {ref['r_fit_seconds']:.2f}s on the reference machine)"
    except Exception as e:
        problems.append(f"{type(e).__name__}: {str(e)[:160]}")
    return (not problems), f"{case}:{extra} {'; '.join(problems[:4])}"


VISIBLE_LMM = {
    # case: (csv, factor columns, formula in Python syntax, reml, compare fixef by name)
    "sleepstudy_corr_slope_reml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (Days | Subject)", True, True),
    "sleepstudy_corr_slope_ml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (Days | Subject)", False, True),
    "sleepstudy_uncorr_slope_reml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (Days || Subject)", True, True),
    "sleepstudy_uncorr_slope_ml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (Days || Subject)", False, True),
    "sleepstudy_intercept_reml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (1 | Subject)", True, True),
    "sleepstudy_intercept_ml": ("sleepstudy.csv", ["Subject"], "Reaction ~ Days + (1 | Subject)", False, True),
    "dyestuff_reml": ("Dyestuff.csv", ["Batch"], "Yield ~ 1 + (1 | Batch)", True, True),
    "dyestuff_ml": ("Dyestuff.csv", ["Batch"], "Yield ~ 1 + (1 | Batch)", False, True),
    "dyestuff2_reml": ("Dyestuff2.csv", ["Batch"], "Yield ~ 1 + (1 | Batch)", True, True),
    "dyestuff2_ml": ("Dyestuff2.csv", ["Batch"], "Yield ~ 1 + (1 | Batch)", False, True),
    "penicillin_reml": ("Penicillin.csv", ["plate", "sample"], "diameter ~ 1 + (1 | plate) + (1 | sample)", True, True),
    "penicillin_ml": ("Penicillin.csv", ["plate", "sample"], "diameter ~ 1 + (1 | plate) + (1 | sample)", False, True),
    "pastes_reml": ("Pastes.csv", ["batch", "cask", "sample"], "strength ~ 1 + (1 | batch/cask)", True, True),
    "pastes_ml": ("Pastes.csv", ["batch", "cask", "sample"], "strength ~ 1 + (1 | batch/cask)", False, True),
    "orthodont_lmer_reml": ("Orthodont.csv", ["Subject", "Sex"], "distance ~ age * Sex + (age | Subject)", True, True),
    "orthodont_lmer_ml": ("Orthodont.csv", ["Subject", "Sex"], "distance ~ age * Sex + (age | Subject)", False, True),
}
QUICK = ["sleepstudy_corr_slope_reml", "dyestuff_ml", "penicillin_reml", "pastes_reml"]


def run_lmm(memoe, refdir: Path, datadir: Path | None, cases: dict) -> list[bool]:
    res = []
    for case, spec in cases.items():
        ok, msg = check_lmm_case(memoe, refdir, datadir, case, *spec)
        res.append(ok)
        print(("PASS " if ok else "FAIL ") + msg, flush=True)
    return res


ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "src" / "memoe" / "datasets" / "data"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    ap.add_argument("--reference-dir", type=Path, default=ROOT / "tests" / "data", help="folder of the case JSONs")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder of the dataset CSVs")
    args = ap.parse_args(argv)
    try:
        import memoe
    except Exception as e:
        print(f"SUMMARY lmm: memoe does not import ({type(e).__name__}: {e})")
        return 1
    cases = {k: VISIBLE_LMM[k] for k in QUICK} if args.quick else VISIBLE_LMM
    res = run_lmm(memoe, args.reference_dir, args.data_dir, cases)
    print(f"SUMMARY lmm: {sum(res)}/{len(res)} reference cases pass")
    return 0 if all(res) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

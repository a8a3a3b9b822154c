"""Paper-style simulation study: MEMoE against a single LMM, a conventional MoE and a latent-class LMM.

Usage::

    python benchmarks/simulation_study.py [--reps 100] [--scenarios normal t3 k3] [--n-starts 5]
                                          [--out benchmarks/simulation_results.json]

Scenarios (``memoe.simulate.memoe_data``; truth in ``memoe.simulate.DEFAULTS``):

* ``normal``: K = 2 (the memoe_sim2 parameters), 300 subjects, 4-8 irregular visits;
* ``t3``: the same with multivariate t (3 df) random effects scaled to the same covariance, a
  misspecified model for which the sandwich SEs should keep their coverage;
* ``k3``: K = 3, 500 subjects, 4-8 visits.

Models, all ``y ~ time + x`` with subject random effects ``(time | id)`` where applicable:

* MEMoE: gate ``~ w1 + w2``, K LMM experts;
* LMM: one LMM (``MEMoE`` with k = 1, identical to ``memoe.lmm(...).fit(reml=False)``);
* MoE: gate ``~ w1 + w2``, K linear-regression experts, independent errors;
* LCLMM: K LMM experts, constant class proportions (lcmm's hlme without classmb).

Per replication: the estimated experts are matched to the true ones by the permutation maximising
MAP accuracy (the gate re-referenced accordingly, SEs recomputed at the relabelled estimates), then
bias and RMSE of every comparable parameter, accuracy, adjusted Rand index, BIC (log number of
subjects for every model) and, for MEMoE, whether each parameter's 95% Wald interval from the
model-based and from the sandwich SEs covers the truth. Results are printed as markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings

import numpy as np
import pandas as pd

import memoe
from memoe.moe.inference import compute_inference, natural_names

FORMULA = "y ~ time + x + (time | id)"
GATING = "~ w1 + w2"
SCENARIOS = {
    "normal": {"n_subjects": 300, "k": 2},
    "t3": {"n_subjects": 300, "k": 2, "re_dist": "t", "t_df": 3.0},
    "k3": {"n_subjects": 500, "k": 3},
}
PARTS_COMPARABLE = {"MEMoE": None, "LCLMM": {"fixed", "sd", "corr", "sigma"}, "MoE": {"fixed", "gating"}}


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def c2(x):
        return (x * (x - 1) / 2.0).sum()

    n = len(a)
    s_ij, s_a, s_b = c2(table), c2(table.sum(axis=1)), c2(table.sum(axis=0))
    expected = s_a * s_b / (n * (n - 1) / 2.0)
    denom = 0.5 * (s_a + s_b) - expected
    return float((s_ij - expected) / denom) if denom > 0 else 1.0


def truth_series(truth: dict) -> pd.Series:
    """True natural-scale parameters labelled as MEMoE's parameter table."""
    out = {}
    fx, gn = truth["names"]["fixed"], truth["names"]["gating"]
    for k in range(truth["K"]):
        for n, v in zip(fx, truth["beta"][k], strict=True):
            out[("fixed", k + 1, n)] = v
        out[("sd", k + 1, "(Intercept)")] = truth["sd"][k][0]
        out[("sd", k + 1, "time")] = truth["sd"][k][1]
        out[("corr", k + 1, "(Intercept):time")] = truth["corr"][k]
        out[("sigma", k + 1, "Residual")] = truth["sigma"][k]
        if k > 0:
            for n, v in zip(gn, truth["gamma"][k], strict=True):
                out[("gating", k + 1, n)] = v
    return pd.Series(out)


def matched_table(fit, true_class: np.ndarray, se: bool) -> tuple[pd.DataFrame | pd.Series, float, float]:
    """Parameter table relabelled to the true experts, accuracy and ARI."""
    K = fit.k
    est = fit.classify().to_numpy() - 1
    perm = max(itertools.permutations(range(K)), key=lambda p: np.mean(np.asarray(p)[est] == true_class))
    perm = np.asarray(perm)  # estimated expert e is true expert perm[e]
    acc = float(np.mean(perm[est] == true_class))
    ari = adjusted_rand(est, true_class)
    order = np.argsort(perm)  # true expert j is estimated expert order[j]
    params = fit.estimates.permute(order)
    m = fit.model
    md, st = m.mdesign, m.structure
    names = natural_names(st, md.fixef_names, md.z_names, md.gating_names)
    if se:
        inf = compute_inference(m.problem, params, names, st.names(md.fixef_names, md.z_names, md.gating_names))
        return inf.standard_errors(), acc, ari
    from memoe.moe.inference import natural_values

    return pd.Series(natural_values(st, params), index=names), acc, ari


def one_replication(scenario: str, rep: int, n_starts: int) -> dict:
    cfg = SCENARIOS[scenario]
    data, truth = memoe.simulate.memoe_data(seed=10_000 * (1 + list(SCENARIOS).index(scenario)) + rep, **cfg)
    K = cfg["k"]
    true_class = np.asarray(truth["true_class"]) - 1
    tvec = truth_series(truth)
    out: dict = {"scenario": scenario, "rep": rep}
    fits = {
        "MEMoE": lambda: memoe.MEMoE(FORMULA, gating=GATING, k=K, data=data),
        "LMM": lambda: memoe.MEMoE(FORMULA, gating=None, k=1, data=data),
        "MoE": lambda: memoe.MoE("y ~ time + x", gating=GATING, k=K, data=data, group="id"),
        "LCLMM": lambda: memoe.MEMoE(FORMULA, gating=None, k=K, data=data),
    }
    for name, make in fits.items():
        t0 = time.perf_counter()
        fit = make().fit(n_starts=n_starts, seed=rep, progress=False, se=False)
        rec = {"bic": fit.bic, "loglik": fit.loglik, "seconds": time.perf_counter() - t0}
        if name != "LMM":
            tab, acc, ari = matched_table(fit, true_class, se=(name == "MEMoE"))
            rec.update(accuracy=acc, ari=ari)
            est = tab["estimate"] if name == "MEMoE" else tab
            keep = PARTS_COMPARABLE[name]
            common = [i for i in est.index if i in tvec.index and (keep is None or i[0] in keep)]
            rec["error"] = {"|".join(map(str, i)): float(est[i] - tvec[i]) for i in common}
            if name == "MEMoE":
                t = tvec.reindex(tab.index)
                for kind, col in (("model", "se_model"), ("robust", "se_robust")):
                    lo, hi = tab["estimate"] - 1.96 * tab[col], tab["estimate"] + 1.96 * tab[col]
                    rec[f"cover_{kind}"] = {"|".join(map(str, i)): bool(lo[i] <= t[i] <= hi[i]) for i in tab.index}
        else:
            rec.update(accuracy=float(np.bincount(true_class).max() / len(true_class)), ari=0.0)
        out[name] = rec
    return out


def summarise(results: list[dict]) -> str:
    lines = []
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        rs = [r for r in results if r["scenario"] == scenario]
        R = len(rs)
        lines += [
            f"\n### Scenario `{scenario}` ({R} replications)\n",
            "| model | accuracy | ARI | mean BIC | lowest BIC (share) | mean fit s |",
            "|---|---|---|---|---|---|",
        ]
        models = ["MEMoE", "LMM", "MoE", "LCLMM"]
        bic = np.array([[r[m]["bic"] for m in models] for r in rs])
        wins = np.bincount(bic.argmin(axis=1), minlength=len(models)) / R
        for j, m in enumerate(models):
            acc = np.mean([r[m]["accuracy"] for r in rs])
            ari = np.mean([r[m]["ari"] for r in rs])
            sec = np.mean([r[m]["seconds"] for r in rs])
            acc_s = "-" if m == "LMM" else f"{acc:.3f}"
            ari_s = "-" if m == "LMM" else f"{ari:.3f}"
            lines.append(f"| {m} | {acc_s} | {ari_s} | {bic[:, j].mean():.1f} | {wins[j]:.2f} | {sec:.2f} |")
        lines += ["", "| parameter | truth | MEMoE bias | MEMoE RMSE | LCLMM bias | MoE bias "
                      "| MoE RMSE | cover model | cover sandwich |",
                  "|---|---|---|---|---|---|---|---|---|"]
        truth = truth_series(memoe.simulate.memoe_data(10, **{k: v for k, v in SCENARIOS[scenario].items()
                                                               if k in ("k",)}, seed=0)[1])
        for key in rs[0]["MEMoE"]["error"]:
            e = np.array([r["MEMoE"]["error"][key] for r in rs])
            cm = np.mean([r["MEMoE"]["cover_model"][key] for r in rs])
            cr = np.mean([r["MEMoE"]["cover_robust"][key] for r in rs])
            lc = [r["LCLMM"]["error"].get(key) for r in rs]
            mo = [r["MoE"]["error"].get(key) for r in rs]
            lc_s = f"{np.mean(lc):+.3f}" if lc[0] is not None else "-"
            mo_b = f"{np.mean(mo):+.3f}" if mo[0] is not None else "-"
            mo_r = f"{np.sqrt(np.mean(np.square(mo))):.3f}" if mo[0] is not None else "-"
            part, k, term = key.split("|")
            tv = truth[(part, int(k), term)]
            lines.append(f"| {part} {k} {term} | {tv:g} | {e.mean():+.3f} | {np.sqrt(np.mean(e**2)):.3f} | {lc_s} "
                         f"| {mo_b} | {mo_r} | {cm:.2f} | {cr:.2f} |")
        cm_all = np.mean([np.mean(list(r["MEMoE"]["cover_model"].values())) for r in rs])
        cr_all = np.mean([np.mean(list(r["MEMoE"]["cover_robust"].values())) for r in rs])
        lines.append(f"| **all MEMoE parameters** | | | | | | | **{cm_all:.3f}** | **{cr_all:.3f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--n-starts", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the per-replication records as JSON")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    results = []
    t0 = time.perf_counter()
    for scenario in args.scenarios:
        for rep in range(args.reps):
            results.append(one_replication(scenario, rep, args.n_starts))
            if args.out:
                with open(args.out, "w") as fh:
                    json.dump(results, fh)
        print(f"{scenario}: {args.reps} replications done after {time.perf_counter() - t0:.0f} s", flush=True)
    print(summarise(results))


if __name__ == "__main__":
    main()

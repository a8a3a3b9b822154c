"""Draw the figures shown on the documentation pages into docs/figures/ (committed PNGs).

Run ``python docs/gen_figures.py [output_directory]`` after changing a figure or a page that shows one;
the calls are the ones the pages show. ``tests/test_docs.py`` runs this script into a temporary directory
and checks that it draws every figure a page links to.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import memoe

#: the MEMoE tutorial's data and model (docs/tutorial_memoe.md, examples/pbc_memoe.py)
TUTORIAL_DATA = "pbcseq"
TUTORIAL_FORMULA = "logbili ~ years + (years | id)"
TUTORIAL_GATING = "~ age + sex + trt"


def figures() -> dict:
    """Every figure of the docs, by file name (without .png)."""
    sleep = memoe.datasets.load("sleepstudy")
    fit = memoe.lmm("Reaction ~ Days + (Days | Subject)", data=sleep).fit()
    sim = memoe.datasets.load(TUTORIAL_DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mix = memoe.MEMoE(TUTORIAL_FORMULA, gating=TUTORIAL_GATING, k=2, data=sim).fit(n_starts=5, seed=1,
                                                                                      progress=False)
    return {
        "lmm_residuals": lambda: fit.plot.residuals(),
        "lmm_qq": lambda: fit.plot.qq(),
        "lmm_caterpillar": lambda: fit.plot.caterpillar(),
        "lmm_shrinkage": lambda: fit.plot.shrinkage(),
        "lmm_variance_components": lambda: fit.plot.variance_components(),
        "lmm_trajectories": lambda: fit.plot.trajectories(y="fitted"),
        "lmm_predictions": lambda: fit.plot.predictions(max_subjects=4),
        "memoe_posterior": lambda: mix.plot.posterior(),
        "memoe_gate_effects": lambda: mix.plot.gate_effects(),
        "memoe_trajectories": lambda: mix.plot.trajectories(time="years", y="fitted", max_subjects=312),
    }


def main(outdir: str | Path | None = None) -> list[Path]:
    out = Path(outdir) if outdir else Path(__file__).resolve().parent / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in figures().items():
        fig = draw()
        path = out / f"{name}.png"
        # fixed size and dpi, no timestamp metadata: a redraw of unchanged figures changes no bytes
        fig.savefig(path, dpi=80, metadata={"Software": None})
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(sys.argv[1] if len(sys.argv) > 1 else None):
        print(p)

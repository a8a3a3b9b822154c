"""The worked examples run end to end and write what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_longitudinal_analysis(tmp_path):
    path = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=path)
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "longitudinal_analysis.py"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("residuals", "qq", "ranef_qq", "caterpillar", "shrinkage", "variance_components", "trajectories",
                 "predictions", "gee_residuals"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count('<img alt=') >= 6 and "http://" not in page and "https://" not in page
    # the analysis reaches its conclusions: LRT table, BIC choice, GEE and mixed estimates agree
    assert "Pr(>Chisq)" in run.stdout and "-> best:" in run.stdout and "ICC of the chosen model" in run.stdout


@pytest.mark.slow
def test_pbc_memoe(tmp_path):
    """The real-data MEMoE application runs end to end (2 bootstrap replicates, 3 starts, to keep it short)."""
    path = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=path)
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pbc_memoe.py"), str(tmp_path), "--nsim", "2", "--starts", "3"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("pbc_class_trajectories", "pbc_posterior", "pbc_gate_effects", "pbc_moe_trajectories"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    out = run.stdout
    assert "lowest BIC: MEMoE k=2" in out and "K = 1 vs 2: LRT" in out and "K = 2 vs 3: LRT" in out
    assert "rapid progression" in out and "odds_ratio" in out and "adjusted Rand" in out

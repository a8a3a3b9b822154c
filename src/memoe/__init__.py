"""memoe: mixed-effects models and the Mixed-Effects Mixture of Experts (MEMoE) for longitudinal data."""

from memoe import datasets, errors, marginal, metrics, persist, simulate
from memoe.gee import GEE, gee
from memoe.glmm import GLMM, GlmmResult, glmm
from memoe.inference import compare
from memoe.lmm import LMM, lmlist, lmm
from memoe.marginal import gls, lme
from memoe.moe import MEMoE, MoE, select_k
from memoe.moe.bootstrap import BootstrapLRT, bootstrap_lrt
from memoe.moe.simulation import Scenario, simulation_study
from memoe.persist import load
from memoe.plot import report

__version__ = "0.1.0"

__all__ = [
    "GEE",
    "GLMM",
    "LMM",
    "BootstrapLRT",
    "GlmmResult",
    "MEMoE",
    "MoE",
    "Scenario",
    "__version__",
    "bootstrap_lrt",
    "compare",
    "datasets",
    "errors",
    "gee",
    "glmm",
    "gls",
    "lme",
    "lmlist",
    "lmm",
    "load",
    "marginal",
    "metrics",
    "persist",
    "report",
    "select_k",
    "simulate",
    "simulation_study",
]

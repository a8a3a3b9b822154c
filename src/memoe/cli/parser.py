"""The ``memoe`` command's argparse parser: one subparser per subcommand, each with examples in ``--help``."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["UsageError", "build_parser"]


class UsageError(Exception):
    """A command line argparse refused; :func:`memoe.cli.main` prints it as one line and exits with 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises :class:`UsageError` instead of printing usage and exiting.

    ``main`` then prints one line naming the problem (and returns 2 rather than calling ``sys.exit``,
    so ``main([...])`` can be called in-process).
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


_FMT = argparse.RawDescriptionHelpFormatter


def _base() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--quiet", "-q", action="store_true", help="print nothing on stdout (files and errors only)")
    g.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway when stderr "
                   "is not a terminal)")
    return p


def _data(required: bool = True) -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--data", "-d", required=required, metavar="FILE",
                   help="data file: CSV (.csv, .tsv), Parquet (.parquet) or Feather (.feather)")
    g.add_argument("--factor", action="append", metavar="COL", default=[],
                   help="treat column COL as a factor (repeatable); string columns are factors anyway")
    g.add_argument("--levels", action="append", metavar="COL=A,B,C", default=[],
                   help="factor COL with this level order, the first being the reference (repeatable)")
    return p


def _outputs() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("results")
    g.add_argument("--save", metavar="FILE", help="save the fit (.memoe) for `memoe show|predict|report`")
    g.add_argument("--output", "-o", metavar="FILE",
                   help="write the tidy table (.csv, .json, .parquet, .feather); a name ending in 'glance' "
                        "(glance.json) writes the glance row instead")
    g.add_argument("--conf-int", action="store_true", help="add conf_low, conf_high (95%% Wald) to the tidy table")
    g.add_argument("--report", metavar="FILE", help="write an HTML report (memoe.report)")
    return p


def _ml(p: argparse.ArgumentParser, what: str = "REML (the default)") -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ml", action="store_true", help="maximum likelihood")
    g.add_argument("--reml", action="store_true", help=what)


def _memoe_options(p: argparse.ArgumentParser, k_help: str, k_type) -> None:
    g = p.add_argument_group("mixture")
    g.add_argument("--gating", metavar="FORMULA", help="gate formula of baseline covariates, e.g. '~ w1 + w2' "
                   "(default: constant class proportions)")
    g.add_argument("--k", required=True, type=k_type, help=k_help)
    g.add_argument("--starts", type=_positive_int, default=20, help="EM starting points (>= 1, default 20)")
    g.add_argument("--seed", type=_nonnegative_int, help="random seed (makes the fit reproducible)")
    g.add_argument("--mixture", metavar="FORMULA", help="class-specific fixed effects, e.g. '~ time'")
    g.add_argument("--random-cov", choices=["class", "common", "proportional"], default="class",
                   help="random-effects covariance across experts (default class)")
    g.add_argument("--sigma", choices=["class", "common"], default="class", help="residual SD across experts")
    g.add_argument("--group", metavar="COL", help="subject column (default: the random-effects grouping factor)")
    g.add_argument("--family", choices=["gaussian", "binomial", "poisson"], default="gaussian",
                   help="experts' response family (default gaussian; binomial / poisson: Laplace-EM)")


_EXAMPLES = {
    "fit": """examples:
  memoe fit "Reaction ~ Days + (Days | Subject)" --data sleep.csv
  memoe fit "Reaction ~ Days + (Days | Subject)" --data sleep.csv --ml --output tidy.csv --save sleep.memoe
  memoe fit "incidence ~ period + (1 | herd)" --data cbpp.parquet --family poisson --nagq 1 -o glance.json
""",
    "gls": """examples:
  memoe gls "weight ~ Time * Diet" --data bw.csv --factor Diet --correlation "car1(Time | Rat)" \\
      --weights "varident(Diet)"
  memoe gls "distance ~ age * Sex" --data orth.csv --correlation "symm(| Subject)" --ml -o tidy.json

correlation: ar1, ar1(visit | id), car1(time | id), exp(time | id[, nugget]), symm([visit] | id), compsymm(| id)
weights:     varident(column)
""",
    "lme": """examples:
  memoe lme "follicles ~ Time + (1 | Mare)" --data ovary.csv --correlation ar1
  memoe lme "weight ~ Time + (1 | Rat)" --data bw.csv --correlation "exp(Time | Rat, nugget)" --save bw.memoe
  memoe lme "pixel ~ day + I(day**2) + (day | Dog) + (1 | Dog:Side)" --data pixel.csv --correlation ar1

In lme the correlation's group defaults to the (innermost, for nested levels) random-effects grouping factor.
""",
    "gee": """examples:
  memoe gee "distance ~ age * Sex" --data orth.csv --group Subject --corstr ar1
  memoe gee "TICKS ~ YEAR" --data ticks.csv --group BROOD --corstr exchangeable --family poisson -o tidy.csv
""",
    "memoe": """examples:
  memoe memoe "y ~ time + x + (time | id)" --gating "~ w1 + w2" --k 2 --data sim.csv --starts 20 --seed 1
  memoe memoe "y ~ time + (time | id)" --k 3 --data sim.parquet --save k3.memoe -o glance.json --quiet
  memoe memoe "y ~ time + x + (time | id)" --gating "~ w1" --k 2 --family binomial --data adherence.csv
""",
    "select-k": """examples:
  memoe select-k "y ~ time + (time | id)" --gating "~ w1" --k 1:4 --data sim.csv --seed 1 -o ks.csv
  memoe select-k "y ~ time + (time | id)" --k 1,2,3 --data sim.csv --save best.memoe   # smallest BIC

--output writes the criteria table (k, loglik, npar, AIC, BIC, ICL, entropy, ...).
""",
    "show": """examples:
  memoe show sleep.memoe                      # R-style summary
  memoe show sleep.memoe --tidy > tidy.csv    # tidy table as CSV on stdout
  memoe show sleep.memoe --glance             # glance row as JSON
  memoe show sleep.memoe --tidy -o tidy.json
""",
    "predict": """examples:
  memoe predict sleep.memoe --data new.csv --output pred.csv
  memoe predict sleep.memoe --data new.csv --re-form none -o pred.parquet   # population level
  memoe predict sleep.memoe --data new.csv --interval prediction -o pred.csv

The output is the data with a 'predicted' column (or the interval's columns).
""",
    "report": """examples:
  memoe report sleep.memoe -o report.html
""",
    "demo": """examples:
  memoe demo
  memoe demo --starts 5
""",
    "datasets": """examples:
  memoe datasets                                   # name, rows, file inside the installed package
  memoe datasets --export sleepstudy sleep.csv     # write a bundled data set (.csv, .parquet, .feather)
""",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``memoe`` command."""
    from memoe import __version__
    from memoe.cli.commands import fitting, misc, saved

    parser = _Parser(
        prog="memoe",
        description="Mixed-effects models (LMM, GLMM, gls/lme, GEE) and mixtures of LMM experts from the shell.",
        epilog="Run 'memoe COMMAND --help' for a command's options and examples. Exit status: 0 success, "
               "1 a fit that failed, 2 a usage or data error.",
        formatter_class=_FMT,
    )
    parser.add_argument("--version", action="version", version=f"memoe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    base, data, outputs = _base(), _data(), _outputs()

    def add(name: str, help: str, parents: list, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=_EXAMPLES[name], formatter_class=_FMT,
                           parents=parents)
        p.set_defaults(func=func)
        return p

    p = add("fit", "fit a linear (default) or generalized linear mixed model (lme4 formula)",
            [base, data, outputs], fitting.cmd_fit)
    p.add_argument("formula", help="lme4 formula, e.g. 'y ~ t + (t | id)'")
    p.add_argument("--family", type=str.lower, default="gaussian",
                   choices=["gaussian", "binomial", "poisson", "gamma", "inverse_gaussian", "inverse.gaussian",
                            "negative_binomial", "nbinom2"],
                   help="gaussian: LMM (default); binomial / poisson / Gamma / inverse_gaussian / negative_binomial "
                   "(NB2, theta estimated as glmer.nb): GLMM as lme4's glmer (a GLM without random-effects terms)")
    p.add_argument("--link", help="GLMM link (R's names: logit, probit, cloglog, log, identity, inverse, 1/mu^2); "
                   "default the family's canonical one; with --family gaussian a non-identity link fits a GLMM")
    p.add_argument("--nagq", type=_nonnegative_int, help="GLMM: 0, 1 (Laplace, default) or adaptive Gauss-Hermite "
                   "nodes for one scalar random-effects term")
    _ml(p, "REML (the LMM default)")

    for name, help, func in (
        ("gls", "fit a generalized least squares model with a residual correlation / variance structure (nlme)",
         fitting.cmd_gls),
        ("lme", "fit a linear mixed model with a residual correlation / variance structure (nlme)", fitting.cmd_lme),
    ):
        p = add(name, help, [base, data, outputs], func)
        p.add_argument("formula", help="'y ~ x' (gls) or an lme4 formula 'y ~ x + (1 | id)' (lme)")
        p.add_argument("--correlation", metavar="STRUCT", help="e.g. 'car1(Time | Rat)', 'ar1', 'exp(Time | Rat, "
                       "nugget)', 'symm(visit | id)', 'compsymm(| id)', 'arma(| Mare, p=1, q=1)', "
                       "'gaus(Time | Rat, nugget)', 'spher(x + y | g, metric=manhattan)', 'lin(...)', 'ratio(...)'")
        p.add_argument("--weights", metavar="VARFUNC", help="variance function, e.g. 'varident(Diet)', 'varpower' "
                       "(fitted values), 'varpower(age | Sex)', 'varexp(age)', 'varconstpower(age)', 'varfixed(w)', "
                       "'varcomb(varident(Sex), varpower(age))'")
        _ml(p)

    p = add("gee", "fit a marginal model by generalized estimating equations (geepack's geeglm)",
            [base, data, outputs], fitting.cmd_gee)
    p.add_argument("formula", help="'y ~ x1 * f' (no random-effects terms)")
    p.add_argument("--group", required=True, metavar="COL", help="cluster id column")
    p.add_argument("--corstr", choices=["independence", "exchangeable", "ar1", "unstructured"],
                   default="independence", help="working correlation (default independence)")
    p.add_argument("--family", choices=["gaussian", "binomial", "poisson"], default="gaussian",
                   help="with its canonical link (default gaussian)")
    p.add_argument("--time", metavar="COL", help="column ordering the rows within a cluster (waves)")
    p.add_argument("--scale-fix", action="store_true", help="do not update the dispersion (geeglm's scale.fix)")

    p = add("memoe", "fit a mixture of LMM experts (MEMoE) by multi-start EM", [base, data, outputs],
            fitting.cmd_memoe)
    p.add_argument("formula", help="expert formula, e.g. 'y ~ time + x + (time | id)'")
    _memoe_options(p, "number of experts (>= 1)", _positive_int)
    p.add_argument("--nagq", type=_positive_int, default=1,
                   help="non-Gaussian experts: 1 (Laplace, default) or adaptive Gauss-Hermite nodes")

    p = add("select-k", "fit MEMoEs for several numbers of experts and tabulate AIC, BIC, ICL",
            [base, data, outputs], fitting.cmd_select_k)
    p.add_argument("formula", help="expert formula, e.g. 'y ~ time + (time | id)'")
    _memoe_options(p, "numbers of experts: a range 1:4 (both ends included) or a list 1,2,3", str)

    p = add("show", "print or export a saved fit", [base], saved.cmd_show)
    p.add_argument("fit", help="a .memoe file written by --save")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--summary", dest="what", action="store_const", const="summary", help="R-style summary (default)")
    g.add_argument("--tidy", dest="what", action="store_const", const="tidy", help="tidy table (CSV on stdout)")
    g.add_argument("--glance", dest="what", action="store_const", const="glance", help="glance row (JSON on stdout)")
    p.add_argument("--output", "-o", metavar="FILE", help="write it to FILE (.csv, .json, .parquet, .feather; "
                   ".txt for the summary)")
    p.add_argument("--conf-int", action="store_true", help="add conf_low, conf_high to the tidy table")

    p = add("predict", "predict from a saved fit for new data", [base, _data()], saved.cmd_predict)
    p.add_argument("fit", help="a .memoe file written by --save")
    p.add_argument("--output", "-o", metavar="FILE", help="predictions file (.csv, .json, .parquet, .feather; "
                   "default CSV on stdout)")
    p.add_argument("--re-form", metavar="WHICH", help="'full' (default: with the random effects), 'none' "
                   "(population level) or a formula of some random-effects terms")
    p.add_argument("--type", choices=["response", "link"], default="response", help="scale of the predictions")
    p.add_argument("--allow-new-levels", action="store_true", help="groups not in the fit get random effects 0")
    p.add_argument("--interval", choices=["confidence", "prediction"], help="add interval columns (when the fit's "
                   "predict supports it)")

    p = add("report", "write an HTML report of a saved fit", [base], saved.cmd_report)
    p.add_argument("fit", help="a .memoe file written by --save")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the report (.html)")

    p = add("demo", "fit the bundled example data and print the summaries", [base], misc.cmd_demo)
    p.add_argument("--starts", type=_positive_int, default=10, help="EM starts for the MEMoE demo (>= 1)")

    p = add("datasets", "list the bundled data sets, or export one", [base], misc.cmd_datasets)
    p.add_argument("--export", nargs=2, metavar=("NAME", "FILE"), help="write data set NAME to FILE (.csv, "
                   ".parquet, .feather, .json)")
    return parser

"""The fitting subcommands: ``fit`` (LMM / GLMM), ``gls``, ``lme``, ``gee``, ``memoe`` and ``select-k``."""

from __future__ import annotations

import argparse
import re

from memoe.cli.commands.common import finish, load_data, progress_flag, run_report, save_fit
from memoe.cli.io import write_table
from memoe.errors import ArgumentError

__all__ = ["cmd_fit", "cmd_gee", "cmd_gls", "cmd_lme", "cmd_memoe", "cmd_select_k", "parse_ks"]


def _reml(args: argparse.Namespace, default: bool = True) -> bool:
    if args.ml:
        return False
    if args.reml:
        return True
    return default


def cmd_fit(args: argparse.Namespace) -> int:
    """LMM (``--family gaussian``, the default) or GLMM / GLM (``--family binomial|poisson|gamma|inverse_gaussian|
    negative_binomial``, ``--link``)."""
    import memoe

    family = (args.family or "gaussian").lower()
    link = getattr(args, "link", None)
    if family == "gaussian" and link not in (None, "identity"):
        family = "gaussian_glmm"
    if family == "gaussian":
        if args.nagq is not None:
            raise ArgumentError("--nagq applies to a GLMM (--family binomial or poisson), not to the gaussian LMM")
        data = load_data(args)
        fit = memoe.lmm(args.formula, data=data).fit(reml=_reml(args))
    else:
        if args.reml:
            raise ArgumentError(f"--reml applies to a gaussian LMM; a {family} GLMM is fitted by maximum likelihood")
        data = load_data(args)
        nagq = 1 if args.nagq is None else args.nagq
        from memoe.glmm.families import get_family

        fam = get_family("gaussian" if family == "gaussian_glmm" else family, link)
        fit = memoe.glmm(args.formula, data, fam).fit(nAGQ=nagq)
    return finish(fit, args)


def _structures(args: argparse.Namespace):
    from memoe.cli.structures import parse_correlation, parse_weights

    corr = parse_correlation(args.correlation) if args.correlation else None
    weights = parse_weights(args.weights) if args.weights else None
    return corr, weights


def cmd_gls(args: argparse.Namespace) -> int:
    """nlme's gls with ``--correlation`` / ``--weights``."""
    import memoe

    corr, weights = _structures(args)  # a malformed structure fails before the file is read
    data = load_data(args)
    fit = memoe.gls(args.formula, data, correlation=corr, weights=weights).fit(reml=_reml(args))
    return finish(fit, args)


def cmd_lme(args: argparse.Namespace) -> int:
    """nlme's lme (lme4 formula) with ``--correlation`` / ``--weights``."""
    import memoe

    corr, weights = _structures(args)
    data = load_data(args)
    fit = memoe.lme(args.formula, data, correlation=corr, weights=weights).fit(reml=_reml(args))
    return finish(fit, args)


def cmd_gee(args: argparse.Namespace) -> int:
    """geepack's geeglm."""
    import memoe

    data = load_data(args)
    model = memoe.gee(args.formula, data, group=args.group, family=args.family, corstr=args.corstr,
                      time=args.time, scale_fix=args.scale_fix)
    return finish(model.fit(), args)


def _memoe_options(args: argparse.Namespace) -> dict:
    kw = {"random_cov": args.random_cov, "sigma": args.sigma}
    if getattr(args, "family", "gaussian") != "gaussian":
        kw["family"] = args.family
    if args.mixture:
        kw["mixture"] = args.mixture
    if args.group:
        kw["group"] = args.group
    return kw


def cmd_memoe(args: argparse.Namespace) -> int:
    """A mixture of LMM experts fitted by multi-start EM."""
    import memoe

    data = load_data(args)
    model = memoe.MEMoE(args.formula, gating=args.gating, k=args.k, data=data, **_memoe_options(args))
    fit = model.fit(n_starts=args.starts, seed=args.seed, progress=progress_flag(args), nAGQ=args.nagq)
    return finish(fit, args)


_RANGE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ks(text: str) -> list[int]:
    """``"1:4"`` -> ``[1, 2, 3, 4]`` (inclusive, as R); ``"1,2,3"`` -> ``[1, 2, 3]``; ``"2"`` -> ``[2]``.

    Raises
    ------
    ArgumentError
        Anything else, a reversed range, a K below 1 or a repeated K.
    """
    m = _RANGE.match(text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo < 1 or hi < lo:
            raise ArgumentError(f"--k {text!r}: a range lo:hi needs 1 <= lo <= hi (both ends included)")
        return list(range(lo, hi + 1))
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ArgumentError(f"--k {text!r} must be a range such as 1:4 or a list such as 1,2,3")
    ks = [int(p) for p in parts]
    if min(ks) < 1:
        raise ArgumentError(f"--k {text!r}: every number of experts must be >= 1")
    if len(set(ks)) != len(ks):
        raise ArgumentError(f"--k {text!r} repeats a number of experts")
    return sorted(ks)


def cmd_select_k(args: argparse.Namespace) -> int:
    """Fit K = ... experts and tabulate the criteria; ``--save`` keeps the fit with the smallest BIC."""
    import memoe

    ks = parse_ks(args.k)
    data = load_data(args)
    table, fits = memoe.select_k(args.formula, gating=args.gating, data=data, ks=ks, n_starts=args.starts,
                                 seed=args.seed, return_fits=True, progress=progress_flag(args),
                                 **_memoe_options(args))
    best = int(table["BIC"].idxmin())
    if not args.quiet:
        print(table.to_string())
        print(f"\nsmallest BIC: K = {best}")
    if args.output:
        write_table(table.reset_index(), args.output, "--output")
    if args.save:
        save_fit(fits[best], args.save)
    if args.report:
        run_report(fits[best], args.report)
    return 0

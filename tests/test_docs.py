"""The documentation's Python examples run as written, and every public name is in the API reference.

Each page of ``docs/`` is one test: its ```python blocks run in order in one namespace (page by page, as a
reader would paste them), in a temporary directory, so files they save do not land in the checkout.
Figures left in the namespace are saved there too (every figure must render). A block marked by an HTML
comment ``<!-- not-run -->`` on the line before it is skipped; a page with ``<!-- docs-test: slow -->``
is marked slow. Blocks with markdown-exec options (```python exec="1" ...) are also executed by the docs
build, which shows their output on the page.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python(?P<opts>[^\n]*)\n(?P<code>.*?)```", re.S)
_DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.M)

#: the modules whose ``__all__`` is the public API (``memoe.errors`` has none: its public classes count)
PUBLIC_MODULES = ["memoe", "memoe.cli", "memoe.datasets", "memoe.gee", "memoe.glmm", "memoe.inference",
                  "memoe.lmm", "memoe.marginal", "memoe.moe", "memoe.persist", "memoe.plot", "memoe.simulate",
                  "memoe.metrics", "memoe.errors"]


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def _blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        if "not-run" in m.group("before"):
            continue
        out.append((text[: m.start("code")].count("\n") + 1, m.group("code")))
    return out


def _page_params():
    params = []
    for page in _pages():
        if not _blocks(page):
            continue
        slow = "docs-test: slow" in page.read_text(encoding="utf-8")
        rel = page.relative_to(DOCS).as_posix()
        params.append(pytest.param(page, id=rel, marks=[pytest.mark.slow] if slow else []))
    return params


def test_docs_have_examples():
    pages_with_code = [p for p in _pages() if _blocks(p)]
    assert len(pages_with_code) >= 12, [p.name for p in pages_with_code]


@pytest.mark.parametrize("page", _page_params())
def test_docs_page_runs(page: Path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    rel = page.relative_to(DOCS).as_posix()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line, code in _blocks(page):
            try:
                exec(compile(code, f"docs/{rel}:{line}", "exec"), namespace)
            except Exception as exc:  # report which block broke
                raise AssertionError(f"docs/{rel} block at line {line} failed: {type(exc).__name__}: {exc}") from exc
            # save the figures a block drew (rendering is where a broken figure fails)
            for name, value in list(namespace.items()):
                if isinstance(value, Figure):
                    value.savefig(tmp_path / f"{name}.png", dpi=50)
                    namespace[name] = None
    import matplotlib.pyplot as plt

    plt.close("all")


# ----------------------------------------------------------------------------------------------------------
# the API reference covers every public name


def _public_names() -> list[tuple[str, str]]:
    out = []
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        names = getattr(mod, "__all__", None)
        if names is None:  # memoe.errors: the classes and functions it defines
            names = [n for n, o in vars(mod).items()
                     if not n.startswith("_") and getattr(o, "__module__", None) == mod_name]
        out += [(mod_name, n) for n in names]
    return out


def _resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def _api_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "api").glob("*.md")))


def test_api_directives_resolve():
    """Every ``::: path`` in the API pages names an importable object (a typo would be a build error too)."""
    for path in _DIRECTIVE.findall(_api_text()):
        _resolve(path)


def test_every_public_name_is_in_the_api_reference():
    text = _api_text()
    documented = [_resolve(p) for p in _DIRECTIVE.findall(text)]
    directives = set(_DIRECTIVE.findall(text))
    missing = []
    for mod_name, name in _public_names():
        obj = getattr(importlib.import_module(mod_name), name)
        qual = f"{mod_name}.{name}"
        # the directive must document the object itself: mkdocstrings (griffe) resolves a dotted path to a
        # submodule before an attribute, so `memoe.plot.report` would show the module, not the function
        if qual in directives and _resolve(qual) is obj:
            continue
        # a re-export: the name is mentioned on the reference pages and its object is documented elsewhere
        mentioned = f"`{qual}`" in text
        if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
            ok = mentioned
        else:
            ok = mentioned and any(obj is d for d in documented)
        if not ok:
            missing.append(qual)
    assert missing == [], f"public names missing from docs/api/*.md: {missing}"


# ----------------------------------------------------------------------------------------------------------
# figures: committed PNGs drawn by docs/gen_figures.py

_FIGURE_LINK = re.compile(r"!\[[^\]]*\]\((?:\.\./)*figures/([\w-]+)\.png\)")


def _linked_figures() -> set[str]:
    return {name for p in _pages() for name in _FIGURE_LINK.findall(p.read_text(encoding="utf-8"))}


def test_linked_figures_are_committed():
    linked = _linked_figures()
    assert linked, "no page shows a figure"
    missing = sorted(n for n in linked if not (DOCS / "figures" / f"{n}.png").is_file())
    assert missing == [], f"run `python docs/gen_figures.py`: missing {missing}"


@pytest.mark.slow
def test_gen_figures_draws_every_linked_figure(tmp_path):
    import importlib.util

    matplotlib.use("Agg")
    spec = importlib.util.spec_from_file_location("gen_figures", DOCS / "gen_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = {p.stem for p in module.main(tmp_path)}
    for name in written:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert _linked_figures() <= written, sorted(_linked_figures() - written)

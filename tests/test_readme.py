"""The README's Python examples run as written: every ```python block, in order, in one namespace.

A block that should not run (none today) would be marked by an HTML comment ``<!-- not-run -->`` on the
line before it. Blocks run in a temporary directory so files they save do not land in the checkout.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import matplotlib
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        if "not-run" in m.group("before"):
            continue
        line = text[: m.start("code")].count("\n") + 1
        out.append((line, m.group("code")))
    return out


def test_readme_has_examples():
    assert len(_blocks()) >= 5


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line, code in _blocks():
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as exc:  # report which block broke
                raise AssertionError(f"README block at line {line} failed: {type(exc).__name__}: {exc}") from exc

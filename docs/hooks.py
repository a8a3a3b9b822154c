"""MkDocs hooks of the memoe docs (registered in mkdocs.yml).

Markdown tables need ``\\|`` for a pipe inside a code span (lme4's ``(x | g)``), and Python-Markdown
keeps the backslash inside the code: drop it there.

The docstrings use Sphinx cross-reference roles (``:class:`LMM```, ``:func:`~memoe.x.f```), which
mkdocstrings renders literally (":class:" before the code). Drop the role and a leading ``~`` so the
reference reads as the code name it is.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|py:\w+):(?=<code>)")
_TILDE = re.compile(r"<code>~([\w.]+)</code>")
_CODE = re.compile(r"<code>[^<]*</code>")


def on_page_content(html: str, **kwargs) -> str:
    html = _CODE.sub(lambda m: m.group(0).replace("\\|", "|"), html)
    html = _ROLE.sub("", html)
    return _TILDE.sub(lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1]}</code>", html)

"""MkDocs hooks of the memoe docs (registered in mkdocs.yml).

The docstrings use Sphinx cross-reference roles (``:class:`LMM```, ``:func:`~memoe.x.f```), which
mkdocstrings renders literally (":class:" before the code). Drop the role and a leading ``~`` so the
reference reads as the code name it is.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|py:\w+):(?=<code>)")
_TILDE = re.compile(r"<code>~([\w.]+)</code>")


def on_page_content(html: str, **kwargs) -> str:
    html = _ROLE.sub("", html)
    return _TILDE.sub(lambda m: f"<code>{m.group(1).rsplit('.', 1)[-1]}</code>", html)

"""MkDocs hook (mkdocs.yml `hooks:`): Sphinx roles in the docstrings become cross-references.

The docstrings in src/aevb write ``:class:`~aevb.settings.TrainSettings```; mkdocstrings renders
that as ``:class:<code>~aevb.settings.TrainSettings</code>``. This turns each one into an optional
mkdocs-autorefs reference: a link when the target is documented on the site, plain code otherwise
(no warning, so relative names such as ``:func:`load``` are fine), with the role prefix dropped
and ``~`` showing only the last component, as Sphinx does.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _ref(m: re.Match[str]) -> str:
    target = m[2].lstrip(".")
    shown = target.rsplit(".", 1)[-1] if m[1] else m[2]
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub(_ref, html)

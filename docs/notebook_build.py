"""docs/tutorial.md -> docs/tutorial.ipynb: the tutorial is written once, as Markdown.

Prose becomes Markdown cells and each ```python block a code cell. ``python docs/notebook_build.py``
rewrites the notebook; tests/test_tutorial.py checks the committed one is what this builds and
executes it, so neither can go stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

DOCS = Path(__file__).resolve().parent
SOURCE, NOTEBOOK = DOCS / "tutorial.md", DOCS / "tutorial.ipynb"
_CODE = re.compile(r"^```python\n(.*?)^```\n?", flags=re.S | re.M)


def build(source: Path = SOURCE) -> nbformat.NotebookNode:
    """The notebook of a Markdown file: alternating Markdown and code cells, in order."""
    text, cells, at = source.read_text(), [], 0
    for m in _CODE.finditer(text):
        prose = text[at : m.start()].strip()
        if prose:
            cells.append(nbformat.v4.new_markdown_cell(prose))
        cells.append(nbformat.v4.new_code_cell(m[1].rstrip("\n")))
        at = m.end()
    if text[at:].strip():
        cells.append(nbformat.v4.new_markdown_cell(text[at:].strip()))
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"  # stable ids: the committed file changes only with the text
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata.update(
        kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
        language_info={"name": "python"},
    )
    return nb


def main() -> None:
    nbformat.write(build(), str(NOTEBOOK))
    print(f"wrote {NOTEBOOK}", file=sys.stderr)


if __name__ == "__main__":
    main()

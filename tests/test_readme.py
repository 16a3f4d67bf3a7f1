"""The README's quickstart commands and Python example run as written."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from aevb.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


FULL = os.environ.get("AEVB_FULL_DOCS") == "1"
"""Run the quickstart's training budgets as written (.ci/run does); else a tenth of them, which
keeps the suite under its ten minutes and exercises the same commands."""


def _budget(argv: list[str]) -> list[str]:
    if FULL or "--budget" not in argv:
        return argv
    i = argv.index("--budget") + 1
    return [*argv[:i], str(int(argv[i]) // 10), *argv[i + 1 :]]


def test_readme_cli_quickstart_runs(tmp_path, monkeypatch, capsys):
    cmds = [
        ln.strip()
        for block in _blocks("bash")
        for ln in block.splitlines()
        if ln.strip().startswith("aevb ") and "mydata" not in ln
    ]
    assert len(cmds) >= 7
    # in this process, as the installed command's main() (tests/test_cli.py runs the installed
    # script itself): nine interpreters would spend most of the test importing torch
    monkeypatch.chdir(tmp_path)
    for cmd in cmds:
        argv = _budget(shlex.split(cmd.split("#")[0]))[1:]
        assert main(argv + ["--quiet"] if argv[0] == "train" else argv) == 0, (
            cmd,
            capsys.readouterr().err[-2000:],
        )
    for f in ("samples.png", "manifold.png", "reconstructions.png", "z.npy"):
        assert (tmp_path / f).stat().st_size > 0
    assert (tmp_path / "runs/digits2d/figures/manifold.png").exists()


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "'bound':" in out
    assert "(100, 64) (100, 2)" in out  # the manifold's arrays
    assert (tmp_path / "api-manifold.png").exists()

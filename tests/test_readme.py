"""The README's quickstart commands and Python example run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

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


def test_readme_cli_quickstart_runs(tmp_path):
    cmds = [
        ln.strip()
        for block in _blocks("bash")
        for ln in block.splitlines()
        if ln.strip().startswith("aevb ") and "mydata" not in ln
    ]
    assert len(cmds) >= 7
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in cmds:
        argv = _budget(shlex.split(cmd.split("#")[0]))
        res = subprocess.run(
            argv + ["--quiet"] if argv[1] == "train" else argv,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
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

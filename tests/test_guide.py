"""docs/GUIDE.md works as written: its commands run in order, from a CSV to figures."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from aevb.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "GUIDE.md"
SKIP = ("make ", "source ")  # the test environment is the installed one


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_commands_run_from_csv_to_figures(tmp_path, monkeypatch, capsys):
    (toml,) = _blocks("toml")
    (tmp_path / "wine.toml").write_text(toml)
    cmds = [
        ln.split("  #")[0].strip()
        for block in _blocks("bash")
        for ln in block.splitlines()
        if ln.strip() and not ln.startswith(SKIP)
    ]
    assert sum(c.startswith("aevb ") for c in cmds) >= 8
    # aevb commands run in this process (each new process would spend seconds importing torch)
    monkeypatch.chdir(tmp_path)
    for cmd in cmds:
        argv = shlex.split(cmd)
        if argv[0] == "aevb":
            extra = ["--quiet"] if argv[1] == "train" else []
            assert main(argv[1:] + extra) == 0, (cmd, capsys.readouterr().err[-2000:])
            continue
        if argv[0] == "python":
            argv[0] = sys.executable
        res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
    run = tmp_path / "runs" / "wine"
    for name in ("best_model.safetensors", "model.safetensors", "figures/curves.png"):
        assert (run / name).is_file(), name
    assert (tmp_path / "wine-compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["likelihood"] == "gaussian-linear" and cfg["data"]["validation"]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_bound"] > metrics[0]["train_bound"] + 3.0  # it learned
    warm = [json.loads(ln) for ln in (tmp_path / "runs/wine-warmup/metrics.jsonl").open()]
    assert warm[0]["kl_weight"] == 0.0 and warm[-1]["kl_weight"] == 1.0
    # reconstructions and samples come back in the CSV's own units, with its header
    header = (tmp_path / "wine.csv").read_text().splitlines()[0]
    raw = np.loadtxt(tmp_path / "wine.csv", delimiter=",", skiprows=1)
    for name, rows in (("wine-reconstructed.csv", None), ("wine-synthetic.csv", 20)):
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0] == header
        x = np.loadtxt(tmp_path / name, delimiter=",", skiprows=1)
        assert x.shape[1] == 13 and (rows is None or len(x) == rows)
        proline = x[:, -1]  # values near 1 000: not standardised ones
        assert abs(proline.mean() - raw[:, -1].mean()) < raw[:, -1].std()
    with np.load(tmp_path / "wine-paths.npz") as f:
        assert f["x"].shape == (3, 2, 8, 13)
    # the Python twin
    (code,) = _blocks("python")
    capsys.readouterr()
    exec(compile(code, str(GUIDE), "exec"), {})
    assert "(2, 13)" in capsys.readouterr().out

"""Run formats (docs/RELIABILITY.md): every released format still loads, evaluates, samples and
resumes (format 1 is converted); newer and unknown formats are refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from fault_injection import FIXTURE_V1, FIXTURES, TALLY, copy_run

import aevb
from aevb import runs
from aevb.cli import main
from aevb.errors import RunError


def _digest_tree(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_a_released_run_still_loads_evaluates_and_samples(tmp_path, capsys, fmt):
    fixture = FIXTURES[fmt]
    before = _digest_tree(fixture)
    assert runs.run_format(fixture) == fmt
    model = aevb.load(fixture)
    assert model.config.latent_dim == 2 and model.config.hidden == 8
    x = torch.from_numpy(aevb.data.load_dataset("digits").test[:20])
    assert torch.isfinite(model.elbo(x)).all()
    res = aevb.evaluate(fixture)
    last = runs.read_metrics(fixture)[-1]
    assert res["points"] == 297 and abs(res["bound"] - last["test_bound"]) < 1.0
    assert main(["sample", str(fixture), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["verify", str(fixture)]) == 0
    assert f"run format {fmt}" in capsys.readouterr().out
    assert _digest_tree(fixture) == before  # reading never writes


def test_resuming_a_format2_run_continues_it(tmp_path):
    run = copy_run(FIXTURES[2], tmp_path / "run")
    res = aevb.train(resume=run, budget=3000, progress=False, draw_figures=False)
    assert res.final["samples_seen"] == 3000 and runs.verify_run(run)["checksums"]


def test_resuming_a_format1_run_converts_it(tmp_path):
    run = copy_run(FIXTURE_V1, tmp_path / "run")
    old = runs.read_metrics(run)
    res = aevb.train(resume=run, budget=3000, progress=False, draw_figures=False)
    assert res.final["samples_seen"] == 3000
    assert runs.run_format(run) == runs.FORMAT_VERSION
    assert runs.verify_run(run)["checksums"] is True
    assert {"figures/curves.png", runs.STATE, runs.MODEL} <= set(
        json.loads((run / runs.MANIFEST).read_text())["files"]
    )
    new = runs.read_metrics(run)
    assert new[: len(old)] == old and new[-1]["samples_seen"] == 3000
    aevb.load(run)


def _rewrite_manifest(run: Path, **changes) -> None:
    m = json.loads((run / runs.MANIFEST).read_text())
    m.update(changes)
    m["checksum"] = runs._manifest_checksum(m)
    (run / runs.MANIFEST).write_bytes(runs.json_bytes(m))


def test_newer_and_unknown_formats_are_refused_in_one_line(base_run, tmp_path, capsys):
    newer = copy_run(base_run, tmp_path / "newer")
    _rewrite_manifest(newer, format_version=3)
    for call in (lambda: aevb.load(newer), lambda: aevb.train(resume=newer, progress=False)):
        with pytest.raises(RunError, match="newer aevb.*reads run formats 1 to 2.*upgrade"):
            call()
    assert main(["evaluate", str(newer)]) == 2
    assert "newer aevb" in capsys.readouterr().err
    TALLY["format_cases_refused"] += 1
    # a format-1-style directory (no manifest) whose config claims a future or odd format
    for version, expect in ((7, "newer aevb"), ("2b", "unknown run format"), (None, "unknown")):
        d = copy_run(FIXTURE_V1, tmp_path / f"v{version}")
        cfg = json.loads((d / runs.CONFIG).read_text())
        cfg["format_version"] = version
        (d / runs.CONFIG).write_text(json.dumps(cfg))
        with pytest.raises(RunError, match=expect):
            aevb.load(d)
        TALLY["format_cases_refused"] += 1
    # a format-2 config without its manifest
    lost = copy_run(base_run, tmp_path / "lost")
    (lost / runs.MANIFEST).unlink()
    with pytest.raises(RunError, match="manifest.json: missing"):
        aevb.load(lost)
    TALLY["format_cases_refused"] += 1

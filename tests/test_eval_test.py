"""--no-eval-test: evaluations during training leave the test split out, and change nothing else."""

from __future__ import annotations

import re

import torch

import aevb
from aevb.cli import main
from aevb.explorer.state import Explorer

# overfit_npz (conftest): real digits, 60 training points and separate validation and test sets
SMALL = dict(
    latent_dim=2, hidden=30, lr=0.02, budget=2000, batch_size=20, eval_per_decade=2, validation=True
)


def test_the_test_split_is_left_out_and_the_other_numbers_stay(tmp_path, overfit_npz):
    data = str(overfit_npz)
    both = aevb.train(data, tmp_path / "both", progress=False, draw_figures=False, **SMALL)
    held = aevb.train(
        data, tmp_path / "held", eval_test=False, progress=False, draw_figures=False, **SMALL
    )
    assert any(k.startswith("valid_") for k in held.final)
    assert [r["samples_seen"] for r in held.metrics] == [r["samples_seen"] for r in both.metrics]
    for a, b in zip(both.metrics, held.metrics, strict=True):
        assert not [k for k in b if k.startswith("test_")]
        assert any(k.startswith("test_") for k in a)  # the comparison can fail
        # each split draws its own evaluation noise: train and validation numbers are unchanged
        assert {k: v for k, v in a.items() if not k.startswith("test_") and k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    sa, sb = both.model.state_dict(), held.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the test set is still there for the one evaluation of the model kept
    assert aevb.evaluate(tmp_path / "held", split="test")["points"] == 200


def test_the_cli_reports_the_validation_bound_instead(tmp_path, capsys, overfit_npz):
    out = tmp_path / "run"
    argv = ["train", "--data", str(overfit_npz), "--out", str(out), "--latent-dim", "2"]
    argv += ["--hidden", "30", "--lr", "0.02", "--budget", "2000", "--batch-size", "20"]
    assert main([*argv, "--validation", "--no-eval-test", "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("trained 2,000 samples (estimator B): train bound ")
    assert ", valid bound -" in line and "test" not in line.split("; run in")[0]


def _evaluation_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    return [ln for ln in (captured.out + captured.err).splitlines() if " samples  bound: " in ln]


def test_the_progress_lines_show_the_splits_that_were_evaluated(tmp_path, capsys, overfit_npz):
    argv = ["train", "--data", str(overfit_npz), "--latent-dim", "2", "--hidden", "30"]
    argv += ["--lr", "0.02", "--budget", "400", "--batch-size", "20", "--eval-per-decade", "1"]
    held = [*argv, "--validation", "--no-eval-test", "--out", str(tmp_path / "held")]
    assert main(held) == 0
    lines = _evaluation_lines(capsys)
    assert len(lines) == 3
    assert all(re.search(r"valid +-[0-9]", ln) and "test" not in ln for ln in lines)
    assert main([*argv, "--validation", "--out", str(tmp_path / "both")]) == 0
    lines = _evaluation_lines(capsys)
    assert len(lines) == 3
    assert all(re.search(r"valid +-[0-9.]+ test +-[0-9]", ln) for ln in lines)


def test_the_explorer_shows_the_validation_latent_usage(tmp_path, overfit_npz):
    held = aevb.train(str(overfit_npz), tmp_path / "held", eval_test=False, progress=False, **SMALL)
    active = Explorer(tmp_path / "held").info()["active"]
    last = held.metrics[-1]
    assert active["split"] == "valid" and active["samples_seen"] == last["samples_seen"]
    assert active["kl_per_dim"] == last["valid_kl_per_dim"] != last["train_kl_per_dim"]

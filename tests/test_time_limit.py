"""--time-limit: a call stops at its wall-time limit with an evaluation and a checkpoint there,
and --resume continues it to the same model as an unbroken run."""

from __future__ import annotations

import pytest
import torch

import aevb
from aevb import runs
from aevb.cli import main

# digits: 1 500 training points, minibatches of 100; evaluations (two a decade) at 0, 100, 400,
# 1 000, 3 200 and 6 000 samples. The limit is checked every 20 steps (2 000 samples), so a
# limit already spent stops a call at its first check: 2 000 samples after where it started.
SMALL = dict(latent_dim=2, hidden=30, lr=0.02, budget=6000, eval_per_decade=2, eval_size=300)
SPENT = 1e-9  # seconds: over before the first check


def _weights(run_dir) -> dict[str, torch.Tensor]:
    tensors, _ = runs.load_run_tensors(run_dir, runs.MODEL)
    return tensors


def _timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_a_spent_limit_stops_at_the_check_and_resume_ends_as_an_unbroken_run(tmp_path):
    cut = tmp_path / "cut"
    run = aevb.train("digits", cut, time_limit=SPENT, progress=False, draw_figures=False, **SMALL)
    assert run.timing["time_limit_reached"] is True
    assert [r["samples_seen"] for r in run.metrics] == [0, 100, 400, 1000, 2000]  # + the stop's
    _, state = runs.load_run_tensors(cut, runs.STATE)
    assert state["samples_seen"] == 2000  # checkpointed where it stopped
    again = aevb.train(resume=cut, time_limit=SPENT, progress=False, draw_figures=False)
    assert again.timing["time_limit_reached"] is True
    assert again.metrics[-1]["samples_seen"] == 4000  # 20 steps more, then the stop's evaluation
    done = aevb.train(resume=cut, progress=False, draw_figures=False)
    assert done.timing["time_limit_reached"] is False
    assert done.metrics[-1]["samples_seen"] == 6000
    whole = aevb.train(
        "digits", tmp_path / "whole", time_limit=3600, progress=False, draw_figures=False, **SMALL
    )
    assert whole.timing["time_limit_reached"] is False
    a, b = _weights(cut), _weights(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    # the same records, and the two stops' evaluations besides (they draw no training noise)
    stops = [r for r in done.metrics if r["samples_seen"] in (2000, 4000)]
    assert len(stops) == 2
    rest = [r for r in done.metrics if r["samples_seen"] not in (2000, 4000)]
    assert _timeless(rest) == _timeless(whole.metrics)


def test_the_cli_says_where_it_stopped_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--data", "digits", "--latent-dim", "2", "--hidden", "30", "--lr", "0.02"]
    assert (
        main(["train", "--out", str(out), "--budget", "6000", *small, "--time-limit", "1e-9"]) == 0
    )
    said = capsys.readouterr()
    assert "time limit: stopped after 1e-09 s at 2,000 samples of 6,000" in said.err + said.out
    assert main(["train", "--resume", str(out), "--time-limit", "600", "--quiet"]) == 0
    assert runs.read_metrics(out)[-1]["samples_seen"] == 6000


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_limit_is_one_line_and_exit_2(tmp_path, capsys, value):
    out = tmp_path / "run"
    try:
        code = main(["train", "--data", "digits", "--out", str(out), "--time-limit", value])
    except SystemExit as e:  # argparse's own type errors
        code = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "--time-limit" in err[0], err
    assert not out.exists()

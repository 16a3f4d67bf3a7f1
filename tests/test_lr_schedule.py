"""Step-size schedules (--lr-schedule cosine|linear, --lr-min): values, engines, resume, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fast_checks import M, make_data, make_model

from aevb import api, runs
from aevb.algorithms import AEVB
from aevb.errors import ConfigError
from aevb.training import TrainConfig, Trainer


def test_lr_at_follows_the_formulas():
    cos = TrainConfig(lr=0.1, lr_schedule="cosine", lr_min=0.02)
    lin = TrainConfig(lr=0.1, lr_schedule="linear", lr_min=0.02)
    for t in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        s = round(t * 1000)
        assert cos.lr_at(0.1, s, 1000) == pytest.approx(
            0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi * t)), rel=1e-12
        )
        assert lin.lr_at(0.1, s, 1000) == pytest.approx(0.1 - 0.08 * t, rel=1e-12)
    assert cos.lr_at(0.1, 500, 1000) == pytest.approx(0.06)  # halfway: the mean of the two ends
    assert cos.lr_at(0.1, 5000, 1000) == pytest.approx(0.02)  # past the end: stays at lr_min
    assert cos.lr_at(0.01, 500, 1000) == 0.01  # a group already below lr_min keeps its step size
    assert TrainConfig(lr=0.1).lr_at(0.1, 500, 1000) == 0.1  # constant: the paper's


@pytest.mark.parametrize(
    "options,message",
    [
        ({"lr_schedule": "step"}, "unknown --lr-schedule 'step'"),
        ({"lr_schedule": "cosine", "lr_min": -1.0}, "--lr-min must be a number >= 0"),
        ({"lr_schedule": "cosine", "lr_min": float("nan")}, "--lr-min must be a number >= 0"),
        ({"lr_min": 0.001}, "add --lr-schedule cosine"),
        ({"lr_schedule": "linear", "lr": 0.01, "lr_min": 0.01}, "must be below --lr"),
    ],
)
def test_bad_schedule_options_are_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**options)


def _trainer(engine: str, schedule: str, budget: int = 1200, data=None) -> Trainer:
    data = make_data("bernoulli", torch.float64, n=4 * M, seed=3) if data is None else data
    cfg = TrainConfig(
        lr=0.05, lr_schedule=schedule, budget=budget, batch_size=M, engine=engine, seed=4
    )
    alg = AEVB(make_model(), cfg, len(data), 0.05)
    assert alg.engine == engine
    return Trainer(alg, data, None, cfg, progress=False, evaluate_points=False)


def test_fast_and_autograd_engines_follow_the_same_schedule():
    fast, ref, flat = _trainer("fast", "cosine"), _trainer("autograd", "cosine"), None
    for t in (fast, ref):
        t.run()
    flat = _trainer("fast", "constant")
    flat.run()
    named = zip(
        fast.model.named_parameters(), ref.model.parameters(), flat.model.parameters(), strict=True
    )
    for name, p, q, c in ((n, p.detach(), q.detach(), c.detach()) for (n, p), q, c in named):
        assert float((p - q).norm() / q.norm()) < 1e-9, name
        assert not torch.equal(p, c), name  # the schedule did change the trajectory
    # the last step ran at lr_at(total - M of total samples)
    last = fast.config.lr_at(0.05, fast.total - M, fast.total)
    assert fast.alg.optimizer.param_groups[0]["lr"] == pytest.approx(last, rel=1e-15)
    assert last < 0.05 * 0.02


def test_resume_mid_schedule_is_bitwise_exact(tmp_path):
    whole = _trainer("fast", "linear")
    whole.run()
    first = _trainer("fast", "linear")
    first.total = 600  # stopped half way (as by Ctrl-C), the schedule still spans 1 200
    first.run()
    tensors, meta = first.state()
    runs.save_tensors(tmp_path / "state.safetensors", tensors, meta)
    tensors, meta = runs.load_tensors(tmp_path / "state.safetensors")
    resumed = _trainer("fast", "linear")
    resumed.load_state(tensors, meta)
    assert resumed.alg.optimizer.param_groups[0]["initial_lr"] == 0.05
    resumed.run()
    for (name, p), q in zip(
        whole.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_train_logs_the_step_size_at_each_evaluation(tmp_path):
    run = api.train(
        "digits",
        tmp_path / "run",
        budget=6000,
        lr=0.02,
        lr_schedule="cosine",
        lr_min=0.002,
        batch_size=100,
        eval_size=200,
        progress=False,
        draw_figures=False,
    )
    assert run.config["train"]["lr_schedule"] == "cosine"
    assert run.config["train"]["lr_min"] == 0.002
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) >= 3
    cfg = TrainConfig(lr=0.02, lr_schedule="cosine", lr_min=0.002)
    for rec in records:  # the step size of the last step before the evaluation
        expected = cfg.lr_at(0.02, max(0, rec["samples_seen"] - 100), 6000)
        assert rec["lr"] == pytest.approx(expected, rel=1e-12)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == 0.02 and all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] == pytest.approx(0.002, abs=2e-5)


def test_cli_says_the_schedule_it_runs(tmp_path, capsys):
    from aevb.cli import main

    argv = ["train", "--lr-schedule", "cosine", "--lr", "0.02", "--lr-min", "0.002"]
    assert (
        main([*argv, "--budget", "2000", "--out", str(tmp_path / "r"), "--eval-size", "100"]) == 0
    )
    out = capsys.readouterr()
    assert "step size: cosine decay from 0.02 to 0.002 over 2,000 samples" in out.out + out.err


# --------------------------------------------------------------------------- plateau


def _plateau_scales(records, patience, factor, grace):
    """The rule written out independently: the step-size scale in force after each record."""
    best, since, scale, out = None, 0, 1.0, []
    for r in records:
        v = r["valid_bound"]
        if best is None or v > best:
            best, since = v, 0
        elif r["samples_seen"] >= grace:
            since += 1
            if since == patience:
                scale, since = scale * factor, 0
        out.append(scale)
    return out


def test_plateau_cuts_the_step_size_when_validation_stalls():
    from aevb.callbacks import StepSizeOnPlateau

    opt = torch.optim.Adam(make_model().parameters(), lr=0.01)
    opt.param_groups[0]["initial_lr"] = 0.01
    cb = StepSizeOnPlateau(factor=0.5, patience=2, floor=0.002, grace=300)

    class Trainer_:  # what the callback reads of the Trainer
        model = make_model()
        alg = type("A", (), {"optimizer": opt})

    values = [-100, -90, -95, -91, -92, -89, -89.5, -89.7, -90, -91, -92, -93]
    records = [{"samples_seen": 100 * i, "valid_bound": v} for i, v in enumerate(values)]
    lrs = []
    for rec in records:
        cb.on_evaluation(Trainer_, rec)
        lrs.append(opt.param_groups[0]["lr"])
    expected = [max(0.002, 0.01 * s) for s in _plateau_scales(records, 2, 0.5, 300)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    # by hand: -95 at 200 is inside the grace; -91, -92 (300, 400) cut to 0.005; -89 is a new
    # best; -89.5, -89.7 cut to 0.0025; -90, -91 would cut to 0.00125: floored at 0.002
    assert lrs == pytest.approx([0.01] * 4 + [0.005] * 3 + [0.0025] * 2 + [0.002] * 3)
    state = cb.state()
    again = StepSizeOnPlateau(factor=0.5, patience=2, floor=0.002, grace=300)
    opt.param_groups[0]["lr"] = 0.01
    again.load_state(state, opt)
    assert again.scale == cb.scale and opt.param_groups[0]["lr"] == 0.002


@pytest.mark.parametrize(
    "options,message",
    [
        ({"lr_schedule": "plateau", "lr_factor": 1.5}, "--lr-factor must be between 0 and 1"),
        ({"lr_schedule": "plateau", "lr_patience": 0}, "--lr-patience must be a positive"),
        ({"lr_patience": 3}, "--lr-patience set the plateau schedule; add --lr-schedule plateau"),
        ({"lr_factor": 0.1, "lr_schedule": "cosine"}, "--lr-factor set the plateau schedule"),
    ],
)
def test_bad_plateau_options_are_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


def test_plateau_needs_validation(tmp_path, capsys):
    from aevb.cli import main

    argv = ["train", "--lr-schedule", "plateau", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--lr-schedule plateau" in err and "add --validation" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_train_with_plateau_follows_the_rule_and_resumes(tmp_path, overfit_npz):
    """60 training digits: the validation bound soon stalls, and the step size is cut."""
    kw = {
        "lr": 0.1,
        "optimizer": "adagrad",
        "lr_schedule": "plateau",
        "lr_patience": 2,
        "lr_factor": 0.5,
        "lr_min": 0.01,
        "validation": True,
        "batch_size": 20,
        "eval_size": 300,
        "eval_per_decade": 12,
        "progress": False,
        "draw_figures": False,
    }
    data = str(overfit_npz)
    api.train(data, tmp_path / "whole", budget=30_000, **kw)
    records = runs.read_metrics(tmp_path / "whole")
    grace = 60  # one epoch of the 60 training rows: patience counts after it
    lrs = [max(0.01, 0.1 * s) for s in _plateau_scales(records, 2, 0.5, grace)]
    # each record's lr is the step size of the steps before it: the one set after the record before
    assert [r["lr"] for r in records[1:]] == pytest.approx(lrs[:-1], rel=1e-12)
    assert 0.05 in lrs and lrs[-1] == 0.01  # the rule cut, down to the floor: not vacuous
    # stopped at one of its evaluations and resumed: the same records and model as the whole run
    half = next(r["samples_seen"] for r in records if r["samples_seen"] >= 10_000)
    api.train(data, tmp_path / "half", budget=half, **kw)
    api.train(resume=tmp_path / "half", budget=30_000, progress=False, draw_figures=False)

    def timeless(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert timeless(runs.read_metrics(tmp_path / "half")) == timeless(records)
    a = runs.load_tensors(tmp_path / "whole" / "model.safetensors")[0]
    b = runs.load_tensors(tmp_path / "half" / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)

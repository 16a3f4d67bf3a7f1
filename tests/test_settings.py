"""The configuration layer: options declared once (aevb.settings), and what derives from them.

The command line's flags, the checks of keyword arguments and config files, and what a run
records all come from the same dataclass fields; these tests hold them to each other.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aevb
from aevb import settings
from aevb.algorithms import ALGORITHMS
from aevb.api import training as api_training
from aevb.cli import build_parser, main
from aevb.errors import ConfigError
from aevb.model import ModelOptions
from aevb.options import declared

SRC = Path(aevb.__file__).parent
SMALL = dict(budget=2000, latent_dim=2, hidden=16, lr=0.02, progress=False, draw_figures=False)


def _train_help() -> str:
    return build_parser()._subparsers._group_actions[0].choices["train"].format_help()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- declarations


def test_every_option_is_declared_once_with_help():
    seen: dict[str, str] = {}
    for group, cls in settings.GROUPS.items():
        for f in declared(cls):
            assert f.name not in seen, f"{f.name} in {seen.get(f.name)} and {group}"
            assert len(f.metadata["help"]) > 10, f"{group}.{f.name} has no help text"
            seen[f.name] = group
    assert seen == settings.OWNER
    # the model group is the math layer's; each algorithm's options are its own dataclass
    assert settings.GROUPS["model"] is ModelOptions
    options = [alg.Options for alg in ALGORITHMS.values() if alg.Options is not None]
    assert {o.__name__ for o in options} == {"MCEMOptions", "FullVBOptions"}
    for cls in options:
        for f in dataclasses.fields(cls):
            assert settings.OWNER[cls.prefix + f.name] == "algorithms"


def test_train_help_lists_every_option_with_help_and_choices():
    text = _train_help()
    for name, group in settings.OWNER.items():
        cls = settings.GROUPS[group]
        flag = "--" + name.replace("_", "-")
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        if default is True:
            flag = "--no-" + flag[2:]  # on by default: the flag turns it off
        assert flag in text, flag
    assert "{tanh,relu,softplus,elu,sigmoid}" in text  # choices from the registry
    assert "{aevb,wake-sleep,mcem,full-vb,autoencoder}" in text
    flat = re.sub(r"\s+", " ", text)
    assert "adam: 0.0003, 0.001, 0.003" in flat  # --lr auto's trial, per optimizer
    for flag in ("--seed", "--optimizer", "--binarize", "--image-shape", "--eval-per-decade"):
        line = text[text.index(flag) :].split("\n--")[0]
        assert len(re.sub(r"\s+", " ", line)) > len(flag) + 25, f"{flag} has no help: {line!r}"


def test_flags_parse_to_the_declared_types():
    p = build_parser()
    args = p.parse_args(
        ["train", "--latent-dim", "2", "--columns", "a,b,3", "--image-shape", "28", "20"]
        + ["--no-weight-prior", "--mcem-leapfrog", "4", "--lr", "0.01", "--budget", "1e5"]
    )
    given = {k: v for k, v in vars(args).items() if k in settings.OWNER}
    assert given == {
        "latent_dim": 2,
        "columns": ["a", "b", 3],
        "image_shape": [28, 20],
        "weight_prior": False,
        "mcem_leapfrog": 4,
        "lr": 0.01,
        "budget": 100_000,
    }
    s = settings.settings_from(given)  # the same values pass the API's checks
    assert s.model.latent_dim == 2 and s.algorithms.mcem_leapfrog == 4


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "options,message",
    [
        ({"activation": "tanhh"}, "unknown --activation 'tanhh'; choose one of tanh"),
        ({"latent_dimm": 2}, "unknown key 'latent_dimm'; did you mean 'latent_dim'?"),
        ({"latent_dim": "2"}, "--latent-dim = '2' has the wrong type; expected an integer"),
        ({"latent_dim": 0}, "--latent-dim must be a positive integer"),
        ({"posterior": "gamma"}, "unknown --posterior 'gamma'"),
        ({"mcem_target_accept": 1.5}, "--mcem-target-accept must be a number in (0, 1)"),
        ({"full_vb_eval": "median"}, "unknown --full-vb-eval 'median'"),
        ({"algorithm_options": {"mcem_leapfrogs": 3}}, "unknown key 'mcem_leapfrogs'"),
        ({"model": {"latent_dim": 2}}, "model must be a ModelOptions"),
    ],
)
def test_bad_options_fail_before_anything_is_created(tmp_path, monkeypatch, options, message):
    monkeypatch.setenv("AEVB_OFFLINE", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:  # mnist from an empty folder: touching it would fail
        aevb.train("mnist", out=tmp_path / "run", data_dir=empty, **options)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
    assert list(empty.iterdir()) == []


def test_semantic_checks_also_come_before_the_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="add --lr-schedule cosine"):
        aevb.train("digits", out=tmp_path / "run", lr_min=0.001)
    with pytest.raises(ConfigError, match="add --validation"):
        aevb.train("digits", out=tmp_path / "run", keep="best")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        ("latent_dimm = 2\n", "did you mean 'latent_dim'"),
        ('latent_dim = "two"\n', "--latent-dim = 'two' has the wrong type"),
        ('activation = "tanhh"\n', "unknown --activation 'tanhh'; choose one of"),
        ('lr_schedule = "step"\n', "unknown --lr-schedule 'step'"),
        ("mcem_updates = 0\n", "--mcem-updates must be a positive integer"),
        ("resume = 'runs/x'\n", "unknown key 'resume'"),
    ],
)
def test_config_file_errors_are_one_line_and_exit_2(tmp_path, capsys, content, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(content)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    line = _one_error_line(capsys)
    assert message in line and str(cfg) in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match=re.escape(message)):
        aevb.load_config(cfg)


def test_flags_with_bad_values_are_one_line_and_exit_2(tmp_path, capsys):
    out = str(tmp_path / "x")
    for argv, message in (
        (["--activation", "tanhh"], "invalid choice: 'tanhh'"),
        (["--kl-beta", "-1"], "--kl-beta must be a number >= 0"),
        (["--budget", "10", "--epochs", "1"], "either --budget"),
        (["--mcem-target-accept", "2"], "--mcem-target-accept must be a number in (0, 1)"),
    ):
        try:
            code = main(["train", "--out", out, "--quiet", *argv])
        except SystemExit as e:  # argparse's own errors (an invalid choice) exit from parsing
            code = e.code
        assert code == 2
        assert message in _one_error_line(capsys)
    assert not Path(out).exists()


# --------------------------------------------------------------------------- the API's forms


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def test_group_objects_flat_keywords_and_settings_train_the_same(tmp_path):
    flat = aevb.train("digits", out=tmp_path / "flat", seed=3, **SMALL)
    quiet = dict(progress=False, draw_figures=False)
    grouped = aevb.train(
        settings.DataOptions("digits"),
        out=tmp_path / "grouped",
        model=ModelOptions(latent_dim=2, hidden=16),
        optim=settings.OptimOptions(lr=0.02, budget=2000, seed=3),
        **quiet,
    )
    whole = settings.TrainSettings(
        model=ModelOptions(latent_dim=2, hidden=16),
        optim=settings.OptimOptions(lr=0.02, budget=2000, seed=3),
    )
    from_settings = aevb.train(out=tmp_path / "settings", settings=whole, **quiet)
    a = _weights(tmp_path / "flat")
    for other in ("grouped", "settings"):
        b = _weights(tmp_path / other)
        assert all(torch.equal(a[k], b[k]) for k in a), other
    assert flat.config["train"] == grouped.config["train"] == from_settings.config["train"]
    # flat keywords override a group given in the same call
    s = settings.settings_from({"model": ModelOptions(latent_dim=5), "latent_dim": 7})
    assert s.model.latent_dim == 7


def test_run_records_every_training_option_and_repeats_from_them(tmp_path):
    run = aevb.train("digits", out=tmp_path / "a", kl_warmup=1000, **SMALL)
    recorded = run.config["train"]
    for f in declared(settings.TrainConfig):
        assert f.name in recorded, f.name
    assert recorded["kl_warmup"] == 1000 and recorded["mcem_leapfrog"] == 10
    options = aevb.load_config(tmp_path / "a" / "config.json")
    assert options["kl_warmup"] == 1000 and options["latent_dim"] == 2
    again = aevb.train(out=tmp_path / "b", progress=False, draw_figures=False, **options)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.config["train"] == recorded


def test_resume_takes_only_length_device_and_data_folder(tmp_path):
    aevb.train("digits", out=tmp_path / "r", **SMALL)
    with pytest.raises(ConfigError, match="only budget, epochs, device, data_dir"):
        aevb.train(resume=tmp_path / "r", latent_dim=5, progress=False)


def test_resume_of_a_run_killed_during_the_step_size_trial_runs_it(tmp_path, monkeypatch):
    opts = {k: v for k, v in SMALL.items() if k != "lr"}
    whole = aevb.train("digits", out=tmp_path / "whole", **opts)
    real = api_training.choose_lr

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api_training, "choose_lr", killed)
    with pytest.raises(KeyboardInterrupt):
        aevb.train("digits", out=tmp_path / "cut", **opts)
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cfg["train"]["lr"] == "auto"
    monkeypatch.setattr(api_training, "choose_lr", real)
    resumed = aevb.train(resume=tmp_path / "cut", progress=False, draw_figures=False)
    assert resumed.config["train"]["lr"] == whole.config["train"]["lr"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- one edit per option


@pytest.mark.parametrize("name", ["kl_warmup", "lr_min", "decoder_bias_init"])
def test_an_option_is_spelled_in_at_most_two_source_files(name):
    spellings = re.compile(rf"\b({name}|{name.replace('_', '-')})\b")
    files = sorted(
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if spellings.search(p.read_text())
    )
    assert "settings.py" in files and len(files) <= 2, files

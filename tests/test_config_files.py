"""Configuration files (``--config``, ``aevb.load_config``): TOML and JSON, the order in which
flags override a file, a run's config.json fed back, and unknown keys named with the closest."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import error_lines
from safetensors.torch import load_file

import aevb
from aevb import runs
from aevb.cli import main
from aevb.errors import ConfigError


def _model_and_train(cfg: dict) -> tuple[dict, dict]:
    t = {k: v for k, v in cfg["train"].items() if k not in ("lr_search",)}
    return cfg["model"], t


def test_config_file_round_trip_and_override_order(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'data = "digits"\nlatent-dim = 3\nhidden = 30\nbudget = 2000\nlr = 0.02\nseed = 5\n'
        f'out = "{(tmp_path / "from_file").as_posix()}"\n'
    )
    # the file alone
    assert main(["train", "--config", str(toml), "--quiet"]) == 0
    a = json.loads((tmp_path / "from_file" / runs.CONFIG).read_text())
    assert a["model"]["latent_dim"] == 3 and a["model"]["hidden"] == 30
    assert a["train"]["seed"] == 5 and a["train"]["budget"] == 2000
    assert a["train"]["batch_size"] == 100  # not in the file: the default
    # flags override the file (seed, out, and --epochs replaces the file's budget)
    out_b = tmp_path / "flags"
    argv = ["train", "--config", str(toml), "--seed", "7", "--epochs", "1", "--out", str(out_b)]
    assert main([*argv, "--quiet"]) == 0
    b = json.loads((out_b / runs.CONFIG).read_text())
    assert b["train"]["seed"] == 7 and b["train"]["epochs"] == 1 and b["train"]["budget"] is None
    assert b["model"]["latent_dim"] == 3
    # a run's config.json fed back repeats the run exactly
    out_c = tmp_path / "again"
    cfg_a = tmp_path / "from_file" / runs.CONFIG
    assert main(["train", "--config", str(cfg_a), "--out", str(out_c), "--quiet"]) == 0
    c = json.loads((out_c / runs.CONFIG).read_text())
    assert _model_and_train(c) == _model_and_train(a)
    wa, wc = load_file(tmp_path / "from_file" / runs.MODEL), load_file(out_c / runs.MODEL)
    assert wa.keys() == wc.keys() and all(torch.equal(wa[k], wc[k]) for k in wa)
    # the Python twin reads the same keywords
    opts = aevb.load_config(toml)
    assert opts["latent_dim"] == 3 and opts["seed"] == 5
    assert aevb.load_config(cfg_a)["lr"] == 0.02
    capsys.readouterr()


def test_config_unknown_key_names_the_closest(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("latent_dimm = 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    (line,) = error_lines(capsys)
    assert "'latent_dimm'" in line and "did you mean 'latent_dim'" in line
    bad.write_text('hidden = "many"\n')
    with pytest.raises(ConfigError, match="hidden"):
        aevb.load_config(bad)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"kl_betta": 0.5}))
    with pytest.raises(ConfigError, match="'kl_beta'"):
        aevb.load_config(js)
    assert not (tmp_path / "x").exists()

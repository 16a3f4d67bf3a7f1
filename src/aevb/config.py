"""Config files for ``aevb train --config FILE``: TOML or JSON holding any training option.

A config file holds the keywords of :func:`aevb.train` (the CLI options with ``_`` for ``-``)::

    data = "mydata.csv"
    out = "runs/mine"
    latent_dim = 2
    budget = 200_000
    standardize = true

A run's own ``config.json`` is accepted too (its model, train and data sections are mapped back),
so ``aevb train --config runs/old/config.json --out runs/new`` repeats a run. Precedence: the
defaults, then the file, then flags given on the command line. In Python the twin is
``aevb.train(**aevb.load_config("run.toml") | {"budget": 10_000})``.

Unknown keys are an error naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError

NOT_IN_FILES = ("resume", "progress", "draw_figures")
"""train() keywords a config file cannot set (they are about one invocation, not the run)."""

# run config.json keys that are derived from other settings or recorded for information only
_DERIVED = {
    "model": {"x_dim", "parameter_posterior", "image_shape"},
    "data": {"n_train", "n_test", "description", "column_names", "standardize", "spec"},
    "train": {"lr_search", "lr_trial_samples", "init_std", "engine", "eval_importance_samples"},
}


def train_options() -> dict[str, inspect.Parameter]:
    """The options a config file may set: :func:`aevb.train`'s keywords, by name."""
    from .api import train

    params = inspect.signature(train).parameters
    return {k: p for k, p in params.items() if k not in NOT_IN_FILES}


def _unknown(key: str, valid, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (see 'aevb train --help')")


def _type_ok(value: Any, hint: Any) -> bool:
    """A loose check of a value read from a file against a train() annotation."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        return isinstance(value, list | tuple)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, str)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; give a .toml or .json file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            obj = tomllib.loads(path.read_text())
        elif suffix == ".json":
            obj = json.loads(path.read_text())
        else:
            raise ConfigError(f"--config {path}: unknown file type {suffix!r}; use .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid {suffix[1:].upper()} ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"--config {path}: expected a table/object of options at the top")
    return obj


def from_run_config(cfg: dict, where: str = "config.json") -> dict:
    """train() keywords that repeat the run described by a run's config.json."""
    from .training import TrainConfig

    options = train_options()
    out: dict[str, Any] = {}
    algo: dict[str, Any] = {}
    algo_keys = {
        f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith(("mcem_", "full_vb_"))
    }
    for section in ("model", "train", "data"):
        part = cfg.get(section) or {}
        if not isinstance(part, dict):
            raise ConfigError(f"{where}: section {section!r} is not an object")
        for key, value in part.items():
            if key in options and key not in _DERIVED[section]:
                out[key] = value
            elif section == "train" and key in algo_keys and key not in options:
                algo[key] = value
            elif key in _DERIVED[section]:
                continue
            elif section == "train":
                continue  # a training field without a train() keyword: internal, or newer
            else:
                raise _unknown(key, options, f"{where} [{section}]")
    data = cfg.get("data") or {}
    if "spec" in data:
        out["data"] = data["spec"]
    model = cfg.get("model") or {}
    if model.get("image_shape") is not None and data.get("image_shape") is None:
        out["image_shape"] = model["image_shape"]
    if algo:
        out["algorithm_options"] = algo
    return out


def load_config(path: str | Path) -> dict:
    """The train() keywords of a TOML/JSON config file (or of a run's config.json), checked."""
    path = Path(path)
    raw = _read(path)
    if isinstance(raw.get("model"), dict) and isinstance(raw.get("train"), dict):
        return check(from_run_config(raw, str(path)), str(path))
    return check({k.replace("-", "_"): v for k, v in raw.items()}, str(path))


def check(options: dict, where: str = "config") -> dict:
    """Reject unknown keys (naming the closest valid one) and values of the wrong type."""
    from . import api

    valid = train_options()
    hints = typing.get_type_hints(api.train)
    for key, value in options.items():
        if key not in valid:
            raise _unknown(key, valid, where)
        if not _type_ok(value, hints.get(key, Any)):
            default = valid[key].default
            raise ConfigError(
                f"{where}: {key} = {value!r} has the wrong type (default {default!r}); "
                f"expected {hints.get(key)}"
            )
    if options.get("image_shape") is not None:
        options["image_shape"] = tuple(options["image_shape"])
    return options

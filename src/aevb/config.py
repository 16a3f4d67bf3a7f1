"""Config files for ``aevb train --config FILE``: TOML or JSON holding any training option.

A config file holds the options of ``aevb train`` by their keyword names (the flags with ``_``
for ``-``), as declared in :mod:`aevb.settings`::

    data = "mydata.csv"
    out = "runs/mine"
    latent_dim = 2
    budget = 200_000
    standardize = true

A run's own ``config.json`` is accepted too (its model, train and data sections are mapped back),
so ``aevb train --config runs/old/config.json --out runs/new`` repeats a run. Precedence: the
defaults, then the file, then flags given on the command line. In Python the twin is
``aevb.train(**aevb.load_config("run.toml") | {"budget": 10_000})``.

An unknown key names the closest valid one; a value of the wrong type or outside its choices is
one line naming the key and what it takes.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from . import settings
from .data.memory import IN_MEMORY
from .errors import ConfigError
from .model import ModelConfig, ModelOptions
from .options import declared, unknown_key

FILE_KEYS = ("out",)
"""Keys a config file may hold beside the options: where the run goes."""


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


def _section(cfg: dict, name: str, where: str) -> dict:
    part = cfg.get(name) or {}
    if not isinstance(part, dict):
        raise ConfigError(f"{where}: section {name!r} is not an object")
    return part


def from_run_config(cfg: dict, where: str = "config.json") -> dict:
    """The options that repeat the run described by a run's config.json.

    Values the run derived (the data's size, the model's input dimension, the step-size trial's
    scores) are skipped; the step size it chose is kept, so no trial runs again.
    """
    out: dict[str, Any] = {}
    model_options = {f.name for f in declared(ModelOptions)}
    model_derived = {f.name for f in dataclasses.fields(ModelConfig)} - model_options
    for key, value in _section(cfg, "model", where).items():
        if key in model_options:
            out[key] = value
        elif key not in model_derived:
            raise unknown_key(key, settings.OWNER, f"{where} [model]")
    train_options = {f.name for f in declared(settings.TrainConfig)}
    for key, value in _section(cfg, "train", where).items():
        if key in train_options:  # the rest is derived, internal, or from a newer aevb
            out[key] = value
    data_options = {f.name for f in declared(settings.DataOptions)}
    derived = {"spec", "n_train", "n_test", "description", "column_names", "fingerprint"}
    data = _section(cfg, "data", where)
    for key, value in data.items():
        if key == "standardize":  # the run records the statistics it used
            out[key] = bool(value)
        elif key in data_options:
            out[key] = value
        elif key not in derived:
            raise unknown_key(key, settings.OWNER, f"{where} [data]")
    if "spec" in data and data["spec"] != IN_MEMORY:  # data from Python: the caller gives it
        out["data"] = data["spec"]
    model = _section(cfg, "model", where)
    if model.get("image_shape") is not None and data.get("image_shape") is None:
        out["image_shape"] = model["image_shape"]
    return out


def load_config(path: str | Path) -> dict:
    """The train() options of a TOML/JSON config file (or of a run's config.json), checked."""
    path = Path(path)
    raw = _read(path)
    if isinstance(raw.get("model"), dict) and isinstance(raw.get("train"), dict):
        return check(from_run_config(raw, str(path)), str(path))
    return check({k.replace("-", "_"): v for k, v in raw.items()}, str(path))


def check(options: dict, where: str = "config") -> dict:
    """Reject unknown keys (naming the closest valid one) and values of the wrong type.

    Lists where the option takes a tuple (``image_shape``, ``image_size``) become tuples.
    """
    flat = {k: v for k, v in options.items() if k not in FILE_KEYS}
    settings.settings_from(flat, where=where)  # raises on the first bad key or value
    for key in ("image_shape", "image_size"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    if "out" in options and not isinstance(options["out"], str):
        raise ConfigError(f"{where}: out = {options['out']!r} has the wrong type; expected a path")
    return options

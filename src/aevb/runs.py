"""Run directories: atomic writes, safetensors weights and state, JSON metadata, metrics.jsonl.

A run directory holds:

- ``config.json``: model, training and data settings (everything needed to rebuild and continue);
- ``model.safetensors``: the trained weights, for ``aevb.load``;
- ``training_state.safetensors``: weights, optimizer state and RNG state of the last checkpoint
  together in one file, with counters in its JSON metadata, so a checkpoint is one atomic rename;
- ``metrics.jsonl``: one JSON object per evaluation point;
- ``figures/``: PNG pictures.

Nothing is ever unpickled: tensors are safetensors, everything else is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import RunError

FORMAT_VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
STATE = "training_state.safetensors"
METRICS = "metrics.jsonl"
FIGURES = "figures"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush to disk, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None
) -> None:
    """Save tensors (made contiguous, moved to CPU) atomically as safetensors, JSON in metadata."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"aevb": json.dumps(meta or {}, sort_keys=True)}
    atomic_write_bytes(path, st_save(data, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by :func:`save_tensors`; RunError if missing or damaged."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: missing; the run directory is incomplete")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        md = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
        meta = json.loads(md.get("aevb", "{}"))
    except (SafetensorError, ValueError, OSError) as e:
        raise RunError(f"{path}: damaged or not a safetensors file ({e})") from None
    return tensors, meta


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: missing; is this a run directory written by 'aevb train'?")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object")
    return obj


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json, checked for a format this release understands."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a directory; give a run directory written by 'aevb train'")
    cfg = read_json(run_dir / CONFIG)
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise RunError(
            f"{run_dir / CONFIG}: run format {version!r} is not supported by this aevb "
            f"(format {FORMAT_VERSION}); use the aevb release that wrote it"
        )
    for key in ("model", "train", "data"):
        if not isinstance(cfg.get(key), dict):
            raise RunError(f"{run_dir / CONFIG}: missing the {key!r} section")
    return cfg


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of metrics.jsonl (an incomplete last line, from a crash, is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_metrics(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(run_dir: str | Path, samples_seen: int) -> None:
    """Keep only records up to ``samples_seen`` (used on resume from an earlier checkpoint)."""
    records = [r for r in read_metrics(run_dir) if r.get("samples_seen", 0) <= samples_seen]
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(Path(run_dir) / METRICS, data.encode())

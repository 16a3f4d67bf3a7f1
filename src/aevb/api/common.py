"""What the API's parts share: a run on disk, devices, loading a trained run and its data,
--standardize's statistics and the picture/array writer."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import figures, runs
from ..data import DATASETS, Dataset, check_support, first_rows, load_dataset
from ..data.memory import IN_MEMORY, check_same_data, dataset_from_memory, is_in_memory
from ..errors import ConfigError, DataError, RunError
from ..model import VAE, ModelConfig
from ..seeds import split_seed
from ..selection import BEST_MODEL


@dataclass
class Run:
    """A training run on disk: its directory, trained model, configuration and metrics."""

    path: Path | None
    model: VAE
    config: dict
    metrics: list[dict] = field(default_factory=list)
    #: Where a training call's wall time went (set by :func:`aevb.train`): ``samples`` trained,
    #: ``training_s`` (the steps), ``evaluation_s``, ``checkpoint_s`` and ``figures_s``.
    timing: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The last metrics record (bounds at the end of training)."""
        return self.metrics[-1] if self.metrics else {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA when available; asking for CUDA without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def _standard_stats(ds: Dataset) -> dict:
    """Per-column mean and standard deviation of the training set (std 1 for constant columns)."""
    x = ds.train.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    return {"mean": mean.tolist(), "std": std.tolist()}


def _standardize(ds: Dataset, stats: dict | None) -> dict | None:
    """z-score every split of ds in place with ``stats`` (from the training set); return them."""
    if stats is None:
        return None
    if len(stats["mean"]) != ds.x_dim:
        raise DataError(
            f"{ds.name} has {ds.x_dim} columns but the run standardised {len(stats['mean'])}"
        )
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)

    def z(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    ds.train = z(ds.train)
    if ds.test is not None:
        ds.test = z(ds.test)
    ds.extra_splits = {k: z(v) for k, v in ds.extra_splits.items()}
    return stats


def _unstandardize(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Data-space values of model-space x (undoes --standardize; x itself otherwise)."""
    stats = cfg["data"].get("standardize")
    if not stats:
        return x
    mean = torch.tensor(stats["mean"], dtype=x.dtype, device=x.device)
    std = torch.tensor(stats["std"], dtype=x.dtype, device=x.device)
    return x * std + mean


def load(run_dir: str | Path, device: str = "cpu", which: str | int = "last") -> VAE:
    """The trained model of a run directory (weights from model.safetensors; no pickle).

    ``which="best"`` loads best_model.safetensors, the model with the best validation bound of a
    run trained with ``keep="best"``; ``which=N`` (a number of training samples) the snapshot a
    run trained with ``snapshots=[..., N, ...]`` kept.
    """
    run_dir = Path(run_dir)
    name = _weights_name(run_dir, which)
    cfg = runs.read_config(run_dir)
    try:
        mcfg = ModelConfig(**cfg["model"])
    except TypeError as e:
        raise RunError(f"{run_dir / runs.CONFIG}: bad model section ({e})") from None
    model = VAE(mcfg)
    weights = run_dir / name
    tensors, _ = runs.load_run_tensors(run_dir, name)  # checked against the manifest
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise RunError(f"{weights}: does not match config.json ({first})") from None
    model.eval()
    return model.to(resolve_device(device))


def _weights_name(run_dir: Path, which: str | int) -> str:
    """The run's file holding the model ``which`` names: last, best or a snapshot's count."""
    if which == "last":
        return runs.MODEL
    if which == "best":
        if not runs.has_file(run_dir, BEST_MODEL):
            raise RunError(
                f"{run_dir / BEST_MODEL}: missing; the run was not trained with --keep best"
            )
        return BEST_MODEL
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        kept = runs.snapshots(run_dir)
        if int(which) not in kept:
            have = ", ".join(f"{n:,}" for n in kept) or "none (train with --snapshots)"
            raise RunError(f"{run_dir}: no snapshot at {int(which):,} samples; it kept {have}")
        return runs.snapshot_name(int(which))
    raise ConfigError(f"unknown model {which!r}; choose last, best or a snapshot's sample count")


def _run_data(
    run_dir: Path,
    data: Any,
    split: str,
    data_dir: str | Path | None,
    binarize: str | None,
    which: str | int = "last",
) -> tuple[VAE, np.ndarray, str, dict]:
    """The run's model and the split to evaluate: the run's own data, reloaded and checked
    against the fingerprint it recorded, or ``data`` (a spec, or data held in Python)."""
    cfg = runs.read_config(run_dir)
    model = load(run_dir, which=which)
    if is_in_memory(data):  # an array is evaluated whole; a (train, test) pair by split
        pair = isinstance(data, tuple | list)
        ds = dataset_from_memory(
            data if pair else (data, data), image_shape=model.config.image_shape
        )
        return _checked_split(ds, model, split, binarize, cfg)
    spec = data or cfg["data"]["spec"]
    if spec == IN_MEMORY:
        raise DataError(
            f"{run_dir} was trained on data given from Python; pass it: "
            "aevb.evaluate(run, data=...) (or --data FILE with the same data)"
        )
    ddir = (
        data_dir
        if data_dir is not None
        else (cfg["data"].get("data_dir") if data is None else None)
    )
    same = spec == cfg["data"]["spec"]
    ds = load_dataset(
        spec,
        data_dir=ddir,
        image_shape=model.config.image_shape if data is None else None,
        splits=(split,),
        validation=(spec == "mnist" or spec not in DATASETS)
        and (split == "valid" or (same and bool(cfg["data"].get("validation", False)))),
        columns=cfg["data"].get("columns") if spec not in DATASETS else None,
        image_size=_folder_size(spec, model),
        memory_map=same and bool(cfg["data"].get("memory_map", False)),
    )
    if same:
        check_same_data(
            cfg["data"].get("fingerprint"),
            ds,
            str(spec),
            "restore the data the run was trained on, or evaluate other data with --data",
        )
    return _checked_split(ds, model, split, binarize, cfg)


def _folder_size(spec: str, model: VAE) -> tuple[int, int] | None:
    """The (H, W) a folder of images is read at for a model of images: the model's own size."""
    shape = model.config.image_shape
    if spec in DATASETS or shape is None or not Path(spec).is_dir():
        return None
    return int(shape[0]), int(shape[1])


def _checked_split(
    ds: Dataset, model: VAE, split: str, binarize: str | None, cfg: dict
) -> tuple[VAE, np.ndarray, str, dict]:
    """A split standardised as the run's data was, checked, and binarized as evaluation does."""
    if ds.x_dim != model.config.x_dim:
        raise DataError(
            f"{ds.name} has {ds.x_dim} columns but the model was trained on "
            f"{model.config.x_dim}; use data of the same dimension"
        )
    mode = binarize or cfg["train"].get("binarize", "grey")
    _standardize(ds, cfg["data"].get("standardize"))  # the run's z-scores, from its training set
    rows = ds.split(split)  # a memory-mapped split is read whole: evaluation holds it
    x = _checked_rows(first_rows(rows, len(rows)), model, cfg, mode, f"{ds.name} ({split})")
    return model, x, mode, cfg


def _checked_rows(x: np.ndarray, model: VAE, cfg: dict, mode: str, source: str) -> np.ndarray:
    """Model-space rows checked against the likelihood's support, binarized as the run says."""
    check_support(x, model.config.likelihood, mode, source)
    if mode in ("dynamic", "static"):  # one fixed draw, the same for a split and for its array
        g = torch.Generator().manual_seed(split_seed(cfg["train"]["seed"], 7))
        x = torch.bernoulli(torch.from_numpy(x), generator=g).numpy()
    return x


def _write_image_or_array(
    out: Path,
    images: torch.Tensor,
    shape: tuple[int, ...] | None,
    ncol: int,
    title: str,
    cfg: dict | None = None,
) -> Path:
    """A PNG grid, or the rows as .npy / .csv in data units (--standardize undone via ``cfg``)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".npy", ".csv"):
        rows = (_unstandardize(images, cfg) if cfg else images).detach().cpu().numpy()
        buf = io.BytesIO()
        if suffix == ".npy":
            np.save(buf, rows)
        else:
            names = (cfg or {}).get("data", {}).get("column_names")
            header = ",".join(names) if names and len(names) == rows.shape[1] else ""
            np.savetxt(buf, rows, delimiter=",", header=header, comments="", fmt="%.7g")
        runs.atomic_write_bytes(out, buf.getvalue())
    elif suffix == ".png":
        figures.save_grid(out, images, shape, ncol, title)
    else:
        raise ConfigError(f"--out {out}: use a .png (picture), .npy or .csv (array) file name")
    return out

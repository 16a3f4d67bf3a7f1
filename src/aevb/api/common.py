"""What the API's parts share: a run on disk, devices, loading a trained run and its data,
--standardize's statistics and the picture/array writer."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import figures, runs
from ..data import DATASETS, Dataset, check_support, load_dataset
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


def load(run_dir: str | Path, device: str = "cpu", which: str = "last") -> VAE:
    """The trained model of a run directory (weights from model.safetensors; no pickle).

    ``which="best"`` loads best_model.safetensors, the model with the best validation bound of a
    run trained with ``keep="best"``.
    """
    run_dir = Path(run_dir)
    if which not in ("last", "best"):
        raise ConfigError(f"unknown model {which!r}; choose last or best")
    cfg = runs.read_config(run_dir)
    try:
        mcfg = ModelConfig(**cfg["model"])
    except TypeError as e:
        raise RunError(f"{run_dir / runs.CONFIG}: bad model section ({e})") from None
    model = VAE(mcfg)
    weights = run_dir / (runs.MODEL if which == "last" else BEST_MODEL)
    if which == "best" and not runs.has_file(run_dir, BEST_MODEL):
        raise RunError(f"{weights}: missing; the run was not trained with --keep best")
    tensors, _ = runs.load_run_tensors(run_dir, weights.name)  # checked against the manifest
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise RunError(f"{weights}: does not match config.json ({first})") from None
    model.eval()
    return model.to(resolve_device(device))


def _run_data(
    run_dir: Path,
    data: str | None,
    split: str,
    data_dir: str | Path | None,
    binarize: str | None,
    which: str = "last",
) -> tuple[VAE, np.ndarray, str, dict]:
    cfg = runs.read_config(run_dir)
    model = load(run_dir, which=which)
    spec = data or cfg["data"]["spec"]
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
    )
    if ds.x_dim != model.config.x_dim:
        raise DataError(
            f"{spec} has {ds.x_dim} columns but the model was trained on {model.config.x_dim}; "
            "use data of the same dimension"
        )
    mode = binarize or cfg["train"].get("binarize", "grey")
    _standardize(ds, cfg["data"].get("standardize"))  # the run's z-scores, from its training set
    x = ds.split(split)
    check_support(x, model.config.likelihood, mode, f"{ds.name} ({split})")
    if mode in ("dynamic", "static"):
        g = torch.Generator().manual_seed(split_seed(cfg["train"]["seed"], 7))
        x = torch.bernoulli(torch.from_numpy(x), generator=g).numpy()
    return model, x, mode, cfg


def _write_image_or_array(
    out: Path,
    images: torch.Tensor,
    shape: tuple[int, int] | None,
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

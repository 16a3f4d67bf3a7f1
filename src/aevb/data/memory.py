"""Data held in Python: NumPy arrays, torch tensors, a (train, test) pair, a map-style Dataset.

They become the same :class:`~aevb.data.base.Dataset` a file does, through the same checks, and a
fingerprint (shapes, dtype, a content hash) lets a resumed or evaluated run tell whether it was
given the same data back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np
import torch

from ..errors import DataError
from .arrays import dataset_from_arrays
from .base import Dataset

IN_MEMORY = "<in-memory>"
"""The data spec recorded for a run trained on data given from Python."""

InMemoryData = np.ndarray | torch.Tensor | tuple[Any, Any] | list | torch.utils.data.Dataset
"""Data held in Python that :func:`aevb.train` and :func:`aevb.evaluate` accept (docs/DATA.md)."""


def is_in_memory(data: object) -> TypeGuard[InMemoryData]:
    """Whether ``data`` is data held in Python rather than a dataset name, file or folder."""
    if isinstance(data, np.ndarray | torch.Tensor | torch.utils.data.Dataset):
        return True
    return (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(a, np.ndarray | torch.Tensor) for a in data)
    )


def _as_array(a: Any, source: str) -> np.ndarray:
    """A NumPy view or copy of an array or tensor (on the CPU, without its autograd graph)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise DataError(f"{source}: expected a real tensor, got dtype {a.dtype}")
        if a.dtype == torch.bfloat16:
            a = a.float()
        return a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):
        return a
    raise DataError(f"{source}: expected a NumPy array or torch tensor, got {type(a).__name__}")


def _item_tensor(item: Any, i: int) -> torch.Tensor:
    """The data of item ``i`` of a Dataset: a tensor, or the first element of a tuple such as
    torchvision's (image, label)."""
    x = item[0] if isinstance(item, tuple | list) and item else item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"Dataset item {i} is a {type(x).__name__}, not a tensor; make __getitem__ return "
            "a tensor (for images, add torchvision.transforms.ToTensor())"
        )
    return x


def _stack_dataset(ds: torch.utils.data.Dataset) -> np.ndarray:
    """Every item of a map-style Dataset, stacked into one array (items must share a shape)."""
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            "the Dataset has no len(); aevb.train takes map-style Datasets (with __len__ and "
            "__getitem__), not iterable ones"
        ) from None
    if n < 2:
        raise DataError(f"the Dataset has {n} items; training needs at least 2")
    first = _item_tensor(ds[0], 0)
    out = np.empty((n, *first.shape), dtype=_as_array(first, "Dataset item 0").dtype)
    for i in range(n):
        x = _item_tensor(ds[i], i)
        if x.shape != first.shape:
            raise DataError(
                f"Dataset item {i} has shape {tuple(x.shape)} but item 0 {tuple(first.shape)}; "
                "every item must have the same shape (resize images to one size)"
            )
        out[i] = _as_array(x, f"Dataset item {i}")
    return out


def dataset_from_memory(
    data: Any, *, image_shape: tuple[int, ...] | None = None, validation: bool = False
) -> Dataset:
    """A Dataset from data held in Python.

    ``data`` is an array or tensor of datapoints (rows, (N, H, W) images or (N, H, W, C) colour
    images; 10 % is held out as test by a fixed permutation, as for a file with one array), a pair
    ``(train, test)`` of them, or a map-style ``torch.utils.data.Dataset`` whose items are tensors
    (or tuples whose first element is one). The checks are those of a user file.
    """
    if isinstance(data, torch.utils.data.Dataset):
        arrays = {"data": _stack_dataset(data)}
        kind = f"{type(data).__name__} of {len(arrays['data'])} items"
    elif isinstance(data, tuple | list):
        arrays = {"train": _as_array(data[0], "train"), "test": _as_array(data[1], "test")}
        kind = "(train, test) arrays"
    else:
        arrays = {"data": _as_array(data, "the array")}
        kind = f"an array of shape {tuple(arrays['data'].shape)}"
    return dataset_from_arrays(
        arrays,
        "the data given",
        name="array",
        description=f"in-memory data: {kind}",
        image_shape=image_shape,
        validation=validation,
    )


def _split_digest(x: Any) -> dict:
    """Shape, dtype and SHA-256 of one split's rows as loaded (float32), or a memory-mapped
    split's own digest (:meth:`aevb.data.mapped.MappedRows.digest`)."""
    if hasattr(x, "digest"):
        return x.digest()
    c = np.ascontiguousarray(x)
    return {
        "shape": list(x.shape),
        "dtype": str(c.dtype),
        "sha256": hashlib.sha256(c.data).hexdigest(),
    }


def fingerprint(ds: Dataset, splits: Sequence[str] | None = None) -> dict:
    """Shapes, dtype and content hash of a dataset's splits (those present, or ``splits``)."""
    names = splits or ["train", "test", *sorted(ds.extra_splits)]
    out = {}
    for name in names:
        if name in ds.missing or (name == "test" and ds.test is None):
            continue
        if name in ("train", "test") or name in ds.extra_splits:
            out[name] = _split_digest(ds.split(name))
    return out


def check_same_data(recorded: dict | None, ds: Dataset, what: str, fix: str) -> None:
    """Refuse data whose splits differ from those a run recorded (runs before 0.3 recorded none).

    Only the splits present in both are compared: a named dataset loads just the splits asked for.
    The dataset's own fingerprint, taken when it was loaded (before ``--train-size`` cut it, as
    the run's was), is used where it has one; else the splits are hashed now.
    """
    if not recorded:
        return
    now = ds.fingerprint or fingerprint(
        ds, [s for s in recorded if s in ("train", "test", *ds.extra_splits)]
    )
    for split, digest in now.items():
        was = recorded.get(split)
        if was is None or was == digest:
            continue
        why = (
            f"its shape is {tuple(digest['shape'])}, was {tuple(was['shape'])}"
            if digest["shape"] != was["shape"]
            else "its values differ (SHA-256 of its rows)"
        )
        raise DataError(
            f"{what}: the {split} split is not the data the run was trained on: {why}; {fix}"
        )

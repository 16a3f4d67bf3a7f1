"""Folders of images (PNG, JPEG, ...) read with Pillow: one datapoint per file.

``DIR/*.png`` is a flat folder (no labels); ``DIR/<class>/*.png`` keeps each subfolder's name as
the label of its images (codes 0, 1, ... in the sorted order of the names). Files are read in
sorted path order, so a folder always gives the same rows and the same fixed test split as a user
array (:func:`aevb.data.arrays.held_out`). Pixels are scaled to [0, 1] (8-bit value / 255) and
flattened channel-last: a colour row is the H*W*3 values R, G, B of the first pixel, then the
second, ... (row-major), a grey row the H*W values.

Decisions (docs/DATA.md, "Colour images and image folders"):

- files whose suffix is not one of :data:`IMAGE_SUFFIXES` are ignored, and so are hidden files
  and folders (names starting with "."); a file with an image suffix that Pillow cannot read is
  an error naming it, never skipped;
- greyscale images (modes 1, L, LA, I;16, I) give one channel; if any image of the folder is in
  colour (RGB, RGBA, P, CMYK, ...), every image is converted to RGB (grey copied to R, G and B);
- an alpha channel is dropped (the stored colour of each pixel is kept, as Pillow's conversion
  does); 16-bit grey is scaled to 8 bits; floating-point images (mode F) are refused;
- images of different sizes are refused, naming one that differs from the majority, unless
  ``image_size`` is given: then every image is resized to it (bilinear, antialiased; aspect
  ratios are not kept).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import _memory_bytes, held_out, held_out_valid
from .base import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""Files read as images (case-insensitive); other files in the folder are ignored."""
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
"""Pillow modes read as one grey channel; every other mode but F is colour."""
PROGRESS_FROM = 500
"""Folders of at least this many images show a progress bar while they are read."""


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def find_images(root: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """The image files of a folder in sorted order, with each one's class code and the class
    names (None for a flat folder). Refuses a folder without images or with both layouts."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    flat = _images_in(root)
    subdirs = sorted(p for p in root.iterdir() if _visible(p) and p.is_dir())
    classes = [(d, _images_in(d)) for d in subdirs]
    if flat:
        nested = next((d for d, found in classes if found), None)
        if nested is not None:
            raise DataError(
                f"{root}: holds images both directly ({flat[0].name}) and in subfolders "
                f"({nested.name}/); use one layout: DIR/*.png, or DIR/<class>/*.png"
            )
        return flat, None, None
    if not any(found for _, found in classes):
        raise DataError(
            f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder or its subfolders; "
            "the layout is DIR/*.png, or DIR/<class>/*.png"
        )
    empty = next((d for d, found in classes if not found), None)
    if empty is not None:
        raise DataError(
            f"{empty}: a class folder without images directly inside; remove it, or lay the "
            "data out as DIR/<class>/*.png"
        )
    paths = [p for _, found in classes for p in found]
    codes = np.concatenate(
        [np.full(len(found), i, np.int64) for i, (_, found) in enumerate(classes)]
    )
    return paths, codes, [d.name for d, _ in classes]


def _why(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _probe(paths: Sequence[Path]) -> tuple[list[tuple[int, int]], bool]:
    """Each file's (height, width) from its header, and whether any image is in colour."""
    from PIL import Image

    sizes, colour = [], False
    for p in paths:
        try:
            with Image.open(p) as img:
                w, h, mode = img.width, img.height, img.mode
        except Exception as e:  # Pillow's errors vary with the damage; all mean a bad file
            raise DataError(f"{p}: cannot read as an image ({_why(e)})") from None
        if mode == "F":
            raise DataError(f"{p}: a floating-point image (mode F); save it as 8-bit PNG")
        sizes.append((h, w))
        colour = colour or mode not in GREY_MODES
    return sizes, colour


def _common_size(paths: Sequence[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The size every image has, or DataError naming one that differs from the majority."""
    counts = collections.Counter(sizes)
    (size, n), *_ = counts.most_common(1)
    if len(counts) > 1:
        i = next(i for i, s in enumerate(sizes) if s != size)
        raise DataError(
            f"{paths[i]}: {sizes[i][0]} x {sizes[i][1]} pixels (H x W), but {n} of the "
            f"{len(paths)} images are {size[0]} x {size[1]}; give --image-size H W to resize "
            "them all"
        )
    return size


def _pixels(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image decoded as 8-bit ``mode`` ("L" or "RGB") of ``size`` (H, W), flattened."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) grey: to 8 bits
                a = np.asarray(img, dtype=np.int64).clip(0, 65535) // 257
                out = Image.fromarray(a.astype(np.uint8), "L")
            else:
                out = img
            out = out.convert(mode)
            if out.size != (size[1], size[0]):
                out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(out, dtype=np.uint8).reshape(-1)
    except Exception as e:  # a header that opened but data that does not decode
        raise DataError(
            f"{path}: cannot decode the image ({_why(e)}); is the file complete?"
        ) from None


def read_images(
    paths: Sequence[Path],
    image_size: tuple[int, int] | None = None,
    *,
    progress: bool = False,
    source: str = "images",
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Decode image files to float32 rows in [0, 1] (channel-last) and their image shape:
    (H, W) when every image is grey, (H, W, 3) when any is in colour."""
    from tqdm.auto import tqdm

    sizes, colour = _probe(paths)
    h, w = (int(s) for s in image_size) if image_size else _common_size(paths, sizes)
    shape: tuple[int, ...] = (h, w, 3) if colour else (h, w)
    need = len(paths) * math.prod(shape) * 4
    if need > _memory_bytes():
        raise DataError(
            f"{source}: {len(paths):,} images of {'x'.join(map(str, shape))} need {need:,} bytes, "
            "more than this machine's memory; give a smaller --image-size"
        )
    x = np.empty((len(paths), math.prod(shape)), dtype=np.float32)
    mode = "RGB" if colour else "L"
    bar = tqdm(
        paths,
        desc=f"reading {source}",
        unit="image",
        disable=not progress or len(paths) < PROGRESS_FROM,
        leave=False,
    )
    for i, p in enumerate(bar):
        x[i] = _pixels(p, mode, (h, w))
    x /= np.float32(255)
    return x, shape


def load_image_folder(
    path: str | Path,
    image_size: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
    *,
    validation: bool = False,
    progress: bool = True,
) -> Dataset:
    """A folder of images as a Dataset: the fixed 10 % test split of a user array, labels
    (codes per split, and ``label_names``) from class subfolders, and ``validation`` holding out
    10 % of the training images as the split "valid". ``image_size`` (H, W) resizes every image;
    ``image_shape``, where given (a run reloading its data), must be the shape the folder gives.
    """
    root = Path(path)
    paths, codes, names = find_images(root)
    size = (int(image_size[0]), int(image_size[1])) if image_size else None
    x, shape = read_images(paths, size, progress=progress, source=str(root))
    if image_shape is not None and tuple(int(s) for s in image_shape) != shape:
        raise DataError(
            f"{root}: its images are {'x'.join(map(str, shape))}, not the "
            f"{'x'.join(map(str, image_shape))} expected (--image-shape, or the run's model); "
            "a folder's images give their own shape (resize them with --image-size)"
        )
    if len(x) < 2:
        raise DataError(f"{root}: needs at least 2 images, found {len(x)}")
    kept, out = held_out(len(x), 0)
    splits = {"train": kept, "test": out}
    if validation:
        vkept, vout = held_out_valid(len(kept), str(root))
        splits.update(train=kept[vkept], valid=kept[vout])
    labels = {k: codes[idx] for k, idx in splits.items()} if codes is not None else {}
    kind = "colour" if len(shape) == 3 else "grey"
    classes = f" in {len(names)} classes" if names else ""
    return Dataset(
        name=root.name,
        train=x[splits["train"]],
        test=x[splits["test"]],
        image_shape=shape,
        default_likelihood="bernoulli",
        description=f"{len(x)} {kind} images{classes} from {root}",
        extra_splits={"valid": x[splits["valid"]]} if validation else {},
        labels=labels,
        label_names=names,
    )

"""Pictures: image grids (samples, reconstructions, the Figure 4 manifold) and bound curves.

Images are rows of (H, W) grey values, or of (H, W, 3) RGB values flattened channel-last (as the
data layer stores colour images); grids of grey images are 2-D arrays, of colour images
(rows, columns, 3) arrays, drawn in colour.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ConfigError
from .runs import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (start-up time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile_shape(x_dim: int, image_shape: Sequence[int] | None) -> tuple[int, int]:
    """The (rows, columns) each datapoint is drawn as: the declared shape, a square, or a strip."""
    if image_shape is not None:
        return int(image_shape[0]), int(image_shape[1])
    side = int(math.isqrt(x_dim))
    return (side, side) if side * side == x_dim else (1, x_dim)


def tile_channels(image_shape: Sequence[int] | None) -> int:
    """Colour channels each tile is drawn with: 1 (grey) or 3 (RGB, an (H, W, 3) shape)."""
    c = int(image_shape[2]) if image_shape is not None and len(image_shape) > 2 else 1
    if c not in (1, 3):
        raise ConfigError(f"images of shape {tuple(image_shape or ())}: can draw 1 or 3 channels")
    return c


def image_grid(
    images: np.ndarray | torch.Tensor, image_shape: Sequence[int] | None, ncol: int, pad: int = 1
) -> np.ndarray:
    """Arrange (N, D) images in [0, 1] into one array of ``ncol`` columns with white padding:
    2-D for grey images, (rows, columns, 3) for colour ones (``image_shape`` (H, W, 3), rows
    flattened channel-last)."""
    x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    h, w = tile_shape(x.shape[1], image_shape)
    c = tile_channels(image_shape)
    n = len(x)
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i].reshape(h, w, c)
    return grid[:, :, 0] if c == 1 else grid


def _save_figure(fig: Figure, path: str | Path, grey: bool = False, rgb: bool = False) -> None:
    """Write ``fig`` as a PNG atomically; ``grey`` stores one channel of 64 levels (small files),
    ``rgb`` three 8-bit channels (colour images; the opaque figure's alpha channel dropped)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    _pyplot().close(fig)
    if grey or rgb:
        from PIL import Image  # matplotlib's own dependency

        img = Image.open(io.BytesIO(buf.getvalue())).convert("L" if grey else "RGB")
        if grey:  # 64 grey levels: indistinguishable by eye, and photographs compress far better
            img = img.point(lambda v: v // 4 * 4)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())


def save_grid(
    path: str | Path,
    images: np.ndarray | torch.Tensor,
    image_shape: Sequence[int] | None,
    ncol: int,
    title: str | None = None,
) -> None:
    """Save an image grid as a PNG (written atomically): grey images in grey, (H, W, 3)
    images in colour (an RGB PNG)."""
    grid = np.clip(image_grid(images, image_shape, ncol), 0.0, 1.0)
    scale = max(1.0, 400.0 / max(grid.shape))
    fig = _pyplot().figure(
        figsize=(grid.shape[1] * scale / 100, grid.shape[0] * scale / 100 + (0.3 if title else 0)),
        dpi=100,
    )
    ax = fig.add_axes((0, 0, 1, grid.shape[0] / (grid.shape[0] + (30 / scale if title else 0))))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9, y=0.995, va="top")
    _save_figure(fig, path, rgb=grid.ndim == 3)


def manifold_latents(grid: int) -> torch.Tensor:
    """Figure 4's latent grid: K x K points of the open unit square through Phi^-1.

    Row r, column c has z = (Phi^-1(u_c), Phi^-1(1 - u_r)), so z2 grows upwards as in a plot.
    """
    if grid < 2:
        raise ConfigError(f"--grid must be at least 2, got {grid}")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    z = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
    z1 = z.repeat(grid)
    z2 = z.flip(0).repeat_interleave(grid)
    return torch.stack([z1, z2], dim=1).float()


def plot_curves(
    runs: Sequence[tuple[str, list[dict]]],
    path: str | Path,
    title: str = "Lower bound",
    metric: str = "bound",
) -> None:
    """Bound (or ``metric="log_likelihood"``) per datapoint against training samples evaluated.

    Log x-axis, train solid, test dashed, validation dotted. A run without the metric (Monte Carlo
    EM has no bound) is drawn with its marginal-likelihood estimates.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(runs):
        recs = [r for r in records if r.get("samples_seen", 0) > 0]
        if not recs:
            continue
        s = [r["samples_seen"] for r in recs]
        color = colors[i % len(colors)]
        key = metric if f"train_{metric}" in recs[0] else "log_likelihood"
        for split, style in (("train", "-"), ("test", "--"), ("valid", ":")):
            if f"{split}_{key}" in recs[0]:
                ys = [r[f"{split}_{key}"] for r in recs]
                ax.plot(s, ys, style, color=color, label=f"{label} {split}")
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel(
        "lower bound per datapoint (nats)" if metric == "bound" else "log p(x) per datapoint (nats)"
    )
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


CURVE_COLORS = {"AEVB": "tab:red", "Wake-Sleep": "tab:blue", "MCEM": "tab:green"}


def plot_panels(
    panels: Sequence[tuple[str, Sequence[tuple[str, list[dict]]]]],
    path: str | Path,
    *,
    metric: str = "bound",
    title: str = "",
    xscale: str = "log",
    ncols: int = 5,
    legend_cols: int = 4,
) -> None:
    """Figures 2 and 3: one panel per setting, each with several runs' train and test curves.

    ``panels`` holds (panel title, [(run label, metrics records)]). Train solid, test dashed; a
    log x-axis of training samples (Figure 2; it spans the last three decades of training) or a
    linear one in millions (Figure 3). The y-range fits the values shown past the first transient.
    """
    plt = _pyplot()
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    w, h = (3.0, 2.6) if ncols > 2 else (4.2, 3.2)  # inches per panel
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(w * ncols, h * nrows + 0.6), dpi=90, squeeze=False
    )
    handles: dict[str, object] = {}
    for ax, (ptitle, curves) in zip(axes.flat, panels, strict=False):
        seen = [r["samples_seen"] for _, recs in curves for r in recs if r["samples_seen"] > 0]
        end = max(seen, default=1)
        start = max(min(seen, default=1), end / 1000) if xscale == "log" else 0
        y_from = start if xscale == "log" else end / 20  # the y-range skips the first transient
        shown: list[float] = []
        for label, records in curves:
            recs = [r for r in records if r.get("samples_seen", 0) > 0]
            color = CURVE_COLORS.get(label)
            for split, style in (("train", "-"), ("test", "--")):
                pts = [
                    (r["samples_seen"], r[f"{split}_{metric}"])
                    for r in recs
                    if f"{split}_{metric}" in r
                ]
                if not pts:
                    continue
                s, y = zip(*pts, strict=True)
                xs = list(s) if xscale == "log" else [v / 1e6 for v in s]
                (line,) = ax.plot(xs, y, style, color=color, lw=1.3)
                handles.setdefault(f"{label} ({split})", line)
                shown += [v for si, v in pts if si >= y_from and math.isfinite(v)]
        ax.set_xscale(xscale)
        if xscale == "log":
            ax.set_xlim(start, end)
        if shown:
            lo, hi = min(shown), max(shown)
            pad = 0.05 * (hi - lo) or 1.0
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(ptitle, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel(
            "# training samples evaluated" if xscale == "log" else "# training samples (millions)",
            fontsize=7,
        )
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    ylabel = "lower bound (nats)" if metric == "bound" else "marginal log-likelihood (nats)"
    for row in axes:
        row[0].set_ylabel(ylabel, fontsize=8)
    legend_cols = min(legend_cols, len(handles) or 1)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=legend_cols,
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    legend_rows = math.ceil(len(handles) / legend_cols)
    fig.tight_layout(rect=(0, (0.08 + 0.2 * legend_rows) / fig.get_figheight(), 1, 1))
    _save_figure(fig, path)


def plot_image_panels(
    grids: Sequence[tuple[str, np.ndarray]], path: str | Path, *, title: str = ""
) -> None:
    """Figures 4 and 5: image grids (from :func:`image_grid`) side by side, one titled panel.

    Drawn at a whole number of screen pixels per image pixel (the tallest grid at least 400
    pixels high), so every tile stays sharp and legible. Grey grids give a grey PNG; if any grid
    is in colour, an RGB one.
    """
    plt = _pyplot()
    dpi = 100
    scale = max(1, math.ceil(400 / max(g.shape[0] for _, g in grids)))
    widths = [g.shape[1] * scale / dpi for _, g in grids]
    height = max(g.shape[0] for _, g in grids) * scale / dpi
    gap, top = 0.25, 0.35 + (0.3 if title else 0)
    fig = plt.figure(figsize=(sum(widths) + gap * (len(grids) + 1), height + top + 0.1), dpi=dpi)
    fw, fh = fig.get_figwidth(), fig.get_figheight()
    x = gap
    for (ptitle, grid), w in zip(grids, widths, strict=True):
        h = grid.shape[0] * scale / dpi
        ax = fig.add_axes((x / fw, (0.1 + height - h) / fh, w / fw, h / fh))
        shown = np.clip(grid, 0.0, 1.0)
        ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title(ptitle, fontsize=9)
        ax.set_axis_off()
        x += w + gap
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / fh, va="top")
    grey = all(g.ndim == 2 for _, g in grids)
    _save_figure(fig, path, grey=grey, rgb=not grey)

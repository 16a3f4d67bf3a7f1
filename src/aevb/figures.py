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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import ConfigError
from .runs import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class _Figures:
    """Figures for files, made without pyplot (imported on first use: start-up time).

    aevb never switches the matplotlib backend of the notebook or application it runs in, and
    leaves nothing open in pyplot's registry; a figure saved to PNG renders with Agg either way.
    """

    @property
    def rcParams(self) -> Any:  # noqa: N802 - pyplot's name, for its callers
        import matplotlib

        return matplotlib.rcParams

    def figure(self, **kw: Any) -> Figure:
        from matplotlib.figure import Figure

        return Figure(**kw)

    def subplots(
        self, nrows: int = 1, ncols: int = 1, *, figsize: Any = None, dpi: Any = None, **kw: Any
    ) -> tuple[Figure, Any]:
        fig = self.figure(figsize=figsize, dpi=dpi)
        return fig, fig.subplots(nrows, ncols, **kw)

    def close(self, fig: Figure) -> None:
        """Nothing to release: the figure is pyplot's concern only if pyplot made it."""


def _pyplot() -> _Figures:
    """What draws aevb's figures: pyplot's figure() and subplots(), without pyplot."""
    return _Figures()


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


def box_latents(grid: int, lo: Sequence[float], hi: Sequence[float]) -> torch.Tensor:
    """A K x K grid of cell centers of the box [lo_1, hi_1] x [lo_2, hi_2], laid out as
    :func:`manifold_latents` (row r, column c; z2 grows upwards)."""
    if grid < 2:
        raise ConfigError(f"--grid must be at least 2, got {grid}")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    z1 = (lo[0] + u * (hi[0] - lo[0])).repeat(grid)
    z2 = (lo[1] + u * (hi[1] - lo[1])).flip(0).repeat_interleave(grid)
    return torch.stack([z1, z2], dim=1).float()


def plot_curves(
    runs: Sequence[tuple[str, list[dict]]],
    path: str | Path,
    title: str = "Lower bound",
    metric: str = "bound",
    terms: bool = False,
) -> None:
    """Bound (or ``metric="log_likelihood"``, or ``"reconstruction"``) per datapoint against
    training samples evaluated.

    ``terms``: beside it, a panel of the bound's two terms of the first run that logged them
    (E_q[log p(x|z)] on the left axis, KL(q || p) on the right) and, for a run trained with a
    weighted KL term, a small panel of the weight applied (:func:`_terms_panel`).

    Log x-axis, train solid, test dashed, validation dotted. A run without the metric (Monte Carlo
    EM has no bound) is drawn with its marginal-likelihood estimates, one without either (an
    auto-encoder) with its reconstruction log p(x|z=mu(x)).
    """
    plt = _pyplot()
    with_terms = (
        [recs for _, recs in runs if any("train_kl" in r for r in recs)][:1] if terms else []
    )
    fig, axes = _curve_axes(plt, with_terms)
    ax = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(runs):
        recs = [r for r in records if r.get("samples_seen", 0) > 0]
        if not recs:
            continue
        s = [r["samples_seen"] for r in recs]
        color = colors[i % len(colors)]
        key = metric if f"train_{metric}" in recs[0] else "log_likelihood"
        if key == "log_likelihood" and not {"train_log_likelihood", "train_bound"} & recs[0].keys():
            key = "reconstruction"  # an auto-encoder: no bound, its log p(x|z=mu(x))
        for split, style in (("train", "-"), ("test", "--"), ("valid", ":")):
            if f"{split}_{key}" in recs[0]:
                ys = [r[f"{split}_{key}"] for r in recs]
                ax.plot(s, ys, style, color=color, label=f"{label} {split}")
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel(
        {
            "bound": "lower bound per datapoint (nats)",
            "iwae_bound": "importance-weighted bound per datapoint (nats)",
            "reconstruction": "reconstruction log p(x|z) per datapoint (nats)",
        }.get(metric, "log p(x) per datapoint (nats)")
    )
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if with_terms:
        _terms_panel(axes[1:], with_terms[0])
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
    handles: dict[str, Any] = {}  # label -> the Line2D drawn for it
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
        list(handles.values()),
        list(handles.keys()),
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


# --------------------------------------------------------------------------- the bound's terms

_SPLIT_STYLES = (("train", "-"), ("test", "--"), ("valid", ":"))
_TERM_LABELS = {
    "reconstruction": "E_q[log p(x|z)] per datapoint (nats)",
    "kl": "KL(q(z|x) || p(z)) per datapoint (nats)",
}


def _split_curves(ax: Axes, records: list[dict], key: str, color: str, label: str) -> list:
    """The train (solid), test (dashed) and validation (dotted) curves of ``{split}_{key}``
    against training samples (evaluations after the start); the lines drawn."""
    lines: list = []
    for split, style in _SPLIT_STYLES:
        pts = [
            (r["samples_seen"], r[f"{split}_{key}"])
            for r in records
            if r.get("samples_seen", 0) > 0 and f"{split}_{key}" in r
        ]
        if pts:
            s, y = zip(*pts, strict=True)
            lines += ax.plot(s, y, style, color=color, label=f"{label} {split}".strip())
    return lines


def _weight_panel(ax: Axes, runs: Sequence[tuple[str, list[dict]]], colors: list[str]) -> None:
    """The KL weight applied (the records' ``kl_weight``) against training samples."""
    for i, (label, records) in enumerate(runs):
        pts = [
            (r["samples_seen"], r["kl_weight"])
            for r in records
            if r.get("samples_seen", 0) > 0 and "kl_weight" in r
        ]
        if pts:
            s, w = zip(*pts, strict=True)
            ax.plot(s, w, "-", color=colors[i % len(colors)], label=label or None)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0.0)
    ax.set_title("KL weight applied", fontsize=9)
    ax.set_xlabel("training samples evaluated", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", alpha=0.3)


def _curve_axes(plt: Any, with_terms: list[list[dict]]) -> tuple[Figure, list[Axes]]:
    """:func:`plot_curves`' axes: the bound's alone, or beside the terms panel (and a small
    panel of the KL weight when the run logged one)."""
    if not with_terms:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        return fig, [ax]
    weighted = any("kl_weight" in r for r in with_terms[0])
    ratios = [3.0, 3.0, 1.3] if weighted else [3.0, 3.0]
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(2.0 * sum(ratios), 4), dpi=100, width_ratios=ratios
    )
    return fig, list(axes)


def _terms_panel(axes: list[Axes], records: list[dict]) -> None:
    """One run's two terms on one panel: E_q[log p(x|z)] on the left axis, the KL on a right
    one; then (a second axes given) the KL weight applied."""
    ax = axes[0]
    ax.set_xscale("log")
    lines = _split_curves(ax, records, "reconstruction", "tab:blue", "E_q[log p(x|z)]")
    kl_ax = ax.twinx()
    lines += _split_curves(kl_ax, records, "kl", "tab:orange", "KL")
    ax.set_ylabel(_TERM_LABELS["reconstruction"], color="tab:blue", fontsize=8)
    kl_ax.set_ylabel(_TERM_LABELS["kl"], color="tab:orange", fontsize=8)
    ax.set_xlabel("training samples evaluated")
    ax.set_title("the bound's two terms (bound = E_q[log p(x|z)] - KL)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=lines, fontsize=7, loc="center right")
    if len(axes) > 1:
        _weight_panel(axes[1], [("", records)], ["tab:gray"])


def terms_figure(runs: Sequence[tuple[str, list[dict]]], title: str = "") -> Figure:
    """The two terms of several runs: E_q[log p(x|z)] (left panel) and KL(q || p) (right),
    each run in its colour, train solid, test dashed, validation dotted; runs trained with a
    weighted KL term add a small third panel of the weight applied."""
    plt = _pyplot()
    weighted = any("kl_weight" in r for _, recs in runs for r in recs)
    ratios = [3.0, 3.0, 1.3] if weighted else [3.0, 3.0]
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(2.0 * sum(ratios), 4), dpi=100, width_ratios=ratios
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(runs):
        for ax, key in zip(axes, ("reconstruction", "kl"), strict=False):
            _split_curves(ax, records, key, colors[i % len(colors)], label)
    for ax, key in zip(axes, ("reconstruction", "kl"), strict=False):
        ax.set_xscale("log")
        ax.set_xlabel("training samples evaluated")
        ax.set_ylabel(_TERM_LABELS[key], fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if weighted:
        _weight_panel(axes[2], runs, colors)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_terms(runs: Sequence[tuple[str, list[dict]]], path: str | Path, title: str = "") -> None:
    """Write :func:`terms_figure` of the runs' metrics records as a PNG."""
    _save_figure(terms_figure(runs, title), path)


# --------------------------------------------------------------------------- latent usage


def latent_usage_figure(
    kl_per_dim: Sequence[float],
    activity: Sequence[float],
    threshold: float = 0.01,
    title: str = "",
) -> Figure:
    """Bars of the mean KL of each latent dimension, sorted descending, blue where the
    dimension is active (Cov_x(E_q[z_d|x]) > ``threshold``, Burda et al. 2015) and grey where
    not; the activity itself as dots on a log right axis, the threshold dashed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    kl, act = np.asarray(kl_per_dim, dtype=float), np.asarray(activity, dtype=float)
    order = np.argsort(-kl, kind="stable")
    active = act[order] > threshold
    j = len(kl)
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 0.25 * j + 2.5)), 3.8), dpi=100)
    x = np.arange(j)
    ax.bar(x, kl[order], width=0.8, color=["tab:blue" if a else "tab:gray" for a in active])
    step = max(1, math.ceil(j / 30))
    ax.set_xticks(x[::step], [str(int(d) + 1) for d in order[::step]], fontsize=7)
    ax.set_xlabel("latent dimension d (sorted by KL)")
    ax.set_ylabel("mean KL(q(z_d|x) || p(z_d)) (nats)", fontsize=8)
    act_ax = ax.twinx()
    act_ax.plot(x, np.maximum(act[order], 1e-12), "o", ms=3, color="black")
    act_ax.axhline(threshold, ls="--", lw=1, color="tab:red")
    act_ax.set_yscale("log")
    act_ax.set_ylabel("Cov_x(E_q[z_d|x])", fontsize=8)
    handles = [
        Patch(color="tab:blue", label="active"),
        Patch(color="tab:gray", label="inactive"),
        Line2D([], [], ls="", marker="o", ms=3, color="black", label="Cov_x(E_q[z_d|x])"),
        Line2D([], [], ls="--", color="tab:red", label=f"threshold {threshold:g}"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    n = int(active.sum())
    ax.set_title(title or f"latent usage: {n} of {j} dimensions active", fontsize=10)
    fig.tight_layout()
    return fig


def plot_latent_usage(
    path: str | Path,
    kl_per_dim: Sequence[float],
    activity: Sequence[float],
    threshold: float = 0.01,
    title: str = "",
) -> None:
    """Write :func:`latent_usage_figure` as a PNG."""
    _save_figure(latent_usage_figure(kl_per_dim, activity, threshold, title), path)

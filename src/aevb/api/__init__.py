"""The Python API. Every command-line command is a thin wrapper over one function here.

Its parts: :mod:`.common` (a run on disk, devices, :func:`load`), :mod:`.training`
(:func:`train` and what it needs), :mod:`.evaluation` (:func:`evaluate`), :mod:`.comparing`
(:func:`compare`: two models on the same points, paired), :mod:`.gradients`
(:func:`gradients`: the estimators' gradient variance) and :mod:`.tools`
(sampling, the manifold, reconstructions, encoding, decoding, interpolation, curves),
:mod:`.exporting` (:func:`export`: ONNX and torch.export files), :mod:`.card` (:func:`info`) and
:mod:`.exploring` (:func:`explore`: the latent space in the browser).
"""

from __future__ import annotations

from .card import info, render_info
from .common import Run, load, resolve_device
from .comparing import compare
from .evaluation import evaluate
from .exploring import explore
from .exporting import Export, export
from .gradients import gradients, render_gradients
from .tools import (
    Encoding,
    Interpolation,
    Manifold,
    Reconstruction,
    decode,
    encode,
    interpolate,
    manifold,
    plot,
    reconstruct,
    sample,
)
from .training import choose_lr, draw_run_figures, kl_mark, train

__all__ = [
    "Encoding",
    "Export",
    "Interpolation",
    "Manifold",
    "Reconstruction",
    "Run",
    "choose_lr",
    "compare",
    "decode",
    "draw_run_figures",
    "encode",
    "evaluate",
    "explore",
    "export",
    "gradients",
    "info",
    "interpolate",
    "kl_mark",
    "load",
    "manifold",
    "plot",
    "reconstruct",
    "render_gradients",
    "render_info",
    "resolve_device",
    "sample",
    "train",
]

"""The Python API. Every command-line command is a thin wrapper over one function here.

Its parts: :mod:`.common` (a run on disk, devices, :func:`load`), :mod:`.training`
(:func:`train` and what it needs), :mod:`.evaluation` (:func:`evaluate`) and :mod:`.tools`
(sampling, the manifold, reconstructions, encoding, decoding, interpolation, curves).
"""

from __future__ import annotations

from .common import Run, load, resolve_device
from .evaluation import evaluate
from .tools import decode, encode, interpolate, manifold, plot, reconstruct, sample
from .training import choose_lr, draw_run_figures, kl_mark, train

__all__ = [
    "Run",
    "choose_lr",
    "decode",
    "draw_run_figures",
    "encode",
    "evaluate",
    "interpolate",
    "kl_mark",
    "load",
    "manifold",
    "plot",
    "reconstruct",
    "resolve_device",
    "sample",
    "train",
]

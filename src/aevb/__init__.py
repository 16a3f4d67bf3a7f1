"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014), faithful and fast.

Quick use::

    import aevb
    run = aevb.train("digits", out="runs/digits", budget=200_000)
    model = aevb.load("runs/digits")
    model.elbo(x)            # per-datapoint lower bound (SGVB estimator B)
"""

from ._version import __version__
from .api import (
    Run,
    compare,
    decode,
    encode,
    evaluate,
    explore,
    export,
    gradients,
    info,
    interpolate,
    load,
    manifold,
    plot,
    reconstruct,
    sample,
    train,
)
from .config import load_config
from .errors import AevbError, ConfigError, DataError, NumericalError, RunError
from .experiments import reproduce
from .model import VAE, ModelConfig

__all__ = [
    "AevbError",
    "ConfigError",
    "DataError",
    "ModelConfig",
    "Run",
    "NumericalError",
    "RunError",
    "VAE",
    "__version__",
    "compare",
    "decode",
    "encode",
    "evaluate",
    "explore",
    "export",
    "gradients",
    "info",
    "interpolate",
    "load",
    "load_config",
    "manifold",
    "plot",
    "reconstruct",
    "reproduce",
    "sample",
    "train",
]

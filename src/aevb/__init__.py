"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014), faithful and fast.

Quick use::

    import aevb
    run = aevb.train("digits", out="runs/digits", budget=200_000)
    model = aevb.load("runs/digits")
    model.elbo(x)            # per-datapoint lower bound (SGVB estimator B)
"""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    Run,
    decode,
    encode,
    evaluate,
    interpolate,
    load,
    manifold,
    plot,
    reconstruct,
    sample,
    train,
)
from .config import load_config  # noqa: E402
from .errors import AevbError, ConfigError, DataError, NumericalError, RunError  # noqa: E402
from .experiments import reproduce  # noqa: E402
from .model import VAE, ModelConfig  # noqa: E402

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
    "decode",
    "encode",
    "evaluate",
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

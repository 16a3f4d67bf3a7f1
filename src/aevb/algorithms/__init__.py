"""The training algorithms: each is only the step it takes; the one Trainer runs them all.

``ALGORITHMS`` maps the names ``--algorithm`` takes to their classes. To add an algorithm, write a
module here with an :class:`~aevb.algorithms.base.Algorithm` subclass (and, if it has options of
its own, an ``Options`` dataclass with a ``prefix``), and add it to this table.
"""

from .aevb import AEVB
from .autoencoder import AutoEncoder
from .base import Algorithm, make_optimizer
from .full_vb import FullVB, FullVBOptions
from .mcem import MCEMOptions, MonteCarloEM
from .wake_sleep import WakeSleep, sample_x

ALGORITHMS: dict[str, type[Algorithm]] = {
    "aevb": AEVB,
    "wake-sleep": WakeSleep,
    "mcem": MonteCarloEM,
    "full-vb": FullVB,
    "autoencoder": AutoEncoder,
}

__all__ = [
    "AEVB",
    "ALGORITHMS",
    "Algorithm",
    "AutoEncoder",
    "FullVB",
    "FullVBOptions",
    "MCEMOptions",
    "MonteCarloEM",
    "WakeSleep",
    "make_optimizer",
    "sample_x",
]

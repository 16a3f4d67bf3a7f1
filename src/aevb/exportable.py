"""A trained VAE's encoder and decoder as stand-alone graphs, and the files they are written to.

:func:`aevb.export` (docs/EXPORT.md) writes them. Nothing here has math of its own: each graph
calls the model's own encoder or decoder network, so an exported file computes exactly what
``VAE.encode`` and ``VAE.decode`` compute. The one addition is the Bernoulli decoder's ``probs``
output, the likelihood's own ``mean`` (E[x|z]) beside its logits.

onnx and onnxscript (the ``onnx`` extra) are imported only when an ONNX file is written.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .model import VAE
from .networks import Decoder, Encoder

PARTS = ("encoder", "decoder")
FORMATS = ("onnx", "torch-export")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}

ONNX_OPSET = 18
"""The ONNX opset written: torchlib's own (no version conversion), read by onnxruntime >= 1.14."""

_EXAMPLE_BATCH = 2  # the traced batch size; the batch dimension stays symbolic (min 1)

_POSTERIOR_MEANINGS = {
    "mu": "mean of q(z|x) (diagonal Gaussian)",
    "logvar": "log-variance of q(z|x) (diagonal Gaussian): variance = exp(logvar)",
    "loc": "location of q(z|x)",
    "log_scale": "log of the scale of q(z|x): scale = exp(log_scale)",
    "log_rate": "log of the rate of q(z|x): rate = exp(log_rate)",
    "log_shape": "log of the shape of q(z|x): shape = exp(log_shape)",
}
LIKELIHOOD_OUTPUTS = {  # the decoder's outputs (names, meanings) by likelihood
    "bernoulli": (
        ("logits", "logits of p(x|z): P(x_i = 1 | z) = sigmoid(logits_i)"),
        ("probs", "sigmoid(logits): the Bernoulli probabilities, E[x|z] (the decoded data)"),
    ),
    "gaussian": (
        ("mean", "mean of p(x|z), E[x|z]: the sigmoid of a linear layer, in (0, 1)"),
        ("logvar", "log-variance of p(x|z) per dimension (diagonal Gaussian)"),
    ),
    "gaussian-linear": (
        ("mean", "mean of p(x|z), E[x|z] (unconstrained)"),
        ("logvar", "log-variance of p(x|z) per dimension (diagonal Gaussian)"),
    ),
}


@dataclass(frozen=True)
class Port:
    """One named input or output of a graph: a float32 tensor of shape (batch, width)."""

    name: str
    width: int
    meaning: str

    def describe(self) -> dict:
        """The port as export.json states it ("batch" is the symbolic batch dimension)."""
        shape = ["batch", self.width]
        return {"name": self.name, "shape": shape, "dtype": "float32", "meaning": self.meaning}


class EncoderGraph(nn.Module):
    """x (batch, D) -> the parameters of q(z|x), as the model's encoder computes them."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.encoder(x))


class DecoderGraph(nn.Module):
    """z (batch, N_z) -> the parameters of p(x|z) (and, for Bernoulli, its mean E[x|z])."""

    def __init__(self, decoder: Decoder, with_mean: bool) -> None:
        super().__init__()
        self.decoder = decoder
        self.with_mean = with_mean

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        params = tuple(self.decoder(z))
        if self.with_mean:
            return (*params, self.decoder.likelihood.mean(params))
        return params


@dataclass
class Part:
    """A graph to export with its named input and outputs."""

    name: str
    module: nn.Module
    input: Port
    outputs: tuple[Port, ...]

    def example(self) -> Tensor:
        """An example input of the traced batch size (its values do not matter)."""
        return torch.zeros(_EXAMPLE_BATCH, self.input.width)

    def describe(self) -> dict:
        """Input and outputs as export.json states them."""
        return {"inputs": [self.input.describe()], "outputs": [p.describe() for p in self.outputs]}


def posterior_names(model: VAE) -> tuple[str, ...]:
    """The names of the encoder's outputs: (mu, logvar) for the Gaussian, else the family's."""
    return getattr(model.encoder.family, "param_names", ()) or ("mu", "logvar")


def encoder_part(model: VAE, standardized: bool = False) -> Part:
    """The encoder: data rows x to the parameters of the posterior family."""
    c = model.config
    family = f" ({c.posterior} family)" if c.posterior != "normal" else ""
    outputs = tuple(
        Port(n, c.latent_dim, _POSTERIOR_MEANINGS.get(n, f"raw parameter {n} of q(z|x)") + family)
        for n in posterior_names(model)
    )
    where = (
        "z-scored with the run's training-set mean and std (export.json: standardize)"
        if standardized
        else "the model's data units (pixel intensities in [0, 1] for image data)"
    )
    shape = ""
    if c.image_shape:
        shape = f"{c.image_shape[0]}x{c.image_shape[1]} image flattened row by row, "
    x = Port("x", c.x_dim, f"data rows ({shape}{c.x_dim} values) in {where}")
    return Part("encoder", EncoderGraph(model.encoder).eval(), x, outputs)


def decoder_part(model: VAE) -> Part:
    """The decoder: latent points z to the parameters of the likelihood p(x|z)."""
    c = model.config
    extra = " (decoder weights: the means of q(theta), full VB)" if c.parameter_posterior else ""
    outputs = tuple(
        Port(n, c.x_dim, meaning + extra) for n, meaning in LIKELIHOOD_OUTPUTS[c.likelihood]
    )
    z = Port("z", c.latent_dim, f"latent points, e.g. draws from the prior p(z) ({c.prior})")
    with_mean = c.likelihood == "bernoulli"
    return Part("decoder", DecoderGraph(model.decoder, with_mean).eval(), z, outputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress lines, log warnings and deprecation notices off the console."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def batch_dim() -> torch.export.Dim:
    """The symbolic batch dimension of every exported graph."""
    return torch.export.Dim("batch", min=1)


def write_onnx(part: Part, path: Path, opset: int = ONNX_OPSET) -> None:
    """Write ``part`` as one self-contained ONNX file (weights inside) with a dynamic batch.

    The torch.export-based ("dynamo") exporter: torch's default since 2.9, and the TorchScript
    one (``dynamo=False``) is deprecated and slated for removal. It exports every network aevb
    builds (MLP and conv, every likelihood and latent family) to within float32 rounding of the
    model, so there is no fallback to the TorchScript exporter to maintain.
    """
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            part.module,
            (part.example(),),
            str(path),
            dynamo=True,
            input_names=[part.input.name],
            output_names=[p.name for p in part.outputs],
            dynamic_shapes=({0: batch_dim()},),
            opset_version=opset,
            external_data=False,  # one file, weights inside (the models are small)
            verbose=False,
        )


def write_program(part: Part, path: Path) -> None:
    """Write ``part`` as a torch.export program (``torch.export.save``) with a dynamic batch."""
    with _quiet():
        program = torch.export.export(
            part.module, (part.example(),), dynamic_shapes=({0: batch_dim()},)
        )
        torch.export.save(program, str(path))

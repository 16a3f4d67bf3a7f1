"""Convolutional encoder and decoder for image data, drop-in beside the MLPs of Appendix C.

``ModelConfig(architecture="conv", image_shape=(H, W))`` selects them. The encoder reads the
(..., H*W) rows as 1 x H x W images: two 4x4 convolutions of stride 2 (``channels`` maps each,
halving the size each time), a dense layer of ``hidden`` units and one linear head per parameter
vector of the latent family. The decoder mirrors it: a dense layer of ``hidden`` units, a dense
layer to a (channels[1], H/4, W/4) map and two 4x4 transposed convolutions of stride 2 back to
H x W, with one output channel per parameter image of the observation model (logits for
Bernoulli; mean and log-variance for Gaussian). Every hidden layer uses the model's activation.
Both keep the MLP versions' interface (leading sample dimensions, ``posterior``, ``log_prob``), so
every estimator, algorithm and marginal-likelihood estimator works with them unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from .distributions import LatentDistribution
from .networks import ACTIVATIONS, Decoder, Encoder, Likelihood

CHANNELS = (32, 64)
"""Feature maps of the two convolutions (encoder) and transposed convolutions (decoder)."""


def _down(n: int) -> int:
    """Size after a 4x4 convolution of stride 2 and padding 1."""
    return (n - 2) // 2 + 1


def check_image_shape(image_shape: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) of at least 4 x 4 pixels, or ValueError naming the fix."""
    if image_shape is None:
        raise ValueError("the conv architecture needs the image shape; give --image-shape H W")
    h, w = (int(s) for s in image_shape)
    if h < 4 or w < 4:
        raise ValueError(f"the conv architecture needs images of at least 4 x 4, got {h} x {w}")
    return h, w


class ConvHeads(nn.Module):
    """Images (..., H*W) -> conv, conv, dense -> ``n_heads`` vectors of ``out_dim``."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        out_dim: int,
        n_heads: int,
        hidden: int,
        activation: str,
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        h, w = self.image_shape
        c1, c2 = channels
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 4, 2, 1), act(), nn.Conv2d(c1, c2, 4, 2, 1), act(), nn.Flatten()
        )
        self.dense = nn.Sequential(nn.Linear(c2 * _down(_down(h)) * _down(_down(w)), hidden), act())
        self.head = nn.Linear(hidden, out_dim * n_heads)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        lead = x.shape[:-1]
        out = self.head(self.dense(self.features(x.reshape(-1, 1, *self.image_shape))))
        return tuple(out.reshape(*lead, -1).split(self.out_dim, dim=-1))


class DeconvHeads(nn.Module):
    """Latents (..., J) -> dense, dense, transposed conv x 2 -> ``n_heads`` images (..., H*W)."""

    def __init__(
        self,
        in_dim: int,
        image_shape: tuple[int, int],
        n_heads: int,
        hidden: int,
        activation: str,
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        h, w = self.image_shape
        c1, c2 = channels
        act = ACTIVATIONS[activation]
        h1, w1 = _down(h), _down(w)
        self.map_shape = (c2, _down(h1), _down(w1))
        self.dense = nn.Sequential(
            nn.Linear(in_dim, hidden), act(), nn.Linear(hidden, c2 * _down(h1) * _down(w1)), act()
        )
        # output_padding makes each transposed convolution invert its convolution's size exactly
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, 2, 1, output_padding=(h1 % 2, w1 % 2)),
            act(),
            nn.ConvTranspose2d(c1, n_heads, 4, 2, 1, output_padding=(h % 2, w % 2)),
        )
        self.n_heads = n_heads
        self.in_dim = in_dim

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        lead = z.shape[:-1]
        m = self.dense(z.reshape(-1, self.in_dim)).reshape(-1, *self.map_shape)
        out = self.deconv(m).reshape(*lead, self.n_heads, -1)
        return tuple(out.unbind(-2))


class ConvEncoder(Encoder):
    """Recognition model q(z|x) with a convolutional trunk."""

    def __init__(
        self,
        family: type[LatentDistribution],
        image_shape: tuple[int, int],
        z_dim: int,
        hidden: int,
        activation: str = "tanh",
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        nn.Module.__init__(self)
        self.family = family
        self.net = ConvHeads(image_shape, z_dim, family.n_params, hidden, activation, channels)


class ConvDecoder(Decoder):
    """Generative model p(x|z) with transposed convolutions."""

    def __init__(
        self,
        likelihood: type[Likelihood],
        z_dim: int,
        image_shape: tuple[int, int],
        hidden: int,
        activation: str = "tanh",
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        nn.Module.__init__(self)
        self.likelihood = likelihood
        n = likelihood.n_params
        self.net = DeconvHeads(z_dim, image_shape, n, hidden, activation, channels)

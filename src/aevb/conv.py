"""Convolutional encoder and decoder for image data, drop-in beside the MLPs of Appendix C.

``ModelConfig(architecture="conv", image_shape=(H, W))`` selects them for grey images, and
``image_shape=(H, W, C)`` for images of C channels (colour: C = 3). Rows are flattened
channel-last, as the data layer stores them: the encoder reads the (..., H*W*C) rows as
(H, W, C) images and permutes them to C x H x W for the convolutions; the decoder permutes its
C x H x W outputs back. The encoder: two 4x4 convolutions of stride 2 (``channels`` maps each,
halving the size each time), a dense layer of ``hidden`` units and one linear head per parameter
vector of the latent family. The decoder mirrors it: a dense layer of ``hidden`` units, a dense
layer to a (channels[1], H/4, W/4) map and two 4x4 transposed convolutions of stride 2 back to
H x W, with C output channels per parameter image of the observation model (logits for
Bernoulli; mean and log-variance for Gaussian). Every hidden layer uses the model's activation.
Grey images (H, W) build exactly the layers, and compute exactly the outputs, of (H, W, 1).
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


def check_image_shape(image_shape: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(H, W, C) of at least 4 x 4 pixels (C = 1 for a grey (H, W)), or ValueError naming the
    fix."""
    if image_shape is None:
        raise ValueError(
            "the conv architecture needs the image shape; give --image-shape H W (H W 3 for colour)"
        )
    if len(image_shape) not in (2, 3):
        raise ValueError(f"the conv architecture needs (H, W) or (H, W, C), got {image_shape}")
    h, w, c = (*(int(s) for s in image_shape), 1)[:3]
    if h < 4 or w < 4:
        raise ValueError(f"the conv architecture needs images of at least 4 x 4, got {h} x {w}")
    if c < 1:
        raise ValueError(f"the conv architecture needs at least 1 channel, got {c}")
    return h, w, c


def to_channels_first(x: Tensor, h: int, w: int, c: int) -> Tensor:
    """Channel-last rows (..., H*W*C) as a (B, C, H, W) batch."""
    if c == 1:
        return x.reshape(-1, 1, h, w)  # grey: the layout of every earlier release
    return x.reshape(-1, h, w, c).permute(0, 3, 1, 2)


def to_channels_last(y: Tensor, n: int, c: int) -> Tensor:
    """(B, n*C, H, W) maps as n channel-last rows each: (B, n, H*W*C)."""
    if c == 1:
        return y.reshape(y.shape[0], n, -1)
    b, _, h, w = y.shape
    return y.reshape(b, n, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, n, h * w * c)


class ConvHeads(nn.Module):
    """Images (..., H*W*C) -> conv, conv, dense -> ``n_heads`` vectors of ``out_dim``."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        out_dim: int,
        n_heads: int,
        hidden: int,
        activation: str,
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        super().__init__()
        h, w, c = self.image_shape = check_image_shape(image_shape)
        c1, c2 = channels
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 4, 2, 1), act(), nn.Conv2d(c1, c2, 4, 2, 1), act(), nn.Flatten()
        )
        self.dense = nn.Sequential(nn.Linear(c2 * _down(_down(h)) * _down(_down(w)), hidden), act())
        self.head = nn.Linear(hidden, out_dim * n_heads)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        lead = x.shape[:-1]
        out = self.head(self.dense(self.features(to_channels_first(x, *self.image_shape))))
        return tuple(out.reshape(*lead, -1).split(self.out_dim, dim=-1))


class DeconvHeads(nn.Module):
    """Latents (..., J) -> dense, dense, transposed conv x 2 -> ``n_heads`` images (..., H*W*C)."""

    def __init__(
        self,
        in_dim: int,
        image_shape: tuple[int, ...],
        n_heads: int,
        hidden: int,
        activation: str,
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        super().__init__()
        h, w, c = self.image_shape = check_image_shape(image_shape)
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
            nn.ConvTranspose2d(c1, n_heads * c, 4, 2, 1, output_padding=(h % 2, w % 2)),
        )
        self.n_heads = n_heads
        self.in_dim = in_dim

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        lead = z.shape[:-1]
        m = self.dense(z.reshape(-1, self.in_dim)).reshape(-1, *self.map_shape)
        out = to_channels_last(self.deconv(m), self.n_heads, self.image_shape[2])
        out = out.reshape(*lead, self.n_heads, -1)
        return tuple(out.unbind(-2))


class ConvEncoder(Encoder):
    """Recognition model q(z|x) with a convolutional trunk."""

    def __init__(
        self,
        family: type[LatentDistribution],
        image_shape: tuple[int, ...],
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
        image_shape: tuple[int, ...],
        hidden: int,
        activation: str = "tanh",
        channels: tuple[int, int] = CHANNELS,
    ) -> None:
        nn.Module.__init__(self)
        self.likelihood = likelihood
        n = likelihood.n_params
        self.net = DeconvHeads(z_dim, image_shape, n, hidden, activation, channels)

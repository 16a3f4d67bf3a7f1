"""Colour images and image folders: loading, labels, refusals, training and colour figures.

The images are real: 8 x 8 patches cut from scikit-learn's two bundled photographs (china.jpg,
flower.jpg), written as PNG files or as an (N, H, W, 3) array.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import aevb
from aevb import runs, settings, tracking
from aevb.cli import build_parser, main
from aevb.conv import ConvDecoder, ConvEncoder, to_channels_first, to_channels_last
from aevb.data import load_dataset
from aevb.data.arrays import held_out
from aevb.distributions import POSTERIORS
from aevb.errors import ConfigError, DataError
from aevb.figures import image_grid
from aevb.model import VAE, ModelConfig
from aevb.networks import LIKELIHOODS

CLASSES = ("china", "flower", "mixed")
PER_CLASS = 100
TINY = dict(latent_dim=2, hidden=16, budget=1_000, lr=0.02, eval_size=60, progress=False)


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's bundled china.jpg and flower.jpg (what ``load_sample_images`` returns),
    read from its package folder: importing sklearn alone takes seconds."""
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
    return tuple(np.asarray(Image.open(folder / f"{n}.jpg")) for n in ("china", "flower"))


def _patches(n: int, size: int = 8, seed: int = 0, photo: int | None = None) -> np.ndarray:
    """n random size x size x 3 uint8 patches of the bundled photographs."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        im = photos[i % 2 if photo is None else photo]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out[i] = im[y : y + size, x : x + size]
    return out


def _write(folder: Path, images: np.ndarray, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        paths.append(folder / f"{prefix}{i:03d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """DIR/<class>/*.png: 300 RGB patches in 3 classes, plus files that are not images.
    Returns the folder, the images in sorted path order and their class codes."""
    root = tmp_path_factory.mktemp("images") / "patches"
    images, codes = [], []
    for k, name in enumerate(CLASSES):
        photo = None if name == "mixed" else k
        a = _patches(PER_CLASS, seed=k, photo=photo)
        _write(root / name, a)
        images.append(a)
        codes += [k] * PER_CLASS
    (root / "README.txt").write_text("not an image")
    (root / "china" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "china" / "._000.png").write_bytes(b"AppleDouble, not a PNG")  # hidden: ignored
    return root, np.concatenate(images), np.array(codes)


# --------------------------------------------------------------------------- loading


def test_folder_gives_its_pixels_labels_and_shape(folder):
    root, images, codes = folder
    ds = load_dataset(str(root))
    assert ds.image_shape == (8, 8, 3) and ds.x_dim == 192
    assert ds.label_names == list(CLASSES)
    rows = images.reshape(len(images), -1).astype(np.float32) / 255  # channel-last, exactly
    kept, out = held_out(len(images), 0)  # the fixed split of a user array
    assert np.array_equal(ds.train, rows[kept]) and np.array_equal(ds.test, rows[out])
    assert np.array_equal(ds.labels["train"], codes[kept])
    assert np.array_equal(ds.labels["test"], codes[out])
    valid = load_dataset(str(root), validation=True)
    assert len(valid.train) + len(valid.split("valid")) == len(ds.train)
    assert len(valid.labels["valid"]) == len(valid.split("valid"))
    flat = root.parent / "flat"
    _write(flat, images[:12])
    ds = load_dataset(str(flat))
    assert ds.labels == {} and ds.label_names is None and len(ds.train) + len(ds.test) == 12


def test_grey_folders_stay_grey_and_a_mix_becomes_rgb(tmp_path):
    rgb = _patches(6, seed=3)
    grey = rgb[..., 0]
    _write(tmp_path / "grey", grey)
    ds = load_dataset(str(tmp_path / "grey"))
    assert ds.image_shape == (8, 8)
    both = np.concatenate([ds.train, ds.test])
    assert sorted(map(bytes, both)) == sorted(
        bytes(r) for r in grey.reshape(6, -1) / np.float32(255)
    )
    mix = tmp_path / "mix"
    _write(mix, grey, "a")  # a000..a005 grey, b000..b005 colour
    _write(mix, rgb, "b")
    ds = load_dataset(str(mix))
    assert ds.image_shape == (8, 8, 3)
    x = np.concatenate([ds.train, ds.test]).reshape(-1, 8, 8, 3)
    grey_rows = x[
        (x[..., 0] == x[..., 1]).all(axis=(1, 2)) & (x[..., 1] == x[..., 2]).all(axis=(1, 2))
    ]
    assert len(grey_rows) == 6  # grey copied to R, G and B; the photo patches stay in colour
    assert sorted(map(bytes, grey_rows[..., 0])) == sorted(
        bytes(g) for g in grey.astype(np.float32) / 255
    )


def test_mixed_sizes_are_refused_naming_the_odd_file_or_resized(tmp_path):
    root = tmp_path / "sizes"
    _write(root, _patches(10, seed=4))
    odd = _patches(1, size=12, seed=5)[0][:10]  # 10 x 12
    Image.fromarray(odd).save(root / "odd.png")
    with pytest.raises(
        DataError, match=r"odd\.png: 10 x 12 pixels .* 10 of the 11 .* 8 x 8.*--image-size"
    ):
        load_dataset(str(root))
    ds = load_dataset(str(root), image_size=(8, 8))
    want = np.asarray(Image.fromarray(odd).resize((8, 8), Image.Resampling.BILINEAR))
    x = np.concatenate([ds.train, ds.test])
    assert ds.image_shape == (8, 8, 3)
    assert any(np.array_equal(r, want.reshape(-1) / np.float32(255)) for r in x)
    with pytest.raises(ConfigError, match="--image-size resizes the images of a folder"):
        load_dataset("digits", image_size=(8, 8))


def test_unreadable_and_empty_folders_are_one_line_errors(tmp_path, capsys):
    root = tmp_path / "bad"
    paths = _write(root, _patches(4, seed=6))
    good = paths[0].read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"truncated\.png: cannot decode"):
        load_dataset(str(root))
    (root / "truncated.png").unlink()
    (root / "text.png").write_text("hello")
    with pytest.raises(DataError, match=r"text\.png: cannot read as an image"):
        load_dataset(str(root))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(empty))
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "no images" in err[0], err
    (empty / "cls").mkdir()
    _write(empty / "cls", _patches(2, seed=7))
    (empty / "other").mkdir()  # a class folder without images
    with pytest.raises(DataError, match="other: a class folder without images"):
        load_dataset(str(empty))
    _write(empty, _patches(2, seed=8))  # images at the top and in a subfolder
    with pytest.raises(DataError, match="both directly"):
        load_dataset(str(empty))


def test_colour_arrays_and_image_shapes(tmp_path):
    x = _patches(40, seed=9).astype(np.float32) / 255
    np.save(tmp_path / "c.npy", x)
    ds = load_dataset(str(tmp_path / "c.npy"))
    assert ds.image_shape == (8, 8, 3)
    kept, _ = held_out(40, 0)
    assert np.array_equal(ds.train, x.reshape(40, -1)[kept])  # flattened channel-last
    np.save(tmp_path / "g.npy", x[..., :1])
    assert load_dataset(str(tmp_path / "g.npy")).image_shape == (8, 8)
    np.save(tmp_path / "rgba.npy", np.concatenate([x, x[..., :1]], -1))
    with pytest.raises(DataError, match="4 channels .*alpha"):
        load_dataset(str(tmp_path / "rgba.npy"))
    np.save(tmp_path / "chw.npy", np.moveaxis(x, -1, 1))
    with pytest.raises(DataError, match="channels first"):
        load_dataset(str(tmp_path / "chw.npy"))
    np.save(tmp_path / "rows.npy", x.reshape(40, -1))
    assert load_dataset(str(tmp_path / "rows.npy"), image_shape=(8, 8, 3)).image_shape == (8, 8, 3)
    args = build_parser().parse_args(["train", "--image-shape", "8", "8", "3"])
    assert args.image_shape == [8, 8, 3]
    assert settings.settings_from({"image_shape": [8, 8, 1]}).data.image_shape == (8, 8)
    with pytest.raises(ConfigError, match="--image-shape must be H W"):
        settings.settings_from({"image_shape": (8, 8, 2)})
    with pytest.raises(ConfigError, match="--image-shape .* wrong type"):
        settings.settings_from({"image_shape": (8,)})


# --------------------------------------------------------------------------- networks, figures


def test_conv_encoder_reads_channel_last_rows_as_nchw():
    torch.manual_seed(0)
    enc = ConvEncoder(POSTERIORS["normal"], (6, 5, 3), 2, 8, channels=(4, 4))
    conv = enc.net.features[0]
    assert conv.weight.shape == (4, 3, 4, 4)
    red = torch.zeros(6, 5, 3)
    red[..., 0] = torch.rand(6, 5)  # only the red channel is non-zero
    got = conv(to_channels_first(red.reshape(1, -1), 6, 5, 3))
    nchw = torch.zeros(1, 3, 6, 5)
    nchw[0, 0] = red[..., 0]
    torch.testing.assert_close(got, F.conv2d(nchw, conv.weight, conv.bias, 2, 1))
    only_red = F.conv2d(nchw[:, :1], conv.weight[:, :1], conv.bias, 2, 1)  # the red weights alone
    torch.testing.assert_close(got, only_red)
    wrong = conv(red.reshape(1, -1).reshape(1, 3, 6, 5))  # rows misread as channel-first
    assert (wrong - got).abs().max() > 1e-2
    img = torch.rand(2, 6, 5, 3)
    want = enc.net.features(img.permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(
        enc.net.features(to_channels_first(img.reshape(2, -1), 6, 5, 3)), want
    )
    maps = torch.arange(2 * 3 * 6 * 5.0).reshape(1, 6, 6, 5)  # 2 heads x 3 channels
    rows = to_channels_last(maps, 2, 3)
    assert rows.shape == (1, 2, 90)
    assert rows[0, 1, (4 * 5 + 3) * 3 + 2] == maps[0, 1 * 3 + 2, 4, 3]  # head 1, channel 2, (4, 3)


def test_grey_conv_models_are_unchanged_and_colour_ones_have_c_channels():
    torch.manual_seed(0)
    kw = dict(x_dim=64, architecture="conv", hidden=16, latent_dim=2)
    grey = VAE(ModelConfig(image_shape=(8, 8), **kw))
    one = VAE(ModelConfig(image_shape=(8, 8, 1), **kw))
    shapes = {k: tuple(v.shape) for k, v in grey.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in one.state_dict().items()}
    assert shapes["encoder.net.features.0.weight"] == (32, 1, 4, 4)
    assert shapes["decoder.net.deconv.2.weight"] == (32, 1, 4, 4)  # one head: Bernoulli logits
    one.load_state_dict(grey.state_dict())
    x = torch.rand(5, 64)
    for a, b in zip(grey.encoder(x), one.encoder(x), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grey.decode_mean(x[:, :2]), one.decode_mean(x[:, :2]))
    dec = ConvDecoder(LIKELIHOODS["gaussian"], 2, (8, 8, 3), 16, channels=(4, 4))
    assert dec.net.deconv[2].weight.shape == (4, 6, 4, 4)  # 2 heads x 3 channels
    assert all(o.shape == (7, 192) for o in dec(torch.randn(7, 2)))


def test_colour_grids_and_tensorboard_images():
    x = _patches(3, seed=10).astype(np.float32) / 255
    grid = image_grid(x.reshape(3, -1), (8, 8, 3), 2)
    assert grid.shape == (19, 19, 3) and np.array_equal(grid[10:18, 1:9], x[2])
    assert (grid[0] == 1).all()  # white padding
    assert image_grid(x[..., 0].reshape(3, -1), (8, 8), 2).ndim == 2
    png = tracking.png_gray(grid)
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert back.shape == (19, 19, 3) and np.array_equal(back, np.round(grid * 255).astype(np.uint8))


# --------------------------------------------------------------------------- training


def _rgb_png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "RGB", (path, img.mode)
    return np.asarray(img).astype(int)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_train_on_a_folder_draws_colour_figures(folder, tmp_path, architecture):
    root, _, _ = folder
    run = aevb.train(str(root), tmp_path / "run", architecture=architecture, **TINY)
    cfg = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert cfg["model"]["image_shape"] == [8, 8, 3] and cfg["data"]["image_shape"] == [8, 8, 3]
    assert run.metrics[-1]["test_bound"] > run.metrics[0]["test_bound"]
    figs = tmp_path / "run" / "figures"
    for name in ("samples.png", "manifold.png", "reconstructions.png"):
        _rgb_png(figs / name)
    rec = _rgb_png(figs / "reconstructions.png")  # the data's colours: channels differ
    assert np.abs(rec[..., 0] - rec[..., 2]).max() > 50
    model = aevb.load(tmp_path / "run")
    assert model.config.image_shape == (8, 8, 3)


def test_resized_folder_run_resumes_on_the_same_data(tmp_path):
    root = tmp_path / "sizes"
    _write(root, _patches(30, seed=11))
    _write(root, _patches(10, size=10, seed=12), "big")
    run_dir = tmp_path / "run"
    aevb.train(str(root), run_dir, image_size=(6, 6), batch_size=20, draw_figures=False, **TINY)
    cfg = json.loads((run_dir / runs.CONFIG).read_text())
    assert cfg["data"]["image_size"] == [6, 6] and cfg["model"]["image_shape"] == [6, 6, 3]
    run = aevb.train(resume=run_dir, budget=1_500, progress=False, draw_figures=False)
    assert run.metrics[-1]["samples_seen"] >= 1_500
    aevb.reconstruct(run_dir, out=tmp_path / "rec.png")
    _rgb_png(tmp_path / "rec.png")
    shutil.rmtree(run_dir)


def test_gaussian_vae_learns_colour_patches_of_real_photographs(tmp_path):
    """2 000 random 8 x 8 x 3 patches of china.jpg and flower.jpg, a Gaussian decoder."""
    np.save(tmp_path / "patches.npy", _patches(2_000, seed=13).astype(np.float32) / 255)
    run = aevb.train(
        str(tmp_path / "patches.npy"),
        likelihood="gaussian",
        latent_dim=8,
        hidden=64,
        budget=20_000,
        lr=0.02,
        eval_size=200,
        eval_per_decade=2,
        progress=False,
        draw_figures=False,
    )
    assert run.model.config.image_shape == (8, 8, 3)
    first, last = run.metrics[0]["test_bound"], run.metrics[-1]["test_bound"]
    assert last > first + 100, (first, last)

"""Experiment tracking: TensorBoard event files beside metrics.jsonl, without TensorBoard.

``aevb train --tensorboard`` writes ``RUNDIR/tensorboard/events.out.tfevents.*`` at every
evaluation point: the bounds (train, test, valid; IWAE and log p(x) where logged), the learning
rate, training samples per second, the KL weight of warm-up runs, and, for image data, a grid of
samples and one of reconstructions. View them with ``tensorboard --logdir RUNDIR`` (install the
optional ``tensorboard`` package: ``pip install 'aevb[tensorboard]'``); writing them needs nothing.

The files are TFRecord streams of ``Event`` protocol buffers, which this module encodes itself (the
few fields used: wall time, step, scalar and PNG image summaries), with the masked CRC-32C
checksums TensorBoard verifies. :func:`read_events` decodes them back (the tests use it, and
compare with TensorBoard's own reader where it is installed).
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import figures

if TYPE_CHECKING:
    from .model import VAE

TENSORBOARD_DIR = "tensorboard"

# --------------------------------------------------------------------------- CRC-32C (Castagnoli)

_CRC_TABLE: list[int] = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (the checksum of TFRecord files)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- protobuf encoding


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _event(
    wall_time: float, step: int, *, file_version: str | None = None, summary: bytes = b""
) -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _field_varint(2, step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if summary:
        msg += _field_bytes(5, summary)
    return msg


def _scalar_value(tag: str, value: float) -> bytes:
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int = 1) -> bytes:
    image = (
        _field_varint(1, height) + _field_varint(2, width) + _field_varint(3, channels)
        + _field_bytes(4, png)
    )  # fmt: skip
    return _field_bytes(1, tag.encode()) + _field_bytes(4, image)


def png_gray(image: np.ndarray) -> bytes:
    """An 8-bit PNG of a 2-D (greyscale) or (H, W, 3) (RGB) array with values in [0, 1]."""
    a = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    pix = np.round(a * 255.0).astype(np.uint8)
    h, w = pix.shape[:2]
    raw = b"".join(b"\x00" + pix[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if pix.ndim == 3 else 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- the writer


class EventWriter:
    """Appends TensorBoard events to one new ``events.out.tfevents.*`` file in ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.log_dir / name
        self._write([_event(time.time(), 0, file_version="brain.Event:2")])

    def _write(self, events: list[bytes]) -> None:
        data = bytearray()
        for ev in events:
            n = struct.pack("<Q", len(ev))
            data += n + struct.pack("<I", _masked_crc(n)) + ev + struct.pack("<I", _masked_crc(ev))
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        """One event holding a scalar summary per tag."""
        summary = b"".join(_field_bytes(1, _scalar_value(k, float(v))) for k, v in values.items())
        self._write([_event(time.time(), int(step), summary=summary)])

    def add_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """A greyscale (2-D) or RGB ((H, W, 3)) image with values in [0, 1]."""
        shape = np.asarray(image).shape
        h, w, c = shape[0], shape[1], (shape[2] if len(shape) == 3 else 1)
        summary = _field_bytes(1, _image_value(tag, png_gray(image), h, w, c))
        self._write([_event(time.time(), int(step), summary=summary)])


# --------------------------------------------------------------------------- reading back


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value): an int for varints, bytes for the other wire types."""
    out: list[tuple[int, Any]] = []
    i = 0
    v: int | bytes
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 1:
            v, i = buf[i : i + 8], i + 8
        elif wire == 5:
            v, i = buf[i : i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, v))
    return out


def read_events(path: str | Path) -> list[dict]:
    """Decode an event file: one dict per event (wall_time, step, scalars, images).

    Raises ValueError on a checksum mismatch or a truncated record.
    """
    data = Path(path).read_bytes()
    i = 0
    events = []
    while i < len(data):
        if i + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {i}")
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[i + 8 : i + 12])
        if crc != _masked_crc(header):
            raise ValueError(f"{path}: bad length checksum at byte {i}")
        body = data[i + 12 : i + 12 + n]
        (crc,) = struct.unpack("<I", data[i + 12 + n : i + 16 + n])
        if len(body) != n or crc != _masked_crc(body):
            raise ValueError(f"{path}: bad data checksum at byte {i}")
        i += 16 + n
        ev: dict = {"scalars": {}, "images": {}}
        for number, v in _fields(body):
            if number == 1:
                ev["wall_time"] = struct.unpack("<d", v)[0]
            elif number == 2:
                ev["step"] = v
            elif number == 3:
                ev["file_version"] = v.decode()
            elif number == 5:
                for _, value in _fields(v):
                    f = dict(_fields(value))
                    tag = f[1].decode()
                    if 2 in f:
                        ev["scalars"][tag] = struct.unpack("<f", f[2])[0]
                    if 4 in f:
                        img = dict(_fields(f[4]))
                        ev["images"][tag] = {"height": img[1], "width": img[2], "png": img[4]}
        events.append(ev)
    return events


# --------------------------------------------------------------------------- a run's tracker


class RunTracker:
    """What the Trainer writes at each evaluation point to ``RUNDIR/tensorboard``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.writer = EventWriter(Path(run_dir) / TENSORBOARD_DIR)
        self._last: tuple[int, float] | None = None

    def log(self, record: dict, lr: float, model: VAE, images_x: torch.Tensor | None) -> None:
        """Scalars of an evaluation record; sample and reconstruction grids for image data."""
        step = int(record["samples_seen"])
        values: dict[str, float] = {"train/learning_rate": float(lr)}
        for key, v in record.items():
            if not isinstance(v, float) or key.endswith("_se") or key == "seconds":
                continue
            split, _, name = key.partition("_")
            if split in ("train", "test", "valid") and name:
                values[f"{name}/{split}"] = v
            else:
                values[f"train/{key}"] = v
        seconds = float(record.get("seconds", 0.0))
        if self._last is not None and seconds > self._last[1]:
            values["train/samples_per_second"] = (step - self._last[0]) / (seconds - self._last[1])
        self._last = (step, seconds)
        self.writer.add_scalars(step, values)
        shape = model.config.image_shape
        if shape is None:
            return
        was_training = model.training
        model.eval()
        with torch.no_grad():
            g = torch.Generator(device=model.device).manual_seed(0)
            grid = figures.image_grid(model.sample(64, g), shape, 8)
            self.writer.add_image(step, "samples", grid)
            if images_x is not None and model.encoder is not None:
                x = images_x[:32].float()
                pairs = torch.stack([x, model.reconstruct(x)], 1).reshape(-1, x.shape[1])
                grid = figures.image_grid(pairs, shape, 8)
                self.writer.add_image(step, "reconstructions", grid)
        model.train(was_training)

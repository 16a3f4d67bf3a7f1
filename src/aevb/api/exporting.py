"""``aevb export``: a trained run's encoder and decoder as ONNX files or torch.export programs.

The run is verified against its manifest first (``aevb verify``): damaged weights are never
exported. The export is built in a hidden temporary folder beside ``out`` and renamed to ``out``
only when every file (and export.json) is complete, so ``out`` either holds a whole export or
does not exist; an ``out`` that exists and is not empty is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import exportable, runs
from .._version import __version__
from ..errors import ConfigError
from ..exportable import FORMATS, PARTS, SUFFIX, Part
from ..model import VAE
from .common import load

EXPORT_JSON = "export.json"
NO_TRAINED_ENCODER = {"mcem": "Monte Carlo EM fits the decoder alone"}
"""Algorithms whose encoder is never trained: only their decoder can be exported."""
_CHECK_ROWS = 3


@dataclass(frozen=True)
class Export:
    """What :func:`export` wrote: the folder, each part's file, and export.json's content."""

    out: Path
    files: dict[str, Path]
    """Part name ("encoder", "decoder") -> the file holding it."""
    description: dict
    """The content of export.json: formats, inputs and outputs, the run and the model."""

    @property
    def json_path(self) -> Path:
        """export.json, the description beside the files."""
        return self.out / EXPORT_JSON

    @property
    def paths(self) -> list[Path]:
        """Every file written: the parts' files, then export.json."""
        return [*self.files.values(), self.json_path]

    def summary(self) -> list[str]:
        """One line per file written (what the command line prints)."""
        lines = []
        for name, path in self.files.items():
            d = self.description["parts"][name]
            ins = ", ".join(f"{p['name']} (batch, {p['shape'][1]})" for p in d["inputs"])
            outs = ", ".join(p["name"] for p in d["outputs"])
            width = d["outputs"][0]["shape"][1]
            what = f"ONNX opset {d['opset']}" if d["format"] == "onnx" else "torch.export"
            err = d["check"]["max_abs_error"] if d.get("check") else None
            checked = f"; max abs error {err:.1e} against the model" if err is not None else ""
            lines.append(f"{path} ({what}): {ins} -> {outs} (batch, {width}){checked}")
        lines.append(f"{self.json_path} (inputs, outputs and their meaning)")
        return lines


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--format onnx needs {' and '.join(missing)}: install the onnx extra "
            "(pip install aevb[onnx]), or use --format torch-export"
        )


def _check_choices(format: str, part: str) -> tuple[str, ...]:
    """The parts to export; ConfigError for an unknown format or part."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    if part not in (*PARTS, "both"):
        raise ConfigError(f"unknown part {part!r}; choose encoder, decoder or both")
    return PARTS if part == "both" else (part,)


def _check_trained(run_dir: Path, cfg: dict, parts: tuple[str, ...]) -> None:
    """ConfigError when the encoder is asked for but the run's algorithm never trained it."""
    algorithm = cfg["train"].get("algorithm", "aevb")
    if "encoder" in parts and algorithm in NO_TRAINED_ENCODER:
        raise ConfigError(
            f"{run_dir}: a {algorithm} run has no trained encoder "
            f"({NO_TRAINED_ENCODER[algorithm]}); export its decoder with --part decoder"
        )


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file or a folder with anything in it (never overwritten)."""
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out {str(out)!r}: give the export a folder of its own (a new name)")
    if out.is_dir():
        if any(out.iterdir()):
            raise ConfigError(
                f"--out {out} is not empty; give a new folder (an export never overwrites one)"
            )
    elif out.exists():
        raise ConfigError(f"--out {out} is a file; give a new folder for the export")
    runs.make_dir(out.parent)
    runs.check_writable(out.parent)


def _check_input(model: VAE, part: Part, standardized: bool) -> torch.Tensor:
    """Fixed inputs in the part's domain: data-like rows for the encoder, prior draws for z."""
    g = torch.Generator().manual_seed(0)
    if part.name == "decoder":
        return model.prior.rsample(_CHECK_ROWS, g, device=torch.device("cpu"), dtype=torch.float32)
    shape = (_CHECK_ROWS, part.input.width)
    return torch.randn(shape, generator=g) if standardized else torch.rand(shape, generator=g)


def _max_error(got: list, want: tuple[torch.Tensor, ...]) -> float:
    return max(float((torch.as_tensor(a) - b).abs().max()) for a, b in zip(got, want, strict=True))


def _run_onnx(path: Path, part: Part, x: torch.Tensor) -> tuple[list, str] | None:
    """The ONNX file's outputs for x in onnxruntime (None when onnxruntime is not installed)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {part.input.name: x.numpy()})
    return list(got), f"onnxruntime {onnxruntime.__version__}"


def _run_program(path: Path, part: Part, x: torch.Tensor) -> tuple[list, str]:
    """The saved program's outputs for x (the file was written by this process, just now)."""
    program = torch.export.load(str(path))
    with torch.no_grad():
        got = program.module()(x)
    return list(got), f"torch {torch.__version__}"


def _write_part(model: VAE, part: Part, format: str, folder: Path, standardized: bool) -> dict:
    """Write one part into ``folder``, run it back, and describe it for export.json."""
    path = folder / f"{part.name}{SUFFIX[format]}"
    writer: Callable[[Part, Path], None]
    writer = exportable.write_onnx if format == "onnx" else exportable.write_program
    writer(part, path)
    x = _check_input(model, part, standardized)
    with torch.no_grad():
        want = part.module(x)
    ran = (_run_onnx if format == "onnx" else _run_program)(path, part, x)
    check = None
    if ran is not None:
        got, runtime = ran
        check = {"runtime": runtime, "rows": _CHECK_ROWS, "max_abs_error": _max_error(got, want)}
    return {
        "file": path.name,
        "format": format,
        "opset": exportable.ONNX_OPSET if format == "onnx" else None,
        **part.describe(),
        "check": check,
    }


def _description(run_dir: Path, cfg: dict, format: str, parts: dict) -> dict:
    weights = runs.read_run_bytes(run_dir, runs.MODEL)  # checked against the manifest
    return {
        "aevb_version": __version__,
        "torch_version": torch.__version__,
        "format": format,
        "opset": exportable.ONNX_OPSET if format == "onnx" else None,
        "run": {
            "path": str(run_dir.resolve()),
            "format_version": cfg["format_version"],
            "written_by": cfg.get("aevb_version"),
            "weights": runs.MODEL,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "algorithm": cfg["train"].get("algorithm", "aevb"),
        },
        "model": cfg["model"],
        "standardize": cfg["data"].get("standardize"),
        "parts": parts,
    }


def _publish(tmp: Path, out: Path) -> None:
    """Make the finished export visible under ``out`` in one rename."""
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if out.is_dir():
        out.rmdir()  # empty (checked); a folder made since then makes the rename fail, not clobber
    os.rename(tmp, out)
    with contextlib.suppress(OSError):  # make the rename durable where the file system can
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export(
    run_dir: str | Path, format: str = "onnx", part: str = "both", *, out: str | Path
) -> Export:
    """Write a run's encoder and/or decoder (``part``) to the new folder ``out``.

    ``format`` "onnx" writes ``encoder.onnx``/``decoder.onnx`` (opset
    :data:`aevb.exportable.ONNX_OPSET`; needs ``pip install aevb[onnx]``), "torch-export"
    ``encoder.pt2``/``decoder.pt2`` (``torch.export.save``). Every graph takes a float32
    (batch, width) input with a symbolic batch dimension; export.json beside them names inputs
    and outputs, their shapes and meaning, the run and its model. Raises ConfigError for an
    unknown format or part, a missing onnx extra, a non-empty ``out`` or an MCEM run's encoder;
    RunError when the run fails verification (damaged or altered files).
    """
    run_dir, out = Path(run_dir), Path(out)
    names = _check_choices(format, part)
    if format == "onnx":
        _require_onnx()
    runs.verify_run(run_dir)  # every file against the manifest, as 'aevb verify'
    cfg = runs.read_config(run_dir)
    _check_trained(run_dir, cfg, names)
    _check_out(out)
    model = load(run_dir, device="cpu").float()
    standardized = bool(cfg["data"].get("standardize"))
    graphs = {
        "encoder": lambda: exportable.encoder_part(model, standardized),
        "decoder": lambda: exportable.decoder_part(model),
    }
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()  # not mkdtemp: the folder becomes ``out``, so it keeps the umask's permissions
    try:
        parts = {n: _write_part(model, graphs[n](), format, tmp, standardized) for n in names}
        description = _description(run_dir, cfg, format, parts)
        (tmp / EXPORT_JSON).write_bytes(runs.json_bytes(description))
        _publish(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    files = {n: out / parts[n]["file"] for n in names}
    return Export(out, files, description)

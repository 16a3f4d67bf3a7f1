"""Run directories: crash-safe writes, a checksummed manifest, format versions, metrics.jsonl.

A run directory holds:

- ``config.json``: model, training and data settings (everything needed to rebuild and continue);
- ``model.safetensors``: the trained weights, for ``aevb.load``;
- ``training_state.safetensors``: weights, optimizer state and RNG state of the last checkpoint
  together in one file, with counters in its JSON metadata;
- ``metrics.jsonl``: one JSON object per evaluation point;
- ``figures/``: PNG pictures;
- ``manifest.json`` (format 2): the size and sha256 of every file above, and of the part of
  ``metrics.jsonl`` that belongs to the last checkpoint.

Nothing is ever unpickled: tensors are safetensors, everything else is JSON; reading a run never
executes code from it.

**Crash safety.** Every change to a run is one :func:`commit`, a small journal:

1. each new file is written in full beside its final name (``.NAME.pending``) and flushed to disk;
2. ``manifest.json`` naming the new sizes and checksums replaces the old one (an atomic rename):
   this is the moment the change happens;
3. each pending file is renamed over its final name.

A process killed before step 2 leaves the old manifest and the old files, which still agree (the
stray pending files are ignored and later removed); killed after it, the manifest names the new
contents, which are either already in place or still in their pending files: readers take the
pending file (:func:`read_run_bytes`) and ``--resume`` completes the renames (:func:`recover`).
So at every instant a run directory reads as one complete checkpoint.

**Integrity.** Every read of a format-2 run checks the file against the manifest: a truncated or
altered file is one :class:`~aevb.errors.RunError` naming the file, never silently wrong numbers.
The manifest carries its own checksum, so damage to it is named too.

**Formats.** ``FORMAT_VERSION`` is the format this release writes; it reads every format in
``READABLE_FORMATS``. Format 1 (runs written before the manifest existed, by aevb 0.1.x: the
same files without ``manifest.json``) loads as it is and is converted to format 2 when it is
resumed. A run of a newer or unknown format is refused with one line saying which formats this
release reads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import ConfigError, RunError

FORMAT_VERSION = 2
"""The run format this release writes (1: before the manifest, written by aevb 0.1.x; 2: with
manifest.json)."""
READABLE_FORMATS = (1, 2)
CONFIG = "config.json"
MODEL = "model.safetensors"
STATE = "training_state.safetensors"
METRICS = "metrics.jsonl"
FIGURES = "figures"
MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots"  # --snapshots: the model at chosen training-sample counts

_PENDING = ".pending"
_PROBE = ".write-test"
_LEFTOVER = re.compile(r"^\..+\.(pending|tmp)$")
"""Names of files a killed writer can leave behind: ``.NAME.pending`` and ``.NAME.XXXX.tmp``."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _failpoint(where: str) -> None:
    """A named point of the commit protocol; the crash tests replace this to kill the process."""


# --------------------------------------------------------------------------- low-level writes


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the file system supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write to a temporary file beside ``path``, flush to disk, then rename over it.

    ``sync_dir`` also flushes the directory, making the rename itself durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    """The JSON text aevb writes (indented, sorted keys, final newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_error(path: str | Path, e: OSError, run_dir: Path) -> RunError:
    """The one line for a failed write: what, why, that nothing was lost, how to go on."""
    why = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (disk quota exceeded)",
        errno.EROFS: "make the location writable",
        errno.EACCES: "fix the permissions",
        errno.EPERM: "fix the permissions",
    }.get(e.errno or 0, "fix the cause")
    if not (run_dir / MANIFEST).exists() and not (run_dir / CONFIG).exists():
        return RunError(f"{path}: cannot write ({why}); {hint}, then start the run again")
    return RunError(
        f"{path}: cannot write ({why}); the run's last complete checkpoint in {run_dir} is "
        f"intact: {hint}, then continue it with 'aevb train --resume {run_dir}'"
    )


# --------------------------------------------------------------------------- tensors


def owned_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a detached copy of it when it is a view into a larger buffer.

    safetensors refuses tensors that share memory, and the fast engine keeps the parameters and
    the optimizer state as views into flat buffers (which later steps also change in place).
    """
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return t.detach().clone()
    return t


def tensors_bytes(tensors: dict[str, torch.Tensor], meta: dict | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (made contiguous, moved to CPU), JSON ``meta`` inside."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(data, metadata={"aevb": json.dumps(meta or {}, sort_keys=True)})


def parse_tensors(raw: bytes, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and aevb metadata from safetensors bytes; RunError naming ``path`` if damaged."""
    try:
        tensors = st_load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        md = header.get("__metadata__") or {}
        meta = json.loads(md.get("aevb", "{}"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except Exception as e:  # the parser's errors vary by damage; all mean "not our file"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(f"{path}: damaged or not a safetensors file ({msg})") from None
    return tensors, meta


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None
) -> None:
    """Save tensors atomically as safetensors, JSON in metadata.

    Into a run directory (one with a ``manifest.json``) the file is written by :func:`commit`,
    so the manifest stays in step with it.
    """
    path = Path(path)
    data = tensors_bytes(tensors, meta)
    if (path.parent / MANIFEST).is_file():
        commit(path.parent, {path.name: data})
    else:
        atomic_write_bytes(path, data)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors file written by :func:`save_tensors`; RunError if missing or damaged.

    This reads the file as it is; :func:`load_run_tensors` also checks it against the manifest.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: missing; the run directory is incomplete")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror})") from None
    return parse_tensors(raw, path)


# --------------------------------------------------------------------------- the manifest


def _check_name(name: str) -> str:
    """A file name inside a run: relative, no '..', no hidden parts (so never outside the run)."""
    p = PurePosixPath(name)
    if (
        not name
        or p.is_absolute()
        or "\\" in name
        or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
        or str(p) != name
    ):
        raise ValueError(f"bad file name {name!r}")
    return name


def snapshot_name(samples: int) -> str:
    """The file, inside a run, of its model as it was after ``samples`` training samples."""
    return f"{SNAPSHOTS}/model-{samples}.safetensors"


def snapshots(run_dir: str | Path) -> list[int]:
    """The training-sample counts a run kept its model at (``--snapshots``), ascending."""
    manifest = read_manifest(run_dir) or {"files": {}}
    pat = re.compile(rf"{SNAPSHOTS}/model-(\d+)\.safetensors")
    return sorted(int(m[1]) for name in manifest["files"] if (m := pat.fullmatch(name)))


def _pending(run_dir: Path, name: str) -> Path:
    p = run_dir / name
    return p.with_name(f".{p.name}{_PENDING}")


def _manifest_checksum(m: dict) -> str:
    body = {k: v for k, v in m.items() if k != "checksum"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _check_entry(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("bytes"), int)
        and e["bytes"] >= 0
        and isinstance(e.get("sha256"), str)
        and bool(_SHA256.match(e["sha256"]))
    )


def _format_error(path: Path, version: Any) -> RunError:
    known = f"{READABLE_FORMATS[0]} to {READABLE_FORMATS[-1]}"
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return RunError(
            f"{path}: run format {version} was written by a newer aevb; this aevb reads run "
            f"formats {known}: upgrade aevb (pip install -U aevb) to use this run"
        )
    return RunError(
        f"{path}: unknown run format {version!r}; this aevb reads run formats {known} "
        "(is this a run directory written by 'aevb train'?)"
    )


def read_manifest(run_dir: str | Path) -> dict | None:
    """The run's manifest, checked (its own checksum, format, entries); None for a format-1 run."""
    path = Path(run_dir) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror})") from None
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RunError(
            f"{path}: damaged (not valid JSON); the run's files cannot be checked"
        ) from None
    if not isinstance(m, dict):
        raise RunError(f"{path}: damaged (not a JSON object)")
    version = m.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # format 1 has no manifest
        if m.get("checksum") != _manifest_checksum(m):  # a flipped digit reads as a version
            raise RunError(
                f"{path}: damaged, or of a run format this aevb does not read ({version!r}; it "
                f"reads {READABLE_FORMATS[0]} to {READABLE_FORMATS[-1]})"
            )
        raise _format_error(path, version)
    files = m.get("files")
    # aevb writes exactly this text, with a checksum of its content: any other byte is damage
    if raw != json_bytes(m) or m.get("checksum") != _manifest_checksum(m):
        raise RunError(f"{path}: damaged or altered (not the text aevb wrote)")
    if not isinstance(files, dict):
        raise RunError(f"{path}: damaged or altered (its checksum does not match its content)")
    try:
        for name, entry in files.items():
            _check_name(name)
            if not _check_entry(entry):
                raise ValueError(name)
        if not _check_entry(m.get("metrics")):
            raise ValueError(METRICS)
    except ValueError as e:
        raise RunError(f"{path}: damaged (bad entry {e})") from None
    return m


def _read_if_matches(path: Path, entry: dict) -> bytes | None:
    try:
        if path.stat().st_size != entry["bytes"]:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if _sha256(data) == entry["sha256"] else None


def read_run_bytes(run_dir: str | Path, name: str, manifest: dict | None = None) -> bytes:
    """A run file's content, checked against the manifest (format 2) or as it is (format 1).

    Read-only: where an interrupted commit left the new content in its pending file, that is
    what is read. A missing, truncated or altered file is a RunError naming it.
    """
    run_dir = Path(run_dir)
    path = run_dir / name
    if manifest is None:
        manifest = read_manifest(run_dir)
    if manifest is None:  # format 1: no checksums to compare with
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise RunError(f"{path}: missing; the run directory is incomplete") from None
        except OSError as e:
            raise RunError(f"{path}: cannot read ({e.strerror})") from None
    entry = manifest["files"].get(name)
    if entry is None:
        raise RunError(
            f"{path}: not written yet (the run has no checkpoint; continue it with "
            f"'aevb train --resume {run_dir}')"
            if name in (MODEL, STATE)
            else f"{path}: not part of this run ({MANIFEST} does not list it)"
        )
    for candidate in (path, _pending(run_dir, name)):
        data = _read_if_matches(candidate, entry)
        if data is not None:
            return data
    if not path.exists():
        raise RunError(f"{path}: missing ({MANIFEST} lists it); the run directory is incomplete")
    size = path.stat().st_size
    what = (
        f"truncated ({size:,} of {entry['bytes']:,} bytes)"
        if size < entry["bytes"]
        else "altered (its sha256 differs from the one in manifest.json)"
    )
    raise RunError(
        f"{path}: {what} since aevb wrote it; restore the file from a copy, or train the run again"
    )


def commit(run_dir: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (names relative to the run) into the run as one crash-safe change.

    See the module's docstring for the protocol. A change that includes the training state (a
    checkpoint) also records the current content of ``metrics.jsonl``, which then holds exactly
    the records up to that checkpoint; other changes keep the record of the last checkpoint. A
    failed write (full disk, read-only location) removes what this call wrote, leaves the run as
    it was, and raises a RunError saying so.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is not None:
        _roll_forward(run_dir, manifest)  # a pending file may hold the committed content
    entries = dict(manifest["files"]) if manifest else {}
    written: list[Path] = []
    target = run_dir
    try:
        for name, data in files.items():
            _check_name(name)
            target = run_dir / name
            pend = _pending(run_dir, name)
            atomic_write_bytes(pend, data, sync_dir=False)
            written.append(pend)
            entries[name] = {"bytes": len(data), "sha256": _sha256(data)}
        for d in {p.parent for p in written}:
            _fsync_dir(d)  # the pending files are on disk before the manifest names them
        _failpoint("pending-written")
        target = run_dir / MANIFEST
        if manifest is None or STATE in files:
            try:
                metrics = (run_dir / METRICS).read_bytes()
            except FileNotFoundError:
                metrics = b""
            metrics_entry = {"bytes": len(metrics), "sha256": _sha256(metrics)}
        else:
            metrics_entry = manifest["metrics"]
        new = {"format_version": FORMAT_VERSION, "files": entries, "metrics": metrics_entry}
        new["checksum"] = _manifest_checksum(new)
        atomic_write_bytes(run_dir / MANIFEST, json_bytes(new))  # the commit point
    except OSError as e:
        for p in written:
            p.unlink(missing_ok=True)
        raise _write_error(target, e, run_dir) from None
    _failpoint("committed")
    try:
        for name in files:
            os.replace(_pending(run_dir, name), run_dir / name)
            _failpoint(f"renamed:{name}")
    except OSError as e:  # the change is committed; readers take the pending files
        raise _write_error(run_dir / name, e, run_dir) from None


def write_files(run_dir: str | Path, files: dict[str, bytes]) -> None:
    """:func:`commit` into a format-2 run; plain atomic writes into a format-1 one."""
    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).is_file():
        commit(run_dir, files)
        return
    for name, data in files.items():
        try:
            atomic_write_bytes(run_dir / _check_name(name), data)
        except OSError as e:
            raise _write_error(run_dir / name, e, run_dir) from None


def _roll_forward(run_dir: Path, manifest: dict) -> None:
    """Rename into place each pending file that holds the content the manifest names."""
    for name, entry in manifest["files"].items():
        final, pend = run_dir / name, _pending(run_dir, name)
        if not pend.exists() or _read_if_matches(final, entry) is not None:
            continue
        if _read_if_matches(pend, entry) is not None:
            try:
                os.replace(pend, final)
            except OSError as e:
                raise _write_error(final, e, run_dir) from None


def _leftovers(run_dir: Path) -> list[Path]:
    out = []
    for d in (run_dir, run_dir / FIGURES, run_dir / SNAPSHOTS):
        if d.is_dir():
            out += [p for p in d.iterdir() if _LEFTOVER.match(p.name) or p.name == _PROBE]
    return out


def recover(run_dir: str | Path) -> None:
    """Finish a commit a killed process left half done, and remove what it left behind.

    Pending files the manifest names are renamed into place; other pending and temporary files
    (of a commit that never reached its manifest) are deleted. Needs write access.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is not None:
        _roll_forward(run_dir, manifest)
    try:
        for p in _leftovers(run_dir):
            p.unlink(missing_ok=True)
    except OSError as e:
        raise _write_error(p, e, run_dir) from None
    _fsync_dir(run_dir)


def is_leftover(path: Path) -> bool:
    """Whether ``path`` is a temporary file an interrupted aevb write can leave behind."""
    return bool(_LEFTOVER.match(path.name)) or path.name == _PROBE


# --------------------------------------------------------------------------- reading a run


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: missing; is this a run directory written by 'aevb train'?")
    try:
        return _parse_json_object(path.read_bytes(), path)
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror})") from None


def _parse_json_object(raw: bytes, path: Path) -> dict:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object")
    return obj


def run_format(run_dir: str | Path) -> int:
    """The format of a run directory (1 or 2), checked as :func:`read_config` checks it."""
    return int(read_config(run_dir)["format_version"])


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json, checked against the manifest and for a format this release reads."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: not a directory; give a run directory written by 'aevb train'")
    manifest = read_manifest(run_dir)
    path = run_dir / CONFIG
    if manifest is None:
        if not path.exists() and not (run_dir / METRICS).exists():
            raise RunError(
                f"{run_dir}: holds no run (no {CONFIG}); if an 'aevb train --out {run_dir}' was "
                "stopped before it began training, run that command again"
            )
        cfg = read_json(path)
        version = cfg.get("format_version")
        if version == FORMAT_VERSION:
            raise RunError(
                f"{run_dir / MANIFEST}: missing; a format-{version} run keeps the checksums of "
                "its files there, so the run cannot be checked (restore the file)"
            )
        if version != 1:
            raise _format_error(path, version)
    else:
        cfg = _parse_json_object(read_run_bytes(run_dir, CONFIG, manifest), path)
        if cfg.get("format_version") != manifest["format_version"]:
            raise _format_error(path, cfg.get("format_version"))
    for key in ("model", "train", "data"):
        if not isinstance(cfg.get(key), dict):
            raise RunError(f"{path}: missing the {key!r} section")
    return cfg


def has_file(run_dir: str | Path, name: str) -> bool:
    """Whether the run holds ``name`` (listed in its manifest; format 1: present on disk)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        return (run_dir / name).exists()
    return name in manifest["files"]


def load_run_tensors(run_dir: str | Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A safetensors file of the run, checked against the manifest before it is parsed."""
    run_dir = Path(run_dir)
    return parse_tensors(read_run_bytes(run_dir, name), run_dir / name)


def verify_run(run_dir: str | Path) -> dict:
    """Check every file of a run against its manifest; RunError at the first problem.

    Returns a summary: the format and the files checked. A format-1 run (no checksums) is
    checked for what it can be: its config and safetensors files parse.
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        names = [n for n in (MODEL, STATE) if (run_dir / n).exists()]
        for n in names:
            load_tensors(run_dir / n)
        return {"format_version": 1, "files": [CONFIG, *names], "checksums": False}
    for name in manifest["files"]:
        read_run_bytes(run_dir, name, manifest)
    _metrics_prefix(run_dir, manifest)
    return {
        "format_version": cfg["format_version"],
        "files": sorted(manifest["files"]) + [METRICS],
        "checksums": True,
    }


# --------------------------------------------------------------------------- metrics.jsonl


def reported_split(
    record: dict, key: str, splits: Sequence[str] = ("test", "valid", "train")
) -> str | None:
    """The split whose ``key`` a report shows from an evaluation record: the first of ``splits``
    that the record has (test, else validation: a run with --no-eval-test, else train)."""
    return next((s for s in splits if f"{s}_{key}" in record), None)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of metrics.jsonl (an incomplete last line, from a crash, is ignored)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def append_metrics(run_dir: str | Path, record: dict) -> None:
    run_dir = Path(run_dir)
    try:
        with open(run_dir / METRICS, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _write_error(run_dir / METRICS, e, run_dir) from None


def _metrics_prefix(run_dir: Path, manifest: dict) -> bytes:
    """The part of metrics.jsonl the last commit recorded, checked against the manifest."""
    path = run_dir / METRICS
    entry = manifest["metrics"]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    head = raw[: entry["bytes"]]
    if len(head) < entry["bytes"] or _sha256(head) != entry["sha256"]:
        raise RunError(
            f"{path}: truncated or altered since aevb wrote it (its first {entry['bytes']:,} "
            f"bytes do not match {MANIFEST}); restore the file, or train the run again"
        )
    return head


def truncate_metrics(run_dir: str | Path, samples_seen: int) -> None:
    """Keep only the records up to ``samples_seen`` (on resume from a checkpoint).

    For a format-2 run the file is cut to the part the manifest recorded with the last
    checkpoint (checked against its checksum), which drops whatever a killed process appended
    after it; that part holds exactly the records up to the checkpoint.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    path = run_dir / METRICS
    if manifest is not None:
        data = _metrics_prefix(run_dir, manifest)
        if not path.exists() or path.stat().st_size != len(data):
            try:
                atomic_write_bytes(path, data)
            except OSError as e:
                raise _write_error(path, e, run_dir) from None
        return
    if path.exists():
        raw = path.read_bytes()
    else:
        return
    keep = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("samples_seen", 0) <= samples_seen:
            keep.append(json.dumps(rec, sort_keys=True) + "\n")
    data = "".join(keep).encode()
    if not path.exists() or data != path.read_bytes():
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise _write_error(path, e, run_dir) from None


# --------------------------------------------------------------------------- output locations


def convert(run_dir: str | Path, cfg: dict) -> dict:
    """Rewrite a format-1 run as format 2 (adds the manifest); returns the updated config."""
    run_dir = Path(run_dir)
    cfg = dict(cfg, format_version=FORMAT_VERSION)
    files = {CONFIG: json_bytes(cfg)}
    for name in (STATE, MODEL):
        if (run_dir / name).exists():
            files[name] = (run_dir / name).read_bytes()
    fig_dir = run_dir / FIGURES
    if fig_dir.is_dir():
        for p in sorted(fig_dir.iterdir()):
            if p.is_file() and not is_leftover(p):
                files[f"{FIGURES}/{p.name}"] = p.read_bytes()
    commit(run_dir, files)
    return cfg


def make_dir(directory: str | Path, what: str = "--out") -> Path:
    """Create ``directory`` and its parents if missing; a ConfigError naming it if that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{what} {directory} cannot be created ({e.strerror}); choose another path"
        ) from None
    return directory


def check_writable(directory: str | Path, what: str = "--out") -> None:
    """Create, flush and remove a probe file: a ConfigError now rather than a failure later."""
    directory = Path(directory)
    probe = directory / _PROBE
    try:
        with open(probe, "wb") as f:
            f.write(b"aevb")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise ConfigError(
            f"{what} {directory} is not writable ({e.strerror}); choose another location"
        ) from None


def check_space(directory: str | Path, needed: int, what: str = "--out") -> None:
    """ConfigError when the file system of ``directory`` has less than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed:
        raise ConfigError(
            f"{what} {directory}: only {free / 2**20:,.1f} MiB free, and this run needs about "
            f"{needed / 2**20:,.1f} MiB for its checkpoints; free some space or choose another "
            "location"
        )

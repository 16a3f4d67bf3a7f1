"""Where dataset files live, and fetching missing ones from public mirrors, verified by sha256.

The data directory is ``--data-dir``, else ``$AEVB_DATA_DIR``, else a per-user cache
(``$XDG_CACHE_HOME/aevb`` or ``~/.cache/aevb``). It holds one folder per dataset (``mnist/``,
``binarized_mnist/``, ``frey/``). A missing file is downloaded (unless ``AEVB_OFFLINE=1``) into a
temporary file beside its destination, checked against its sha256, and only then renamed into
place, so the cache never holds a half-written file. Mirrors can be overridden per dataset with
``AEVB_MIRROR_<DATASET>`` (for example ``AEVB_MIRROR_MNIST=http://host/mnist/``), which is how the
tests point downloads at a local server.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError

OFFLINE_ENV = "AEVB_OFFLINE"
TIMEOUT_S = 30.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file a dataset needs: its name on the mirrors and its expected content.

    ``sha256`` and ``size`` describe the bytes as the mirrors serve them; ``content_sha256`` is the
    digest after gzip decompression (equal to ``sha256`` for files served uncompressed). A local
    copy is accepted in either form (``name`` or, for a gzip file, its decompressed form).
    """

    name: str
    sha256: str
    size: int
    content_sha256: str
    md5: str | None = None


def default_cache_dir() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/aevb`` or ``~/.cache/aevb``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "aevb"


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data directory: the argument, else ``$AEVB_DATA_DIR``, else the per-user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("AEVB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def mirrors(dataset: str, defaults: Sequence[str]) -> list[str]:
    """Base URLs for a dataset: ``$AEVB_MIRROR_<DATASET>`` (comma-separated) or the defaults."""
    env = os.environ.get("AEVB_MIRROR_" + dataset.upper().replace("-", "_"))
    bases = [b.strip() for b in env.split(",") if b.strip()] if env else list(defaults)
    return [b if b.endswith("/") else b + "/" for b in bases]


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _writable(folder: Path) -> bool:
    """True when files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    # A folder with no write permission bits is read-only by intent, even for root.
    return os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)


def download(url: str, dest: Path, rf: RemoteFile, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest``: temp file, size cap, sha256 check, then atomic rename.

    Raises DataError on a checksum mismatch (nothing is left behind) and lets network errors
    (``OSError``, ``urllib.error.URLError``) through for the caller to try the next mirror.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        got = 0
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != rf.size:
                    raise DataError(
                        f"{url}: the server offers {int(length):,} bytes but {rf.name} has "
                        f"{rf.size:,}; the mirror serves a different file (try another mirror)"
                    )
                with tqdm(
                    total=rf.size,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {rf.name}",
                    disable=not progress,
                    leave=False,
                ) as bar:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        got += len(chunk)
                        if got > rf.size:
                            raise DataError(
                                f"{url}: more than the expected {rf.size:,} bytes arrived; "
                                "the mirror serves a different file (try another mirror)"
                            )
                        h.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if got != rf.size or h.hexdigest() != rf.sha256:
            raise DataError(
                f"{url}: downloaded {got:,} bytes with sha256 {h.hexdigest()[:16]}..., expected "
                f"{rf.size:,} bytes with sha256 {rf.sha256[:16]}...; the download is corrupt or "
                "the mirror changed the file (nothing was kept; try again or another mirror)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_missing(
    folder: Path,
    files: Sequence[RemoteFile],
    dataset: str,
    bases: Sequence[str],
    progress: bool = True,
) -> None:
    """Download each of ``files`` into ``folder``, or raise one line saying what to put where.

    Tries each mirror in turn; a checksum mismatch on every mirror is a DataError naming the file.
    """
    if not files:
        return
    names = ", ".join(f.name for f in files)
    where = f"{bases[0]}{files[0].name}" if bases else "the dataset's public mirror"
    fix = f"download {names} (for example from {where}) into {folder}"
    if offline():
        raise DataError(f"{dataset}: {names} missing from {folder} and {OFFLINE_ENV} is set; {fix}")
    if not _writable(folder):
        raise DataError(
            f"{dataset}: {names} missing from {folder}, which is not writable; {fix} "
            "or give a writable --data-dir to download there"
        )
    for rf in files:
        errors: list[str] = []
        for base in bases:
            try:
                download(base + rf.name, folder / rf.name, rf, progress)
                break
            except DataError as e:
                errors.append(str(e))
            except (OSError, urllib.error.URLError, TimeoutError) as e:
                reason = getattr(e, "reason", None) or e
                errors.append(f"{base}{rf.name}: {reason}")
        else:
            raise DataError(
                f"{dataset}: cannot download {rf.name} ({errors[-1] if errors else 'no mirror'}); "
                f"offline? {fix}"
            )


VERIFY_ENV = "AEVB_VERIFY"


def verify_enabled(verify: bool | None = None) -> bool:
    """Checksum and count checks on local files: the argument, else ``AEVB_VERIFY`` (default on)."""
    if verify is not None:
        return verify
    return os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def local_copy(folder: Path, rf: RemoteFile) -> Path | None:
    """The local copy of ``rf`` in ``folder``: as served, or its gzip / decompressed form."""
    alt = rf.name[:-3] if rf.name.endswith(".gz") else rf.name + ".gz"
    for name in (rf.name, alt):
        p = folder / name
        if p.is_file():
            return p
    return None


def check_digest(path: Path, sha: str, rf: RemoteFile) -> None:
    """Compare a file's content digest with the published one; DataError naming the file if not."""
    if sha != rf.content_sha256:
        raise DataError(
            f"{path}: content sha256 {sha[:16]}... does not match the published "
            f"{rf.content_sha256[:16]}...; the file is damaged or a different version: delete it "
            f"to download it again (or set {VERIFY_ENV}=0 to use your own file as it is)"
        )

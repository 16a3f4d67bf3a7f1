"""Run integrity (docs/RELIABILITY.md): every file of a run is in a checksummed manifest, any
damage to any file is named in one line, and nothing read from a run can execute code."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
from fault_injection import FIXTURE_V1, TALLY, copy_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aevb
from aevb import runs
from aevb.cli import main
from aevb.errors import RunError


def test_a_run_directory_has_a_manifest_of_every_file(base_run):
    m = json.loads((base_run / runs.MANIFEST).read_text())
    assert m["format_version"] == runs.FORMAT_VERSION == 2
    on_disk = {
        p.relative_to(base_run).as_posix()
        for p in base_run.rglob("*")
        if p.is_file() and p.name not in (runs.MANIFEST, runs.METRICS)
    }
    assert set(m["files"]) == on_disk
    for name, entry in m["files"].items():
        data = (base_run / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    metrics = (base_run / runs.METRICS).read_bytes()
    assert m["metrics"]["sha256"] == hashlib.sha256(metrics).hexdigest()
    assert json.loads((base_run / runs.CONFIG).read_text())["format_version"] == 2


def _corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    elif kind == "append":
        path.write_bytes(data + b"\0")
    elif kind == "delete":
        path.unlink()


READERS = {
    runs.CONFIG: lambda r: aevb.load(r),
    runs.MODEL: lambda r: aevb.load(r),
    runs.STATE: lambda r: aevb.train(resume=r, progress=False, draw_figures=False),
    runs.METRICS: lambda r: aevb.train(resume=r, progress=False, draw_figures=False),
    runs.MANIFEST: lambda r: aevb.load(r),
    "figures/samples.png": lambda r: runs.verify_run(r),
}


CLI = {
    runs.CONFIG: ["sample", "{r}", "--out", "{t}/s.png"],
    runs.MODEL: ["sample", "{r}", "--out", "{t}/s.png"],
    runs.STATE: ["train", "--resume", "{r}", "--quiet"],
    runs.METRICS: ["train", "--resume", "{r}", "--quiet"],
    runs.MANIFEST: ["evaluate", "{r}"],
    "figures/samples.png": ["verify", "{r}"],
}


KINDS = ("truncate", "empty", "flip", "append", "delete")


DAMAGE = [(n, k) for n in READERS for k in KINDS if (n, k) != (runs.METRICS, "append")]


@pytest.mark.parametrize("name, kind", DAMAGE)
def test_a_damaged_run_file_is_named_in_one_line(base_run, tmp_path, capsys, name, kind):
    run = copy_run(base_run, tmp_path / "run")
    _corrupt(run / name, kind)
    TALLY["files_corrupted"] += 1
    with pytest.raises(RunError) as e:
        READERS[name](run)
    msg = str(e.value)
    assert Path(name).name in msg and "\n" not in msg, msg
    argv = [a.format(r=run, t=tmp_path) for a in CLI[name]]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("aevb: error:") and Path(name).name in err[0]
    assert main(["verify", str(run)]) == 2
    TALLY["files_corrupted_caught"] += 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
@given(data=st.data())
def test_any_change_to_any_run_file_is_caught(base_run, tmp_path_factory, data):
    """Random damage (a changed byte, a cut, an inserted byte) anywhere in any file."""
    names = sorted(json.loads((base_run / runs.MANIFEST).read_text())["files"])
    names += [runs.METRICS, runs.MANIFEST]
    name = data.draw(st.sampled_from(names))
    size = (base_run / name).stat().st_size
    kind = data.draw(st.sampled_from(["byte", "cut", "insert"]))
    at = data.draw(st.integers(0, size - 1 if kind != "insert" else size - 1))
    run = copy_run(base_run, tmp_path_factory.mktemp("fuzz") / "run")
    raw = (run / name).read_bytes()
    if kind == "byte":
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif kind == "cut":
        raw = raw[:at]
    else:
        raw = raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at:]
    (run / name).write_bytes(raw)
    TALLY["files_corrupted"] += 1
    with pytest.raises(RunError) as e:
        runs.verify_run(run)
    assert Path(name).name in str(e.value) and "\n" not in str(e.value)
    TALLY["files_corrupted_caught"] += 1


class _Payload:
    """Unpickling this would create the file ``marker``: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("fmt", [1, 2])
def test_loading_never_executes_code_from_a_file(base_run, tmp_path, fmt):
    run = copy_run(FIXTURE_V1 if fmt == 1 else base_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"w": _Payload(str(marker))})
    for name in (runs.MODEL, runs.STATE):
        (run / name).write_bytes(evil)
    with pytest.raises(RunError, match=runs.MODEL):
        aevb.load(run)
    with pytest.raises(RunError, match=runs.STATE):
        aevb.train(resume=run, progress=False, draw_figures=False)
    assert not marker.exists()
    pickle.loads(evil)  # the payload does work when unpickled
    assert marker.exists()


def test_no_code_path_unpickles():
    """Nothing in the package can execute code from a file: no pickle, torch.load, eval."""
    pattern = re.compile(
        r"pickle\.loads?\(|torch\.load\(|allow_pickle=True|(?<![.\w])(eval|exec)\("
    )
    src = Path(aevb.__file__).parent
    hits = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []

"""Run tracking (aevb.tracking): TensorBoard event files written without TensorBoard, read back
by our reader and by TensorBoard's own, with their CRC32C checksums."""

from __future__ import annotations

import math

import pytest

from aevb import tracking


def test_crc32c_known_value():
    assert tracking.crc32c(b"123456789") == 0xE3069283


def test_tensorboard_events_hold_the_metrics(tmp_path, small_run):
    run = small_run(tmp_path / "tb", budget=2000, tensorboard=True)
    (events_file,) = (tmp_path / "tb" / tracking.TENSORBOARD_DIR).glob("events.out.tfevents.*")
    events = tracking.read_events(events_file)
    assert events[0]["file_version"] == "brain.Event:2"
    scal = {e["step"]: e["scalars"] for e in events if e["scalars"]}
    assert sorted(scal) == [r["samples_seen"] for r in run.metrics]
    for r in run.metrics:
        s = scal[r["samples_seen"]]
        assert s["bound/test"] == pytest.approx(r["test_bound"], rel=1e-6)
        assert s["train/learning_rate"] == pytest.approx(0.02)
    pairs = zip(run.metrics[:-1], run.metrics[1:], strict=True)
    timed = [b for a, b in pairs if b["seconds"] > a["seconds"]]
    assert timed and all("train/samples_per_second" in scal[r["samples_seen"]] for r in timed)
    imgs = [e["images"] for e in events if e["images"]]
    assert {"samples", "reconstructions"} <= {k for i in imgs for k in i}
    assert all(v["png"][:8] == b"\x89PNG\r\n\x1a\n" for i in imgs for v in i.values())
    # TensorBoard's own reader agrees, where it is installed
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = ea_mod.EventAccumulator(str(events_file.parent))
    ea.Reload()
    got = [(e.step, e.value) for e in ea.Scalars("bound/test")]
    want = [(r["samples_seen"], r["test_bound"]) for r in run.metrics]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(got, want, strict=True))
    assert "samples" in ea.Tags()["images"]


def test_damaged_event_file_is_detected(tmp_path):
    w = tracking.EventWriter(tmp_path)
    w.add_scalars(5, {"a": 1.5})
    data = bytearray(w.path.read_bytes())
    assert tracking.read_events(w.path)[1]["scalars"] == {"a": 1.5}
    data[-6] ^= 0xFF
    w.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        tracking.read_events(w.path)

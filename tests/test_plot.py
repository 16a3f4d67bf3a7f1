"""``aevb plot``: learning curves of several runs from their metrics.jsonl alone."""

from __future__ import annotations

import pytest
from helpers import error_lines

import aevb
from aevb import figures, runs
from aevb.cli import main
from aevb.errors import ConfigError, RunError


def test_plot_several_runs_from_metrics_alone(tmp_path, overfit_run, capsys):
    only = tmp_path / "copy"
    only.mkdir()
    (only / runs.METRICS).write_bytes((overfit_run / runs.METRICS).read_bytes())
    out = tmp_path / "curves.png"
    assert main(["plot", str(overfit_run), str(only), "--out", str(out), "--labels", "a,b"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2
    (line,) = error_lines(capsys)
    assert "metrics.jsonl" in line
    with pytest.raises(ConfigError, match="labels"):
        aevb.plot([overfit_run], out, labels=["a", "b"])
    # --since keeps the end of the runs; past the last evaluation it is one clear error
    last = runs.read_metrics(overfit_run)[-1]["samples_seen"]
    zoom = tmp_path / "zoom.png"
    assert main(["plot", str(overfit_run), "--out", str(zoom), "--since", str(last // 2)]) == 0
    assert zoom.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and zoom.read_bytes() != out.read_bytes()
    capsys.readouterr()
    assert main(["plot", str(overfit_run), "--out", str(zoom), "--since", str(last + 1)]) == 2
    (line,) = error_lines(capsys)
    assert "no evaluation at or after" in line and "smaller --since" in line
    with pytest.raises(RunError):
        aevb.load(only, which="best")


@pytest.mark.parametrize(
    ("metric", "label"),
    [("bound", "lower bound"), ("iwae_bound", "importance-weighted bound")],
)
def test_the_axis_names_the_metric_drawn(tmp_path, monkeypatch, metric, label):
    drawn = {}
    monkeypatch.setattr(figures, "_save_figure", lambda fig, path, **kw: drawn.update(fig=fig))
    recs = [
        {"samples_seen": n, "train_bound": -n / 1e3, "train_iwae_bound": -n / 2e3} for n in (1, 10)
    ]
    recs = [{**r, "valid_bound": r["train_bound"] - 1, "valid_iwae_bound": -1.0} for r in recs]
    figures.plot_curves([("run", recs)], tmp_path / "c.png", metric=metric)
    ax = drawn["fig"].axes[0]
    assert ax.get_ylabel().startswith(label)
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()}
    assert lines["run valid"] == [r[f"valid_{metric}"] for r in recs]
    figures._pyplot().close(drawn["fig"])

"""MLflow tracking (``aevb train --mlflow``): what a run logs, read back by MLflow's client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import SMALL_RUN, error_lines

import aevb
from aevb import mlflow_tracking, runs
from aevb.callbacks import Callback, MLflow
from aevb.cli import build_parser, main
from aevb.errors import ConfigError

try:
    import mlflow
    from mlflow.tracking import MlflowClient
except ImportError:  # the tests that read MLflow back skip; the one without it runs
    mlflow = None

needs_mlflow = pytest.mark.skipif(mlflow is None, reason="needs mlflow-skinny (aevb[mlflow])")


class Interrupt(Callback):
    """Ctrl-C at the evaluation at ``at`` samples: logged, but not checkpointed."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_evaluation(self, trainer, record):
        if record["samples_seen"] == self.at:
            raise KeyboardInterrupt


def _noted(run_dir: Path) -> dict:
    (entry,) = json.loads((run_dir / mlflow_tracking.RECORD).read_text()).values()
    return entry


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, MlflowClient, str]:
    """A run logged to MLflow, killed after its evaluation at 600 samples (before that
    evaluation's checkpoint), then resumed with a longer budget: (run dir, client, run id)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    out, uri = tmp / "run", (tmp / "store").as_uri()
    opts = {**SMALL_RUN, "draw_figures": True, "eval_size": 300}
    with pytest.raises(KeyboardInterrupt):
        aevb.train("digits", out, mlflow=uri, callbacks=[Interrupt(600)], **opts)
    first = _noted(out)
    client = MlflowClient(first["tracking_uri"])
    assert client.get_run(first["run_id"]).info.status == "KILLED"
    aevb.train(resume=out, budget=3000, progress=False)
    assert _noted(out) == first  # the same MLflow run continued
    return out, client, first["run_id"]


@needs_mlflow
def test_parameters_are_the_run_config(tracked):
    out, client, run_id = tracked
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    cfg = runs.read_config(out)
    params = run.data.params
    assert cfg["train"]["budget"] == 3000  # the resume's
    assert params == mlflow_tracking.flat_params(cfg) | {"train.budget": "2000"}
    for section in ("model", "train", "data"):
        for key, value in cfg[section].items():
            if not isinstance(value, dict) and key != "budget":
                got = params[f"{section}.{key}"]
                assert (got if isinstance(value, str) else json.loads(got)) == value, key
    assert params["model.latent_dim"] == "3" and params["train.lr"] == "0.02"
    assert params["train.budget"] == "2000"  # as first logged; MLflow keeps parameters
    assert run.data.tags["resume.train.budget"] == "3000"


@needs_mlflow
def test_metrics_follow_metrics_jsonl_once_per_evaluation(tracked):
    out, client, run_id = tracked
    records = runs.read_metrics(out)
    steps = [r["samples_seen"] for r in records]
    assert 600 in steps and steps[-1] == 3000
    history = client.get_metric_history(run_id, "test_bound")
    # the evaluation at 600 samples was logged before the kill and again after the resume: once
    assert [(m.step, m.value) for m in history] == [
        (r["samples_seen"], r["test_bound"]) for r in records
    ]
    numbers = {k for r in records for k, v in r.items() if isinstance(v, float | int)}
    assert set(client.get_run(run_id).data.metrics) == numbers - {"samples_seen"}
    for key in ("train_bound", "train_bound_se", "test_bound_se", "seconds"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == steps, key


@needs_mlflow
def test_figures_and_model_files_are_artifacts(tracked, tmp_path):
    out, client, run_id = tracked
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "figures"} <= names
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (out / "figures").glob("*.png")}
    assert "figures/curves.png" in figures
    for name in ("model.safetensors", "metrics.jsonl", "figures/curves.png"):
        got = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=name,
            dst_path=str(tmp_path),
            tracking_uri=client.tracking_uri,
        )
        assert Path(got).read_bytes() == (out / name).read_bytes(), name


@needs_mlflow
def test_command_line_flag_alone_logs_to_mlruns_here(tmp_path, monkeypatch, capsys):
    args = build_parser().parse_args(["train", "--mlflow", "--out", "r"])
    assert args.mlflow == "file:./mlruns"
    assert (
        build_parser().parse_args(["train", "--mlflow", "sqlite:///x.db"]).mlflow
        == "sqlite:///x.db"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--out", "r", "--latent-dim", "2", "--hidden", "16", "--budget", "500"]
    assert main([*argv, "--lr", "0.02", "--eval-size", "200", "--quiet", "--mlflow"]) == 0
    noted = _noted(tmp_path / "r")
    assert noted["tracking_uri"] == (tmp_path / "mlruns").resolve().as_uri()
    client = MlflowClient(noted["tracking_uri"])
    run = client.get_run(noted["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "aevb"
    steps = [m.step for m in client.get_metric_history(noted["run_id"], "test_bound")]
    assert steps == [r["samples_seen"] for r in runs.read_metrics(tmp_path / "r")]


@needs_mlflow
def test_callback_logs_a_run_kept_in_memory(tmp_path):
    uri = (tmp_path / "store").as_uri()
    cb = MLflow(uri, experiment="mine", run_name="in-memory")
    run = aevb.train("digits", callbacks=[cb], **{**SMALL_RUN, "budget": 500, "eval_size": 200})
    client = MlflowClient(uri)
    got = client.get_run(cb.tracker.run_id)
    assert got.info.run_name == "in-memory" and got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "mine"
    assert got.data.params["model.latent_dim"] == "3" and "train.budget" in got.data.params
    history = client.get_metric_history(cb.tracker.run_id, "train_bound")
    assert [(m.step, m.value) for m in history] == [
        (r["samples_seen"], r["train_bound"]) for r in run.metrics
    ]
    assert client.list_artifacts(cb.tracker.run_id) == []  # no run directory, no files
    with pytest.raises(ConfigError, match="give out=RUNDIR"):
        aevb.train("digits", mlflow=uri, **SMALL_RUN)


def test_without_mlflow_it_fails_before_anything_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    argv = ["train", "--out", str(tmp_path / "r"), "--budget", "500", "--quiet"]
    assert main([*argv, "--mlflow", (tmp_path / "store").as_uri()]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("aevb: error:") and "pip install 'aevb[mlflow]'" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "store").exists()
    with pytest.raises(ConfigError, match=r"aevb\[mlflow\]"):
        MLflow()
    with pytest.raises(ConfigError, match="--mlflow must be a tracking URI"):
        aevb.train("digits", tmp_path / "r", mlflow=" ", **SMALL_RUN)

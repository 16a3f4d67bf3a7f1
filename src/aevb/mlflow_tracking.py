"""Experiment tracking with MLflow: ``aevb train --mlflow [URI]``, :class:`aevb.callbacks.MLflow`.

One aevb run is one MLflow run (experiment ``aevb`` unless told otherwise, named after the run
directory), logged by rank 0 alone:

- at the start, the run's parameters: the ``model``, ``train`` and ``data`` sections of
  config.json, flattened (``model.latent_dim``, ``train.lr``, ``train.lr_search.chosen``); strings
  as they are, other values as JSON (``3``, ``0.02``, ``true``, ``null``, ``[28, 28]``);
- at every evaluation, each number of its record (``train_bound``, ``test_bound``, their ``_se``,
  log-likelihoods, ``seconds``, ...) with ``samples_seen`` as the step;
- at the end, ``model.safetensors`` (and ``best_model.safetensors``), ``config.json``,
  ``metrics.jsonl`` and ``figures/*.png`` as artifacts, under the same names as in the run.

The default store, ``file:./mlruns``, is MLflow's local file store (resolved against the working
directory), which works offline with the ``mlflow-skinny`` client alone (``pip install
'aevb[mlflow]'``); a ``sqlite:///...`` store needs the full ``mlflow`` package (SQLAlchemy),
and ``http(s)://`` names a tracking server. MLflow 3 refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE`` is true: aevb sets it (where it is unset) for a ``file:`` URI.

The MLflow run's id is kept in ``RUNDIR/mlflow.json`` (by tracking URI), so ``--resume`` logs to
the same MLflow run, and each step once: an evaluation that a killed process logged after its
last checkpoint, and that the resumed run repeats, keeps its first values (the same ones on CPU,
where a resumed run repeats bit for bit). Values a resume changes (``--budget``) are parameters
already, which MLflow never changes: they are logged as tags (``resume.train.budget``).
``mlflow`` itself is imported only when asked for.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from . import runs
from ._version import __version__
from .errors import ConfigError, RunError

DEFAULT_URI = "file:./mlruns"
"""The tracking store of ``--mlflow`` alone: a local file store in the working directory."""
RECORD = "mlflow.json"
"""The run directory's note of its MLflow runs: tracking URI as given -> resolved URI, run id."""
INSTALL = "pip install 'aevb[mlflow]'"
MODEL_FILES = (runs.MODEL, "best_model.safetensors", runs.CONFIG, runs.METRICS)
"""The run's files logged as artifacts at the end, where they exist (and ``figures/``)."""
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
BATCH = 100  # MLflow's limit on parameters per log_batch


def import_mlflow() -> Any:
    """The ``mlflow`` module; ConfigError naming the extra to install when it is missing."""
    try:
        import mlflow
        import mlflow.tracking  # noqa: F401 - the client, used below
    except ImportError:
        raise ConfigError(f"MLflow tracking needs the MLflow client: {INSTALL}") from None
    return mlflow


def resolve_uri(uri: str) -> str:
    """A local store's URI made absolute (against the working directory); others unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        path = unquote(parsed.path)
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a drive letter)
        path = uri
    else:
        return uri
    return Path(path).expanduser().resolve().as_uri()


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` of the store at ``uri`` (resolved); ConfigError if it does not open."""
    import_mlflow()
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:"):  # MLflow 3 refuses a file store unless this is set
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as e:  # MlflowException, or ImportError of a store's missing driver
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"MLflow tracking store {uri}: {first}") from None


def recorded_runs(run_dir: Path | None) -> dict:
    """The MLflow runs a run directory noted (``mlflow.json``); {} if none or unreadable."""
    if run_dir is None or not (run_dir / RECORD).is_file():
        return {}
    try:
        return runs.read_json(run_dir / RECORD)
    except RunError:
        return {}


def store_uri(uri: str, run_dir: Path | None) -> str:
    """The resolved store of ``uri``: the one a run directory noted for it, else ``uri``'s."""
    noted = recorded_runs(run_dir).get(uri)
    if isinstance(noted, dict) and isinstance(noted.get("tracking_uri"), str):
        return noted["tracking_uri"]
    return resolve_uri(uri)


def check(uri: str | None, run_dir: str | Path | None) -> None:
    """Before a run trains: for ``--mlflow URI``, MLflow is installed and the store opens."""
    if uri is None:
        return
    if run_dir is None:
        raise ConfigError(
            "mlflow= logs a run directory; give out=RUNDIR, or pass "
            "aevb.callbacks.MLflow(...) in callbacks= to log a run kept in memory"
        )
    open_client(store_uri(uri, Path(run_dir)))


def flat_params(config: dict, sections: tuple[str, ...] = ("model", "train", "data")) -> dict:
    """config.json's sections as MLflow parameters: ``section.key[.subkey]`` -> text."""
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{key}.{k}", v)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[key] = text[:MAX_PARAM_LENGTH]

    for section in sections:
        if isinstance(config.get(section), dict):
            walk(section, config[section])
    return out


def metrics_of(record: dict) -> dict[str, float]:
    """The numbers of an evaluation record, but ``samples_seen`` (the step)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "samples_seen" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class MlflowTracker:
    """One aevb run as one MLflow run: :meth:`start`, :meth:`log_metrics`, :meth:`finish`.

    ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_URI`. Making one
    imports MLflow (ConfigError naming the extra when it is missing), so a run fails at once.
    """

    def __init__(
        self, tracking_uri: str | None = None, experiment: str = "aevb", run_name: str | None = None
    ) -> None:
        import_mlflow()
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.experiment = experiment
        self.run_name = run_name
        self.client: Any = None
        self.run_id: str | None = None
        self.logged_steps: set[int] = set()  # of a continued MLflow run: not logged again

    def start(self, run_dir: Path | None, config: dict) -> str:
        """Open the MLflow run (the one ``run_dir`` noted, else a new one); log the parameters."""
        resolved = store_uri(self.uri, run_dir)
        self.client = open_client(resolved)
        self.logged_steps = set()
        run = self._continued(recorded_runs(run_dir).get(self.uri))
        if run is None:
            name = self.run_name or (run_dir.name if run_dir is not None else None)
            tags = {"aevb.version": __version__}
            if run_dir is not None:
                tags["aevb.run_dir"] = str(run_dir.resolve())
            run = self.client.create_run(self._experiment_id(), run_name=name, tags=tags)
        self.run_id = run.info.run_id
        if run_dir is not None:
            noted = recorded_runs(run_dir)
            noted[self.uri] = {
                "tracking_uri": resolved,
                "experiment_id": run.info.experiment_id,
                "run_id": self.run_id,
            }
            runs.atomic_write_json(run_dir / RECORD, noted)
        self._log_params(flat_params(config), run.data.params)
        return self.run_id

    def _continued(self, noted: Any) -> Any:
        """The noted MLflow run, set running again; None if there is none (or it was deleted)."""
        if not isinstance(noted, dict) or not isinstance(noted.get("run_id"), str):
            return None
        try:
            run = self.client.get_run(noted["run_id"])
        except Exception:  # deleted for good, or another store: start a new MLflow run
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        for key in run.data.metrics:
            history = self.client.get_metric_history(run.info.run_id, key)
            self.logged_steps.update(m.step for m in history)
        return run

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.experiment)

    def _log_params(self, params: dict[str, str], logged: dict[str, str]) -> None:
        """Log the parameters not yet logged; changed ones (a resume's) as ``resume.`` tags."""
        from mlflow.entities import Param, RunTag

        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"resume.{k}", v) for k, v in params.items() if logged.get(k, v) != v]
        for i in range(0, max(len(new), len(changed)), BATCH):
            self.client.log_batch(
                self.run_id, params=new[i : i + BATCH], tags=changed[i : i + BATCH]
            )

    def log_metrics(self, record: dict) -> None:
        """Every number of an evaluation record, at step ``samples_seen`` (once per step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record["samples_seen"])
        if step in self.logged_steps:  # by the process a resume continues
            return
        self.logged_steps.add(step)
        metrics = [Metric(k, v, now, step) for k, v in metrics_of(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_files(self, run_dir: Path, names: tuple[str, ...] = MODEL_FILES) -> None:
        """The run's top-level files ``names`` (those that exist) as artifacts of the same names."""
        for name in names:
            path = run_dir / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def log_figures(self, run_dir: Path) -> None:
        """The run's ``figures/*.png`` as artifacts ``figures/*.png``."""
        figures = run_dir / runs.FIGURES
        if figures.is_dir():
            self.client.log_artifacts(self.run_id, str(figures), runs.FIGURES)

    def finish(self, run_dir: Path | None, error: BaseException | None = None) -> None:
        """Log the model files and end the MLflow run: FINISHED, FAILED or KILLED (Ctrl-C).

        After an error the files are logged as far as possible, and nothing raised here hides it.
        """
        if self.client is None or self.run_id is None:
            return
        status = "FINISHED" if error is None else "FAILED"
        if isinstance(error, KeyboardInterrupt):
            status = "KILLED"
        try:
            if run_dir is not None:
                self.log_files(run_dir)
            self.client.set_terminated(self.run_id, status)
        except Exception:
            if error is None:
                raise


def current_error() -> BaseException | None:
    """The exception propagating through the ``finally`` this is called from, if any."""
    return sys.exc_info()[1]

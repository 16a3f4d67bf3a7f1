"""Callbacks (aevb.callbacks): the Trainer's events, a user callback's view and stop, the guide."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import aevb
from aevb import runs
from aevb.algorithms import AEVB
from aevb.callbacks import Callback
from aevb.data import load_dataset
from aevb.model import VAE, ModelConfig
from aevb.training import TrainConfig, Trainer

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "GUIDE.md"
# digits, minibatches of 100: evaluations at 0, 100, 400, 1 000, 3 000 samples (two a decade);
# checkpoints at those after 0, and at 2 000 (--checkpoint-samples 1000 since the one at 1 000)
EVALS = [0, 100, 400, 1000, 3000]
CHECKPOINTS = [100, 400, 1000, 2000, 3000]


def _trainer(run_dir: Path | None, callbacks=None, budget: int = 3000, **train) -> Trainer:
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("digits")
    tx, sx = torch.from_numpy(ds.train), torch.from_numpy(ds.test)
    tcfg = TrainConfig(
        lr=0.02, budget=budget, eval_per_decade=2, eval_size=300, checkpoint_samples=1000, **train
    )
    model = VAE(ModelConfig(x_dim=tx.shape[1], latent_dim=3, hidden=30))
    model.init_parameters(tcfg.init_std, torch.Generator().manual_seed(0))
    alg = AEVB(model, tcfg, len(tx), 0.02)
    return Trainer(alg, tx, sx, tcfg, run_dir, progress=False, callbacks=callbacks)


class Recorder(Callback):
    """Notes every event; at a checkpoint, what the run directory then holds."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.samples_seen))

    def on_step_group(self, trainer, mean_bound, samples):
        self.events.append(("group", trainer.samples_seen, mean_bound, samples))

    def on_evaluation(self, trainer, record):
        self.events.append(("evaluation", dict(record)))

    def on_checkpoint(self, trainer):
        _, state = runs.load_run_tensors(trainer.run_dir, runs.STATE)
        _, model = runs.load_run_tensors(trainer.run_dir, runs.MODEL)
        self.events.append(("checkpoint", trainer.samples_seen, state["step"], model))

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.samples_seen))

    def of(self, kind: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == kind]


def test_a_user_callback_hears_every_event(tmp_path):
    rec = Recorder()
    t = _trainer(tmp_path / "run", [rec])
    records = t.run()
    assert t.callbacks[-1] is rec  # after the default ones
    # every evaluation record, in order: those of metrics.jsonl and of the Trainer
    seen = [r for (r,) in rec.of("evaluation")]
    assert [r["samples_seen"] for r in seen] == EVALS
    assert seen == runs.read_metrics(tmp_path / "run") == records == t.records
    # on_checkpoint after each checkpoint was written (the files hold it by then)
    ckpts = rec.of("checkpoint")
    assert [c[0] for c in ckpts] == CHECKPOINTS
    assert all(step * 100 == s and m["samples_seen"] == s for s, step, m in ckpts)
    # the 20-step syncs: the trace's bounds, and every training sample once
    groups = rec.of("group")
    assert [g[1] for g in groups] == t.trace
    assert sum(g[2] for g in groups) == 3000 and [g[0] for g in groups] == [2000, 3000]
    # start first, end last, once each; the evaluation at 0 samples comes after the start
    assert rec.events[0] == ("start", 0) and rec.events[-1] == ("end", 3000)
    assert [e[0] for e in rec.events].count("end") == 1
    assert rec.events[1][0] == "evaluation"


def test_train_end_also_follows_an_error_and_metrics_written_stay(tmp_path):
    class Fails(Recorder):
        def on_evaluation(self, trainer, record):
            super().on_evaluation(trainer, record)
            if record["samples_seen"] == 1000:
                raise RuntimeError("callback failed")

    rec = Fails()
    t = _trainer(tmp_path / "run", [rec])
    with pytest.raises(RuntimeError, match="callback failed"):
        t.run()
    assert rec.events[-1] == ("end", 1000)
    metrics = runs.read_metrics(tmp_path / "run")
    assert [r["samples_seen"] for r in metrics] == [0, 100, 400, 1000]  # written before it
    # the run is intact: resumed from its last checkpoint it ends as an unbroken run does
    _, meta = runs.load_run_tensors(tmp_path / "run", runs.STATE)
    assert meta["samples_seen"] == 400
    again = _trainer(tmp_path / "run")
    tensors, meta = runs.load_run_tensors(tmp_path / "run", runs.STATE)
    again.load_state(tensors, meta)
    runs.truncate_metrics(tmp_path / "run", again.samples_seen)
    again.run()
    whole = _trainer(tmp_path / "whole")
    whole.run()
    assert _same_weights(again, whole)
    assert _timeless(runs.read_metrics(tmp_path / "run")) == _timeless(whole.records)


def _timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _same_weights(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("when", ["evaluation", "step_group"])
def test_the_stop_flag_stops_training_at_the_next_evaluation(tmp_path, when):
    class Stop(Recorder):
        def on_evaluation(self, trainer, record):
            super().on_evaluation(trainer, record)
            if when == "evaluation" and record["samples_seen"] == 400:
                trainer.should_stop = True

        def on_step_group(self, trainer, mean_bound, samples):
            super().on_step_group(trainer, mean_bound, samples)
            if when == "step_group":  # at 2 000 samples: the next evaluation is at 3 200
                trainer.should_stop = True

    rec = Stop()
    t = _trainer(tmp_path / "run", [rec], budget=10_000)
    records = t.run()
    end = 400 if when == "evaluation" else 3200
    assert records[-1]["samples_seen"] == end == t.samples_seen
    assert runs.read_metrics(tmp_path / "run")[-1]["samples_seen"] == end
    assert rec.of("checkpoint")[-1][0] == end  # that evaluation's checkpoint was written
    assert rec.events[-1] == ("end", end)
    assert t.run() == [] and t.samples_seen == end  # stopped stays stopped


def test_a_passive_callback_changes_no_bit(tmp_path):
    class Passive(Callback):
        """Reads what a callback may read, changes nothing."""

        def on_step_group(self, trainer, mean_bound, samples):
            self.seen = (trainer.samples_seen, float(mean_bound), samples)

        def on_evaluation(self, trainer, record):
            self.seen = sum(p.detach().sum() for p in trainer.model.parameters())

    plain = _trainer(tmp_path / "plain")
    plain.run()
    watched = _trainer(tmp_path / "watched", [Passive(), Recorder()])
    watched.run()
    assert _same_weights(plain, watched)
    for name in (runs.MODEL, runs.STATE):
        a, _ = runs.load_run_tensors(tmp_path / "plain", name)
        b, _ = runs.load_run_tensors(tmp_path / "watched", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _timeless(plain.records) == _timeless(watched.records)


def test_on_eval_is_a_callback_too(tmp_path):
    got: list[dict] = []
    ds = load_dataset("digits")
    tx = torch.from_numpy(ds.train)
    tcfg = TrainConfig(lr=0.02, budget=1000, eval_per_decade=2, eval_size=300)
    model = VAE(ModelConfig(x_dim=tx.shape[1], latent_dim=3, hidden=30))
    model.init_parameters(tcfg.init_std, torch.Generator().manual_seed(0))
    t = Trainer(
        AEVB(model, tcfg, len(tx), 0.02), tx, None, tcfg, progress=False, on_eval=got.append
    )
    assert t.run() == got and [r["samples_seen"] for r in got] == [0, 100, 400, 1000]


# --------------------------------------------------------------------------- the guide's example


def _guide_example() -> str:
    """The Python example of the guide's "Callbacks" section."""
    text = GUIDE.read_text()
    section = text[text.index("## 9. Callbacks") :]
    (code,) = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    return code


def _train_with_callbacks(data, budget, callbacks, **_):
    """``aevb.train(data, budget=..., callbacks=...)`` on the Trainer, for an aevb.train that
    does not take ``callbacks`` (yet)."""
    assert data == "digits"
    t = _trainer(None, list(callbacks), budget=budget)
    t.run()
    return t


def test_the_guides_callback_example_runs(monkeypatch, capsys):
    code = _guide_example()
    assert "aevb.train(" in code and "callbacks=" in code
    if "callbacks" not in inspect.signature(aevb.train).parameters:
        monkeypatch.setattr(aevb, "train", _train_with_callbacks)
    ns: dict = {"__name__": "guide_example"}
    exec(compile(code, str(GUIDE), "exec"), ns)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "test bound" in ln]
    assert len(lines) >= 3 and lines[0].split()[0] == "0"

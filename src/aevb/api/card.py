"""``aevb info``: a run's model card, read from its config.json and metrics.jsonl.

The card is a JSON-ready dict (:func:`info`); :func:`render_info` is its text form. Nothing is
computed from the data or the weights: the bounds and log-likelihoods are the ones training
logged (``aevb evaluate`` computes new ones).
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import runs
from .._version import __version__
from ..conv import CHANNELS, DeconvHeads
from ..errors import RunError
from ..exportable import LIKELIHOOD_OUTPUTS, posterior_names
from ..model import VAE, ModelConfig
from ..options import declared
from ..settings import ObjectiveOptions

_BOUND = re.compile(r"^(train|test|valid)_(bound|iwae_bound)(_se)?$")
_LOG_LIKELIHOOD = re.compile(r"^(train|test|valid)_log_likelihood(_se)?$")
_RECONSTRUCTION = re.compile(r"^(train|test|valid)_reconstruction(_se)?$")
_OBJECTIVE = tuple(f.name for f in declared(ObjectiveOptions))
"""What is maximised: every declared objective option (aevb.settings.ObjectiveOptions)."""
_OPTIMIZER = ("optimizer", "lr", "lr_schedule", "batch_size", "weight_prior", "seed")


def _heads(names: list[str] | tuple[str, ...], width: int | str) -> str:
    """'2x3 (mu, logvar)': a layer emitting one ``width`` vector (or map) per named parameter."""
    count = f"{len(names)}x" if len(names) > 1 else ""
    return f"{count}{width} ({', '.join(names)})"


def _architecture(mc: ModelConfig) -> dict:
    """Layer widths of the encoder and decoder, their parameter counts and the families."""
    model = VAE(mc)  # the shapes only: no weights are read
    enc_heads = posterior_names(model)
    n_dec = model.decoder.likelihood.n_params  # Bernoulli's probs is no head of the network
    dec_heads = [n for n, _ in LIKELIHOOD_OUTPUTS[mc.likelihood]][:n_dec]
    j, d, h = mc.latent_dim, mc.x_dim, mc.hidden
    if mc.architecture == "conv":
        net = model.decoder.net
        assert mc.image_shape is not None and isinstance(net, DeconvHeads)
        img = f"{mc.image_shape[0]}x{mc.image_shape[1]}"
        c1, c2 = CHANNELS
        maps = "x".join(str(n) for n in net.map_shape)
        enc = [f"1x{img}", f"conv {c1}", f"conv {c2}", str(h), _heads(enc_heads, j)]
        dec = [str(j), str(h), maps, f"deconv {c1}", _heads(dec_heads, img)]
    else:
        enc = [str(d), *[str(h)] * mc.depth, _heads(enc_heads, j)]
        dec = [str(j), *[str(h)] * mc.depth, _heads(dec_heads, d)]
    return {
        "type": mc.architecture,
        "encoder": " -> ".join(enc),
        "decoder": " -> ".join(dec),
        "x_dim": d,
        "latent_dim": j,
        "hidden": h,
        "depth": mc.depth,
        "activation": mc.activation,
        "likelihood": mc.likelihood,
        "posterior": mc.posterior,
        "prior": mc.prior,
        "parameter_posterior": mc.parameter_posterior,
        "encoder_parameters": sum(p.numel() for p in model.encoder.parameters()),
        "decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
    }


def _last(metrics: list[dict], pattern: re.Pattern[str]) -> dict:
    """The keys matching ``pattern`` of the last record holding any, with its samples_seen."""
    for rec in reversed(metrics):
        found = {k: v for k, v in rec.items() if pattern.match(k)}
        if found:
            return {"samples_seen": rec.get("samples_seen"), **found}
    return {}


def _autoencoder(train: dict) -> bool:
    """Whether a run's train section is a deterministic auto-encoder's (no bound)."""
    return train.get("algorithm") == "autoencoder"


def info(run_dir: str | Path) -> dict:
    """The model card of a run: data, architecture, objective, training, last bounds, versions.

    Read from config.json (checked against the manifest) and metrics.jsonl; JSON-ready. The
    ``bounds`` and ``log_likelihood`` entries are the last ones training logged (empty when
    none was), with the ``samples_seen`` they were logged at.
    """
    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    try:
        mc = ModelConfig(**cfg["model"])
    except TypeError as e:
        raise RunError(f"{run_dir / runs.CONFIG}: bad model section ({e})") from None
    metrics = runs.read_metrics(run_dir)
    data, train = cfg["data"], cfg["train"]
    seen = metrics[-1].get("samples_seen", 0) if metrics else 0
    n_train = data.get("n_train")
    return {
        "run": str(run_dir),
        "format_version": cfg["format_version"],
        "written_by": cfg.get("aevb_version"),
        "aevb_version": __version__,
        "data": {
            "spec": data.get("spec"),
            "description": data.get("description"),
            "shape": [n_train, mc.x_dim],
            "image_shape": list(mc.image_shape) if mc.image_shape else None,
            "n_train": n_train,
            "n_test": data.get("n_test"),
            "standardized": bool(data.get("standardize")),
        },
        "architecture": _architecture(mc),
        "objective": {k: train.get(k) for k in _OBJECTIVE},
        "training": {
            "samples_seen": seen,
            "epochs": seen / n_train if n_train else None,
            "seconds": metrics[-1].get("seconds") if metrics else None,
            **{k: train.get(k) for k in _OPTIMIZER},
        },
        "checkpoint": _checkpoint(run_dir, train.get("budget")),
        "bounds": _last(metrics, _BOUND),
        # an auto-encoder's log p(x|z=mu(x)), in place of a bound
        "reconstruction": _last(metrics, _RECONSTRUCTION) if _autoencoder(train) else {},
        "log_likelihood": {
            **_last(metrics, _LOG_LIKELIHOOD),
            **({"method": train.get("eval_marginal")} if train.get("eval_marginal") else {}),
        },
    }


def _checkpoint(run_dir: Path, budget: int | None) -> dict:
    """Where the run's resumable state stands (samples and seconds of training, the budget):
    ahead of the last evaluation while a long run trains between two; {} without a state."""
    if not runs.has_file(run_dir, runs.STATE):
        return {}
    try:
        _, meta = runs.load_run_tensors(run_dir, runs.STATE)
    except RunError as e:  # e.g. read while a checkpoint is being committed: say so, go on
        return {"error": str(e)}
    return {
        "samples_seen": meta.get("samples_seen"),
        "seconds": meta.get("seconds"),
        "budget": budget,
    }


def _checkpoint_line(c: dict) -> list[str]:
    """``aevb info``'s line for :func:`_checkpoint`'s entry (none without a state)."""
    if not c:
        return []
    if "error" in c:
        return [f"checkpoint: unreadable now ({c['error']}); aevb verify RUNDIR checks the run"]
    of = f" of {c['budget']:,}" if c.get("budget") else ""
    return [
        f"checkpoint: {c['samples_seen']:,}{of} samples, {c['seconds'] / 3600:.2f} h of training "
        "wall time (aevb train --resume RUNDIR continues from it)"
    ]


def _values(d: dict, what: str) -> str:
    """'train -90.1 ± 0.2, test -91.0 ± 0.3' for the entries ``{split}_{what}``."""
    parts = []
    for split in ("train", "valid", "test"):
        v = d.get(f"{split}_{what}")
        if v is not None:
            se = d.get(f"{split}_{what}_se")
            parts.append(f"{split} {v:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
    return ", ".join(parts)


def _render_results(card: dict) -> list[str]:
    lines = []
    b, ll = card["bounds"], card["log_likelihood"]
    for what, label in (("bound", "bound"), ("iwae_bound", "IWAE bound")):
        if _values(b, what):
            lines.append(f"{label} (nats, at {b['samples_seen']:,} samples): {_values(b, what)}")
    rec = card.get("reconstruction")
    if rec:
        at = f"nats, at {rec['samples_seen']:,} samples"
        lines.append(f"reconstruction log p(x|z=mu(x)) ({at}): {_values(rec, 'reconstruction')}")
    if not b:
        lines.append("bound: none logged (the algorithm has no bound)")
    if ll:
        how = f", {ll['method']}" if ll.get("method") else ""
        at = f"at {ll['samples_seen']:,} samples{how}"
        lines.append(f"log p(x) (nats, {at}): {_values(ll, 'log_likelihood')}")
    elif rec:  # aevb evaluate refuses an auto-encoder run
        lines.append("log p(x): not evaluated during training (train with --eval-marginal hmc)")
    else:
        lines.append("log p(x): not evaluated during training (aevb evaluate RUNDIR --marginal is)")
    return lines


def render_info(card: dict) -> str:
    """The text form of :func:`info`'s card (what ``aevb info`` prints)."""
    d, a, o, t = card["data"], card["architecture"], card["objective"], card["training"]
    layers = (
        f"{a['depth']} hidden layer(s) of {a['hidden']} units"
        if a["type"] == "mlp"
        else f"4x4 convolutions of stride 2, dense layers of {a['hidden']} units"
    )
    epochs = f" ({t['epochs']:.1f} epochs)" if t["epochs"] is not None else ""
    lines = [
        f"run: {card['run']} (run format {card['format_version']}, written by aevb "
        f"{card['written_by']}; read by aevb {card['aevb_version']})",
        f"data: {d['spec']}: {d['description']}" + (" (standardized)" if d["standardized"] else ""),
        f"  {d['n_train']} training rows of {d['shape'][1]} values, {d['n_test']} test rows",
        f"architecture: {a['type']}, {layers}, {a['activation']}, latent dim {a['latent_dim']}",
        f"  encoder q(z|x) {a['posterior']}: {a['encoder']} ({a['encoder_parameters']:,} "
        "parameters)",
        f"  decoder p(x|z) {a['likelihood']}: {a['decoder']} ({a['decoder_parameters']:,} "
        "parameters"
        + (", with a Gaussian posterior q(theta)" if a["parameter_posterior"] else "")
        + ")",
        f"  prior p(z): {a['prior']}",
        "objective: " + ", ".join(f"{k} {v}" for k, v in o.items() if v is not None),
        f"training: {t['samples_seen']:,} samples seen{epochs}; {t['optimizer']}, lr {t['lr']}, "
        f"batch {t['batch_size']}, seed {t['seed']}",
        *_checkpoint_line(card.get("checkpoint", {})),
        *_render_results(card),
    ]
    return "\n".join(lines)

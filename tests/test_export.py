"""Models out: ``aevb export`` (ONNX and torch.export files) and ``aevb info`` (the model card).

The exported graphs are run on real digits test images, at batch sizes 1 and 37 (the batch
dimension is symbolic), and compared with the trained model's own encoder and decoder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from helpers import error_lines

import aevb
from aevb import exportable, runs
from aevb.api import exporting
from aevb.cli import main
from aevb.data import load_dataset

DOC = Path(__file__).resolve().parents[1] / "docs" / "EXPORT.md"
ATOL = 1e-5
BATCHES = (1, 37)
KEYS = ["bernoulli onnx", "bernoulli torch-export", "gaussian torch-export"]


@pytest.fixture(scope="module")
def digits_test() -> np.ndarray:
    return load_dataset("digits", splits=("test",)).test


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory, small_run) -> Path:
    """A small Gaussian-likelihood run on the digits (p(x|z) with a mean and a log-variance)."""
    out = tmp_path_factory.mktemp("gauss") / "run"
    small_run(out, likelihood="gaussian", budget=300, eval_size=50, eval_per_decade=1)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory, reference_run, gaussian_run) -> dict[str, aevb.api.Export]:
    """The Bernoulli run in both formats, the Gaussian run as torch.export programs.

    (Each ONNX export costs about 2 s, the first 5; the ONNX translation of the Gaussian decoder's
    ops (split, sigmoid) is the Bernoulli graphs', and every export checks its files itself.)
    """
    d = tmp_path_factory.mktemp("exports")
    return {
        "bernoulli onnx": aevb.export(reference_run, "onnx", out=d / "b-onnx"),
        "bernoulli torch-export": aevb.export(reference_run, "torch-export", out=d / "b-pt2"),
        "gaussian torch-export": aevb.export(gaussian_run, "torch-export", out=d / "g-pt2"),
    }


def _runner(path: Path):
    """The exported graph as a function of one float32 array, returning numpy arrays."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda a: session.run(None, {name: a})
    module = torch.export.load(str(path)).module()  # a file this test session wrote

    def run(a: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(a))]

    return run


def _reference(model: aevb.VAE, part: str, a: np.ndarray) -> list[np.ndarray]:
    """What the trained model itself computes: its encoder's or decoder's outputs."""
    with torch.no_grad():
        if part == "encoder":
            return [t.numpy() for t in model.encode(a)]
        params = [t.numpy() for t in model.decode(a)]
        if model.config.likelihood == "bernoulli":
            params.append(model.decode_mean(a).numpy())  # probs = E[x|z]
        return params


@pytest.mark.parametrize("key", KEYS)
def test_exported_graphs_compute_what_the_model_computes(key, exports, digits_test):
    exp = exports[key]
    desc = exp.description
    model = aevb.load(desc["run"]["path"])
    # real inputs: the digits test images, and their posterior means as latent points
    with torch.no_grad():
        latents = model.encode(digits_test)[0].numpy()
    for part, path in exp.files.items():
        spec = desc["parts"][part]
        assert path.is_file() and path.name == spec["file"]
        names = [o["name"] for o in spec["outputs"]]
        run = _runner(path)
        source = digits_test if part == "encoder" else latents
        worst = 0.0
        for b in BATCHES:
            a = np.ascontiguousarray(source[:b], dtype=np.float32)
            got, want = run(a), _reference(model, part, a)
            assert len(got) == len(want) == len(names)
            for g, w, o in zip(got, want, spec["outputs"], strict=True):
                assert g.shape == w.shape == (b, o["shape"][1]) and g.dtype == np.float32
                worst = max(worst, float(np.abs(g - w).max()))
        assert worst < ATOL, (key, part, worst)
        assert spec["check"]["max_abs_error"] < ATOL


def test_export_json_describes_the_files(exports, reference_run):
    exp = exports["bernoulli onnx"]
    on_disk = json.loads(exp.json_path.read_text())
    assert on_disk == exp.description
    assert sorted(p.name for p in exp.out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "export.json",
    ]
    assert on_disk["aevb_version"] == aevb.__version__ and on_disk["opset"] == 18
    assert on_disk["run"]["format_version"] == runs.FORMAT_VERSION
    assert on_disk["model"] == runs.read_config(reference_run)["model"]
    enc, dec = on_disk["parts"]["encoder"], on_disk["parts"]["decoder"]
    (x,) = enc["inputs"]
    assert (x["name"], x["shape"], x["dtype"]) == ("x", ["batch", 64], "float32")
    assert [o["name"] for o in enc["outputs"]] == ["mu", "logvar"]
    assert [o["name"] for o in dec["outputs"]] == ["logits", "probs"]
    assert all(o["shape"] == ["batch", 2] for o in enc["outputs"])
    assert "sigmoid" in dec["outputs"][0]["meaning"]
    g = exports["gaussian torch-export"].description["parts"]
    assert [o["name"] for o in g["decoder"]["outputs"]] == ["mean", "logvar"]
    assert [o["name"] for o in g["encoder"]["outputs"]] == ["mu", "logvar"]
    pt2 = exports["bernoulli torch-export"].description
    assert pt2["opset"] is None and pt2["parts"]["encoder"]["file"] == "encoder.pt2"
    import onnx

    proto = onnx.load(str(exp.files["encoder"]))
    assert [i.name for i in proto.graph.input] == ["x"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in proto.graph.output] == ["mu", "logvar"]
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}


def _one_error_line(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = error_lines(capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("aevb: error:"), err
    return err[0]


def test_damaged_weights_are_not_exported(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    raw = bytearray((run / runs.MODEL).read_bytes())
    raw[-5] ^= 0x40  # one bit of one weight
    (run / runs.MODEL).write_bytes(bytes(raw))
    out = tmp_path / "out"
    line = _one_error_line(
        capsys, ["export", str(run), "--format", "torch-export", "--out", str(out)]
    )
    assert "model.safetensors" in line and "altered" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(aevb.RunError, match="model.safetensors"):
        aevb.export(run, "torch-export", out=out)


def test_bad_requests_are_one_line(reference_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(aevb.ConfigError, match="unknown export format 'tflite'"):
        aevb.export(reference_run, "tflite", out=out)
    with pytest.raises(aevb.ConfigError, match="unknown part 'prior'"):
        aevb.export(reference_run, "onnx", "prior", out=out)
    base = ["export", str(reference_run), "--out", str(out)]
    assert "invalid choice" in _one_error_line(capsys, [*base, "--format", "tflite"])
    assert "invalid choice" in _one_error_line(capsys, [*base, "--format", "onnx", "--part", "z"])
    # an export never overwrites: a folder with anything in it is refused, and left alone
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = _one_error_line(capsys, [*base, "--format", "torch-export"])
    assert "not empty" in line and (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    # without the onnx extra: which one to install
    real = exporting.importlib.util.find_spec
    monkeypatch.setattr(
        exporting.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("onnx", "onnxscript") else real(name, *a),
    )
    line = _one_error_line(capsys, [*base, "--format", "onnx"])
    assert "pip install aevb[onnx]" in line


def test_a_failed_export_leaves_nothing(reference_run, tmp_path, monkeypatch):
    def broken(part, path):
        path.write_bytes(b"half")
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(exportable, "write_program", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        aevb.export(reference_run, "torch-export", out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither out nor the temporary folder


def _as_mcem(run: Path) -> None:
    """Make ``run`` an MCEM run's directory: its config says so (committed, checksums kept)."""
    cfg = runs.read_config(run)
    cfg["train"]["algorithm"] = "mcem"
    runs.commit(run, {runs.CONFIG: runs.json_bytes(cfg)})
    runs.verify_run(run)


def test_an_mcem_run_has_no_encoder_to_export(reference_run, tmp_path, capsys):
    run = tmp_path / "mcem"
    shutil.copytree(reference_run, run)
    _as_mcem(run)
    out = tmp_path / "out"
    for part in ("both", "encoder"):
        line = _one_error_line(
            capsys, ["export", str(run), "--format", "onnx", "--part", part, "--out", str(out)]
        )
        assert "no trained encoder" in line and "--part decoder" in line
    assert not out.exists()
    with pytest.raises(aevb.ConfigError, match="no trained encoder"):
        aevb.export(run, "torch-export", out=out)
    out.mkdir()  # an empty folder will do
    argv = ["export", str(run), "--format", "torch-export", "--part", "decoder", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder.pt2", "export.json"]
    assert "decoder.pt2" in capsys.readouterr().out


def test_info_is_the_model_card(reference_run, capsys):
    card = aevb.info(reference_run)
    cfg, metrics = runs.read_config(reference_run), runs.read_metrics(reference_run)
    assert (
        card["format_version"] == runs.FORMAT_VERSION and card["aevb_version"] == aevb.__version__
    )
    assert card["data"]["spec"] == "digits" and card["data"]["shape"] == [1500, 64]
    a = card["architecture"]
    assert (a["latent_dim"], a["hidden"], a["likelihood"], a["posterior"]) == (
        2,
        16,
        "bernoulli",
        "normal",
    )
    assert (
        a["encoder"] == "64 -> 16 -> 2x2 (mu, logvar)" and a["decoder"] == "2 -> 16 -> 64 (logits)"
    )
    model = aevb.load(reference_run)
    assert a["encoder_parameters"] == sum(p.numel() for p in model.encoder.parameters())
    assert card["objective"]["algorithm"] == "aevb" and card["objective"]["estimator"] == "B"
    assert card["objective"]["kl_beta"] == cfg["train"]["kl_beta"]
    assert card["training"]["samples_seen"] == metrics[-1]["samples_seen"] == 4000
    assert card["bounds"]["test_bound"] == metrics[-1]["test_bound"]
    assert card["log_likelihood"] == {}
    assert main(["info", str(reference_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == card
    assert main(["info", str(reference_run)]) == 0
    text = capsys.readouterr().out
    for want in ("run format 2", "digits", "64 -> 16 -> 2x2", "estimator B", "4,000 samples"):
        assert want in text, (want, text)
    assert f"test {metrics[-1]['test_bound']:.3f}" in text
    assert "log p(x): not evaluated" in text


def test_info_of_an_mcem_run_shows_log_px(reference_run, tmp_path, capsys):
    run = tmp_path / "mcem"
    shutil.copytree(reference_run, run)
    _as_mcem(run)
    # MCEM logs log p(x) and no bound
    rec = {"samples_seen": 4500, "train_log_likelihood": -31.5, "train_log_likelihood_se": 0.5}
    runs.append_metrics(run, rec)
    card = aevb.info(run)
    assert card["log_likelihood"]["train_log_likelihood"] == -31.5
    assert card["bounds"]["samples_seen"] == 4000  # the last bound logged, earlier
    assert card["training"]["samples_seen"] == 4500
    assert main(["info", str(run)]) == 0
    assert "log p(x) (nats, at 4,500 samples): train -31.500 ± 0.500" in capsys.readouterr().out
    assert "not a directory" in _one_error_line(capsys, ["info", str(tmp_path / "nope")])


def test_the_docs_code_runs(exports, reference_run, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    for placeholder, path in (
        ("exports/digits-onnx", exports["bernoulli onnx"].out),
        ("exports/digits-pt2", exports["bernoulli torch-export"].out),
        ("runs/digits", reference_run),
    ):
        assert placeholder in code
        code = code.replace(placeholder, str(path))
    exec(compile(code, str(DOC), "exec"), {})
    assert "max abs error" in capsys.readouterr().out

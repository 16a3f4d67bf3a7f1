"""`aevb reproduce`: the paper's protocols (settings checked against Section 5), each figure's
smoke budget end to end on the real data, resumption, and refusal of mismatched or bad input."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import struct
from pathlib import Path

import pytest

from aevb import experiments, runs
from aevb.cli import main
from aevb.errors import ConfigError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("AEVB_OFFLINE", "1")


# ------------------------------------------------------------------ the protocols themselves
def test_figure2_protocol_is_the_papers():
    p = experiments.protocol("figure2", "paper")
    assert p.samples == 10**8  # Figure 2's x-axis ends at 10^8
    mnist = [pn for pn in p.panels if pn.key.startswith("mnist")]
    frey = [pn for pn in p.panels if pn.key.startswith("frey")]
    assert [c.options["latent_dim"] for pn in mnist for c in pn.curves[:1]] == [3, 5, 10, 20, 200]
    assert [c.options["latent_dim"] for pn in frey for c in pn.curves[:1]] == [2, 5, 10, 20]
    for pn in p.panels:
        assert [c.algorithm for c in pn.curves] == ["aevb", "wake-sleep"]
        for c in pn.curves:
            o = c.options
            assert (o["optimizer"], o["lr"], o["batch_size"], o["samples"]) == (
                "adagrad",
                "auto",
                100,
                1,
            )
            assert o["hidden"] == (500 if pn in mnist else 200)
            assert o["data"] == ("binarized-mnist" if pn in mnist else "frey")


def test_figure3_protocol_is_the_papers():
    p = experiments.protocol("figure3", "paper", mnist="mnist")
    assert [pn.key for pn in p.panels] == ["ntrain1000", "ntrain50000"]
    for pn, size in zip(p.panels, (1_000, 50_000), strict=True):
        assert [c.algorithm for c in pn.curves] == ["aevb", "wake-sleep", "mcem"]
        for c in pn.curves:
            o = c.options
            assert (o["latent_dim"], o["hidden"], o["train_size"], o["data"]) == (
                3,
                100,
                size,
                "mnist",
            )
            assert (o["eval_marginal"], o["eval_marginal_points"]) == ("hmc", 1_000)


def test_figures_4_and_5_protocols():
    p4 = experiments.protocol("figure4", "quick")
    assert [(c.options["data"], c.options["latent_dim"]) for _, c in p4.runs] == [
        ("frey", 2),
        ("binarized-mnist", 2),
    ]
    p5 = experiments.protocol("figure5", "quick")
    assert [c.options["latent_dim"] for _, c in p5.runs] == [2, 5, 10, 20]
    assert p5.kind == "samples" and p4.kind == "manifold"


@pytest.mark.parametrize(
    "args, match",
    [
        (("figure9", "quick"), "unknown figure 'figure9'"),
        (("figure2", "fast"), "unknown budget 'fast'"),
    ],
)
def test_protocol_refuses_unknown_names(args, match):
    with pytest.raises(ConfigError, match=match):
        experiments.protocol(*args)


# ------------------------------------------------------------------ smoke budgets end to end
def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def _first_and_last(run_dir: Path, key: str) -> tuple[float, float]:
    recs = [r for r in runs.read_metrics(run_dir) if key in r]
    return recs[0][key], recs[-1][key]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data_dir):
    """Each figure's smoke reproduction, run once for the module."""
    root = tmp_path_factory.mktemp("reproduce")
    done: dict[str, experiments.Reproduction] = {}

    def get(figure: str) -> experiments.Reproduction:
        if figure not in done:
            done[figure] = experiments.reproduce(
                figure, "smoke", root / figure, data_dir=shared_data_dir, progress=False
            )
        return done[figure]

    return get


def _check_outputs(rep: experiments.Reproduction, n_rows: int) -> dict:
    w, h = _png_size(rep.figure)
    assert w > 300 and h > 200
    assert rep.figure.stat().st_size < 300_000  # small enough for the docs
    table = rep.table.read_text()
    assert table.count("\n| ") == n_rows + 1  # header and one line per curve
    values = json.loads(rep.json.read_text())
    assert len(values["rows"]) == n_rows
    assert values["samples_per_curve"] == experiments.SAMPLES[values["figure"]]["smoke"]
    for row in values["rows"]:
        assert row["samples"] >= values["samples_per_curve"]
        for key, v in row.items():
            if key.endswith(("_bound", "_log_likelihood")):
                assert math.isfinite(v), (row["panel"], row["algorithm"], key, v)
    return values


def test_figure2_smoke(smoke):
    rep = smoke("figure2")
    values = _check_outputs(rep, 18)
    assert {r["algorithm"] for r in values["rows"]} == {"AEVB", "Wake-Sleep"}
    assert _png_size(rep.figure)[0] > 1000  # five panels a row
    for row in values["rows"]:  # training raises the bound from its value at initialisation
        if row["algorithm"] == "AEVB":
            first, last = _first_and_last(Path(row["run"]), "train_bound")
            assert last > first + 50, (row["panel"], first, last)
    assert "| MNIST, N_z = 200 | Wake-Sleep |" in rep.table.read_text()


def test_figure3_smoke(smoke):
    rep = smoke("figure3")
    values = _check_outputs(rep, 6)
    mcem = [r for r in values["rows"] if r["algorithm"] == "MCEM"]
    assert len(mcem) == 2 and all("train_bound" not in r for r in mcem)  # MCEM has no bound
    assert {r["n_train"] for r in values["rows"]} == {1_000, 50_000}
    for row in values["rows"]:
        assert math.isfinite(row["test_log_likelihood"])
        first, last = _first_and_last(Path(row["run"]), "train_log_likelihood")
        assert last > first, (row["panel"], row["algorithm"], first, last)
        if row["algorithm"] != "MCEM":  # log p(x) is above the bound on the same points
            rec = runs.read_metrics(Path(row["run"]))[-1]
            assert rec["train_log_likelihood"] > rec["train_bound_subset"] - 1.0
    assert "log p(x) (Appendix D estimate)" in rep.table.read_text()


def test_figure4_smoke_draws_both_manifolds(smoke):
    rep = smoke("figure4")
    values = _check_outputs(rep, 2)
    assert [r["latent_dim"] for r in values["rows"]] == [2, 2]
    assert [r["n_train"] for r in values["rows"]] == [1_769, 50_000]
    # the manifold as it formed: each panel at its snapshot (1 000 samples) and at its end
    budget = json.loads((rep.path / "budget.json").read_text())["rows"]
    assert [(r["panel"], r["samples"]) for r in budget] == [
        ("frey-nz2", 1_000),
        ("frey-nz2", 2_000),
        ("mnist-nz2", 1_000),
        ("mnist-nz2", 2_000),
    ]
    for r in budget:
        assert len(r["code_std"]) == 2 and all(v > 0 for v in r["code_std"])
        assert r["evaluated_at"] <= r["samples"] and math.isfinite(r["test_bound"])
    for key in ("frey-nz2", "mnist-nz2"):
        w, h = _png_size(rep.path / f"{key}-budget.png")
        assert w > h  # two manifolds side by side (one alone is taller than wide)
    assert "codes' std per dimension" in (rep.path / "budget.md").read_text()
    assert experiments.protocol("figure4", "paper").runs[0][1].options["snapshots"] == [
        3_000_000,
        10_000_000,
    ]


def test_figure5_smoke(smoke):
    rep = smoke("figure5")
    values = _check_outputs(rep, 4)
    assert [r["latent_dim"] for r in values["rows"]] == [2, 5, 10, 20]
    w, h = _png_size(rep.figure)
    assert w > 3 * h  # four panels side by side


def test_reuse_copies_the_curves_other_figures_trained(smoke, tmp_path, shared_data_dir):
    """Figure 5's curves are Figure 2's AEVB MNIST curves and Figure 4's MNIST one: --reuse
    copies them (metrics.jsonl holds each run's wall seconds, so equal bytes mean a copy)."""
    fig2, fig4, fig5 = smoke("figure2"), smoke("figure4"), smoke("figure5")
    out = tmp_path / "f5"
    rep = experiments.reproduce(
        "figure5", "smoke", out, data_dir=shared_data_dir, reuse=[fig2.path, fig4.path],
        progress=False,
    )  # fmt: skip
    sources = {"mnist-nz2": fig4.path / "mnist-nz2" / "aevb"}
    sources |= {f"mnist-nz{d}": fig2.path / f"mnist-nz{d}" / "aevb" for d in (5, 10, 20)}
    for key, src in sources.items():
        for name in (runs.METRICS, runs.MODEL):
            assert (out / key / "aevb" / name).read_bytes() == (src / name).read_bytes(), key
    assert json.loads(rep.json.read_text())["curves_copied_this_call"] == 4
    own = {r["panel"]: r for r in json.loads(fig5.json.read_text())["rows"]}
    for row in rep.rows:  # the values of the figure's own reproduction, to the last digit
        for k, v in row.items():
            if k.endswith(("_bound", "_bound_se")):
                assert v == own[row["panel"]][k], (row["panel"], k)
    assert not list(out.rglob(".*.copying"))
    # curves of other settings match nothing: Figure 3 (100 hidden units, N_z = 3) and Figure 2
    # at another budget share no curve with Figure 2's smoke runs
    found = experiments._reusable([fig2.path], out)
    assert len(found) == 18
    for figure, budget in (("figure3", "smoke"), ("figure2", "quick")):
        proto = experiments.protocol(figure, budget)
        assert not any(experiments._curve_key(c, proto.samples) in found for _, c in proto.runs)
    # beside Figures 2 and 4, a new Figure 5 folder is told where its curves already are
    beside = fig2.path.parent / "figure5-again"
    want = [fig2.path, fig4.path, fig5.path]  # Figure 3's folder (if made) shares nothing
    assert experiments.shareable_siblings(beside, experiments.protocol("figure5", "smoke")) == want
    # the folder that trained them has nothing left to train: no hint there
    assert experiments.shareable_siblings(fig5.path, experiments.protocol("figure5", "smoke")) == []
    others = experiments.shareable_siblings(beside, experiments.protocol("figure3", "smoke"))
    assert not set(others) & set(want)  # Figure 3's curves are in no other figure
    with pytest.raises(ConfigError, match="not a reproduction"):
        experiments.reproduce(
            "figure5", "smoke", tmp_path / "f5b", data_dir=shared_data_dir, reuse=[tmp_path],
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "f5b").exists()  # refused before anything was written


def test_parallel_jobs_give_the_same_curves(smoke, tmp_path, shared_data_dir):
    """--jobs 2 trains the curves in two worker processes: same seeds, same values."""
    seq = smoke("figure4")
    par = experiments.reproduce(
        "figure4", "smoke", tmp_path / "f4", data_dir=shared_data_dir, jobs=2, progress=False
    )
    keys = ("panel", "samples", "lr", "train_bound", "test_bound")
    assert [[r[k] for k in keys] for r in par.rows] == [[r[k] for k in keys] for r in seq.rows]
    assert _png_size(par.figure) == _png_size(seq.figure)


def test_panel_restricts_a_reproduction_and_a_later_call_adds_to_it(
    smoke, tmp_path, shared_data_dir
):
    """--panel trains only the named panels (the figure, table and JSON show only them); a
    later call with other panels trains those beside them and leaves the first ones alone."""
    out = tmp_path / "f2"
    one = experiments.reproduce(
        "figure2", "smoke", out, data_dir=shared_data_dir, panels=["frey-nz2"], progress=False
    )
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["frey-nz2"]
    values = json.loads(one.json.read_text())
    assert values["panels"] == ["frey-nz2"] and len(values["rows"]) == 2
    assert one.table.read_text().count("\n| ") == 3  # header and the two curves
    full = {(r["panel"], r["algorithm"]): r for r in smoke("figure2").rows}
    for row in one.rows:  # the same curves as the whole figure's, to the last digit
        assert row["test_bound"] == full[(row["panel"], row["algorithm"])]["test_bound"]
    before = (out / "frey-nz2" / "aevb" / runs.METRICS).read_bytes()
    two = experiments.reproduce(
        "figure2", "smoke", out, data_dir=shared_data_dir, panels=["frey-nz5"], progress=False
    )
    assert {r["panel"] for r in two.rows} == {"frey-nz5"}
    assert (out / "frey-nz2" / "aevb" / runs.METRICS).read_bytes() == before
    with pytest.raises(ConfigError, match="unknown --panel 'mnist-nz7' for figure2; choose from"):
        experiments.reproduce("figure2", "smoke", tmp_path / "no", panels=["mnist-nz7"])
    assert not (tmp_path / "no").exists()


def test_grey_mnist_reproduction(shared_data_dir, tmp_path, monkeypatch):
    """--mnist mnist: grey MNIST as Bernoulli targets, the paper-era convention. MNIST's training
    images are not in the shared folder: a stand-in training file of 2 000 test images serves."""
    from test_data_real import _small_mnist_dir

    monkeypatch.setenv("AEVB_VERIFY", "0")  # the stand-in file has no published checksum
    data_dir = _small_mnist_dir(shared_data_dir, tmp_path, 2_000, raw=True)
    rep = experiments.reproduce(
        "figure5", "smoke", tmp_path / "f5", mnist="mnist", data_dir=data_dir, progress=False
    )
    values = json.loads(rep.json.read_text())
    assert values["mnist"] == "mnist" and len(values["rows"]) == 4
    for row in values["rows"]:
        cfg = runs.read_config(Path(row["run"]))
        assert (cfg["data"]["spec"], cfg["train"]["binarize"]) == ("mnist", "grey")
        assert row["n_train"] == 2_000 and math.isfinite(row["test_bound"])
        first, last = _first_and_last(Path(row["run"]), "train_bound")
        assert last > first + 50
    assert "MNIST data: `mnist`" in rep.table.read_text()


# ------------------------------------------------------------------ resumption
def test_rerun_keeps_finished_curves_and_resumes_interrupted_ones(
    tmp_path, shared_data_dir, monkeypatch
):
    out = tmp_path / "f4"
    # a reproduction stopped part way: its curves trained only 1 000 of the 2 000 samples
    monkeypatch.setitem(experiments.SAMPLES["figure4"], "smoke", 1_000)
    experiments.reproduce("figure4", "smoke", out, data_dir=shared_data_dir, progress=False)
    frey, mnist = out / "frey-nz2" / "aevb", out / "mnist-nz2" / "aevb"
    assert runs.read_metrics(frey)[-1]["samples_seen"] == 1_000
    monkeypatch.setitem(experiments.SAMPLES["figure4"], "smoke", 2_000)
    rep = experiments.reproduce("figure4", "smoke", out, data_dir=shared_data_dir, progress=False)
    for run_dir in (frey, mnist):  # resumed, not restarted: the first 1 000 samples are kept
        seen = [r["samples_seen"] for r in runs.read_metrics(run_dir)]
        assert seen[-1] == 2_000 and 1_000 in seen and seen == sorted(seen)
        runs.verify_run(run_dir)
    # a finished reproduction trains nothing again: the runs' files stay byte for byte
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "figure4." not in p.name}
    again = experiments.reproduce("figure4", "smoke", out, data_dir=shared_data_dir, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "figure4." not in p.name}
    assert before.keys() == after.keys()
    assert all(before[p] == after[p] for p in before if p.name != experiments.MANIFEST)
    assert again.rows == rep.rows


def test_out_of_another_figure_is_refused(tmp_path, shared_data_dir):
    out = tmp_path / "f4"
    (out).mkdir()
    (out / experiments.MANIFEST).write_text(
        json.dumps({"figure": "figure4", "budget": "smoke", "mnist": "binarized-mnist"})
    )
    with pytest.raises(ConfigError, match="holds a reproduction of figure4 at budget smoke"):
        experiments.reproduce("figure5", "smoke", out, data_dir=shared_data_dir, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a reproduction"):
        experiments.reproduce("figure4", "smoke", other, data_dir=shared_data_dir, progress=False)
    assert (other / "notes.txt").read_text() == "mine"  # untouched


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["reproduce", "figure7"], "invalid choice: 'figure7'"),
        (["reproduce", "figure2", "--budget", "huge"], "invalid choice: 'huge'"),
        (["reproduce", "figure2", "--mnist", "fashion"], "invalid choice: 'fashion'"),
        (["reproduce", "figure2", "--jobs", "0"], "expected a positive integer"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_cli_mismatched_out_exits_2(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / experiments.MANIFEST).write_text(
        json.dumps({"figure": "figure2", "budget": "quick", "mnist": "binarized-mnist"})
    )
    assert main(["reproduce", "figure2", "--budget", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aevb: error: --out") and err.count("\n") == 1
    assert main(["reproduce", "figure5", "--reuse", str(tmp_path / "none"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aevb: error: --reuse {tmp_path / 'none'}: not a reproduction")
    assert err.count("\n") == 1
    argv = ["reproduce", "figure4", "--panel", "mnist-nz20", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "aevb: error: unknown --panel 'mnist-nz20' for figure4; choose from frey-nz2, mnist-nz2\n"
    )


# ------------------------------------------------------------------ the documented commands
ROOT = Path(__file__).resolve().parents[1]


def _documented_commands() -> list[list[str]]:
    """Every `aevb reproduce ...` written in the README and docs/REPRODUCTION.md, as argv."""
    cmds = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "REPRODUCTION.md"):
        for m in re.finditer(r"aevb reproduce [^`#\n(]*", doc.read_text()):
            cmds.append(shlex.split(m.group(0))[1:])  # without "aevb"
    return cmds


def test_documented_reproduce_commands_parse_and_cover_every_figure():
    from aevb.cli import build_parser

    cmds = _documented_commands()
    figs = {build_parser().parse_args(argv).figure for argv in cmds}
    assert figs == set(experiments.FIGURES)


def test_every_command_in_reproduction_md_parses():
    """The benchmark's train and evaluate commands are too long for the suite; their options are
    checked here against the parser, so a renamed or removed option fails."""
    from aevb.cli import build_parser

    lines = [
        ln.strip()
        for ln in (ROOT / "docs" / "REPRODUCTION.md").read_text().splitlines()
        if ln.strip().startswith("aevb ")
    ]
    assert {ln.split()[1] for ln in lines} >= {"reproduce", "train", "evaluate"}
    for ln in lines:
        build_parser().parse_args(shlex.split(ln.split("#")[0])[1:])


def test_readme_figure4_command_runs_at_smoke_budget(tmp_path, shared_data_dir, capsys):
    argv = next(a for a in _documented_commands() if a[1] == "figure4")
    argv = [a if a != "quick" else "smoke" for a in argv]
    out = tmp_path / "f4"
    code = main(argv + ["--out", str(out), "--data-dir", str(shared_data_dir), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "figure4.png"), str(out / "figure4.md"), str(out / "figure4.json")]
    assert _png_size(out / "figure4.png")[0] > 300


def test_doc_images_stay_small():
    images = list((ROOT / "docs").rglob("*.png"))
    assert images
    for p in images:
        assert p.stat().st_size < 300_000, p


def test_sigint_to_a_parallel_reproduction_stops_its_running_curves(tmp_path, shared_data_dir):
    """SIGINT to the parent alone (kill -INT; a terminal's Ctrl-C reaches every worker too): the
    curves training in the worker processes are interrupted, not waited for to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "f4"
    argv = ["reproduce", "figure4", "--budget", "smoke", "--jobs", "2", "--quiet"]
    argv += ["--out", str(out), "--data-dir", str(shared_data_dir)]
    code = "import sys; from aevb import experiments, cli\n"
    code += "experiments.SAMPLES['figure4']['smoke'] = 10**9\n"  # hours: never waited for
    code += f"sys.exit(cli.main({argv!r}))"
    env = dict(os.environ, AEVB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that a failure leaves no worker
    )
    curves = [out / "frey-nz2" / "aevb", out / "mnist-nz2" / "aevb"]
    try:
        deadline = time.monotonic() + 180
        while not all((d / runs.CONFIG).exists() for d in curves) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # both curves are training in their workers
        proc.send_signal(signal.SIGINT)  # the parent only
        _, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "aevb: interrupted; run the same command again to continue"
    )
    assert all((d / runs.CONFIG).exists() for d in curves)  # they had started


def test_ctrl_c_stops_with_one_line_and_the_same_command_continues(tmp_path, shared_data_dir):
    """SIGINT in the middle of a curve: exit 130 and a line saying to rerun; the rerun finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "f4"
    argv = [sys.executable, "-m", "aevb", "reproduce", "figure4", "--budget", "smoke"]
    argv += ["--out", str(out), "--data-dir", str(shared_data_dir)]
    env = dict(os.environ, AEVB_OFFLINE="1", OMP_NUM_THREADS="1")
    # a budget long enough to be inside the first curve's training when the signal comes
    slow = argv[:4] + ["--quiet"] + argv[4:]
    code = "import sys; from aevb import experiments, cli\n"
    code += "experiments.SAMPLES['figure4']['smoke'] = 10**7\n"
    code += f"sys.exit(cli.main({slow[3:]!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    first = out / "frey-nz2" / "aevb"
    deadline = time.monotonic() + 120
    while not (first / runs.CONFIG).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "aevb: interrupted; run the same command again to continue"
    )
    assert not (out / "figure4.png").exists()
    # the same command (at the real smoke budget) resumes the stopped curve and finishes
    res = subprocess.run(argv + ["--quiet"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "figure4.png").is_file()
    assert runs.read_metrics(first)[-1]["samples_seen"] >= experiments.SAMPLES["figure4"]["smoke"]

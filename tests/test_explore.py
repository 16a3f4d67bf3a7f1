"""``aevb explore`` (docs/EXPLORE.md): the server's endpoints on every kind of run, its refusals
(bad parameters, paths outside the page, other hosts, too many requests at once), the command
line, and the page itself in headless Chromium (marked ``browser``; skipped without one).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

import aevb
from aevb import runs
from aevb.cli import main
from aevb.data import load_dataset
from aevb.errors import ConfigError, RunError
from aevb.explorer import ExploreServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_explore  # noqa: E402

TINY = dict(hidden=30, budget=1_500, lr=0.02, eval_per_decade=1, eval_size=100)


def _get(server: ExploreServer, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation of the path)."""
    host, port = server.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.putrequest("GET", target, skip_host=headers is not None and "Host" in headers)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _api(server: ExploreServer, path: str, **params: object) -> dict:
    q = "&".join(f"{k}={quote(str(v), safe=',')}" for k, v in params.items())
    status, body = _get(server, f"/api/{path}" + (f"?{q}" if q else ""))
    assert status == 200, body
    return json.loads(body)


def _pixels(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255).astype(int)


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, small_run) -> Path:
    """N_z = 2 on the embedded digits (297 labelled test images)."""
    out = tmp_path_factory.mktemp("explore") / "digits2"
    small_run(out, latent_dim=2, **TINY)
    return out


@pytest.fixture(scope="module")
def serving(digits_run):
    with aevb.explore(digits_run) as server:
        yield server


def test_map_has_one_point_per_test_datapoint_with_labels(serving, digits_run):
    info = _api(serving, "info")
    assert info["points"] == info["total"] == 297 and info["latent_dim"] == 2
    assert info["kind"] == "image" and info["image_shape"] == [8, 8] and info["labelled"]
    assert "encoder q(z|x)" in info["card"] and info["curves"][-1]["test_bound"] < 0
    assert len(info["active"]["kl_per_dim"]) == 2
    pts = _api(serving, "points")
    assert pts["projection"]["name"] == "latent" and len(pts["x"]) == len(pts["y"]) == 297
    assert pts["labels"] == load_dataset("digits").labels["test"].tolist()
    enc = aevb.encode(digits_run)  # the map is the encoder means themselves (N_z = 2)
    assert np.allclose(np.stack([pts["x"], pts["y"]], 1), enc.mu, atol=1e-4)


def test_decode_point_and_path_match_the_api(serving, digits_run):
    d = _api(serving, "decode", p="0.3,-1.2")
    assert d["z"] == pytest.approx([0.3, -1.2]) and d["p"] == pytest.approx([0.3, -1.2])
    want = _pixels(aevb.decode(digits_run, np.array([[0.3, -1.2]]))[0])
    assert np.abs(np.array(d["data"]["pixels"]) - want).max() <= 1
    p = _api(serving, "point", i=5)
    rec = aevb.reconstruct(digits_run, n=6)
    assert (
        np.abs(np.array(p["reconstruction"]["pixels"]) - _pixels(rec.reconstruction[5])).max() <= 1
    )
    assert np.array_equal(p["data"]["pixels"], _pixels(rec.x[5]))
    assert p["label"] == load_dataset("digits").labels["test"][5] and p["row"] == 5
    path = _api(serving, "path", a=3, b=40, steps=5)
    z = np.array(path["z"])
    assert len(path["data"]) == 5 and np.allclose(
        z[[0, -1]], np.array(aevb.encode(digits_run).mu)[[3, 40]], atol=1e-5
    )
    assert np.allclose(z[2], z[[0, -1]].mean(0))  # linear: the midpoint
    sph = _api(serving, "path", a=3, b=40, method="spherical", t="0,0.5,1")
    zs = np.array(sph["z"])
    assert np.allclose(zs[[0, 2]], z[[0, -1]], atol=1e-5)
    z0, z1 = z[0], z[-1]  # slerp's midpoint: sin(w/2) / sin(w) (z0 + z1)
    w = np.arccos(z0 @ z1 / np.linalg.norm(z0) / np.linalg.norm(z1))
    assert np.allclose(zs[1], np.sin(w / 2) / np.sin(w) * (z0 + z1), atol=1e-4)
    grid = _api(serving, "grid", n=4, x="-2,2", y="-2,2")
    assert len(grid["data"]) == 16 and grid["p"][0] == [-2, 2] and grid["p"][-1] == [2, -2]


# --------------------------------------------------------------------------- N_z > 2: PCA
@pytest.fixture(scope="module")
def digits5_run(tmp_path_factory, small_run) -> Path:
    out = tmp_path_factory.mktemp("explore") / "digits5"
    small_run(out, latent_dim=5, **TINY)
    return out


def test_pca_map_decodes_the_pre_image(digits5_run):
    with aevb.explore(digits5_run) as server:
        info = _api(server, "info")
        assert info["default_projection"] == "pca"
        pts = _api(server, "points")
        pr = pts["projection"]
        m, off, mean = np.array(pr["matrix"]), np.array(pr["offset"]), np.array(pr["mean"])
        assert m.shape == (2, 5) and np.allclose(m @ m.T, np.eye(2))
        mu = np.array(aevb.encode(digits5_run).mu, dtype=np.float64)
        assert np.allclose(mean, mu.mean(0), atol=1e-5)
        assert np.allclose(np.stack([pts["x"], pts["y"]], 1), mu @ m.T - off, atol=1e-4)
        assert pr["explained"][0] >= pr["explained"][1] > 0
        u = np.array([0.7, -0.4])
        d = _api(server, "decode", p="0.7,-0.4")
        z = np.array(d["z"])
        assert np.allclose(m @ z - off, u)  # projecting the decoded latent gives the cursor back
        assert np.allclose(z, mean + m.T @ u)  # the mean plus the PCA components
        want = _pixels(aevb.decode(digits5_run, z[None])[0])
        assert np.abs(np.array(d["data"]["pixels"]) - want).max() <= 1
        # two latent axes: those two set, the other three at their mean
        d = _api(server, "decode", p="1.5,-2", projection="z2,z4")
        z = np.array(d["z"])
        assert z[1] == pytest.approx(1.5) and z[3] == pytest.approx(-2)
        assert np.allclose(z[[0, 2, 4]], mu.mean(0)[[0, 2, 4]], atol=1e-5)
        assert _api(server, "points", projection="z2,z4")["projection"]["axes"] == ["z2", "z4"]
        # a latent point given whole
        d = _api(server, "decode", z="0,0,0,0,0")
        assert d["z"] == [0, 0, 0, 0, 0]
        for bad in ("latent", "z1,z1", "z0,z2", "z2,z9", "pca2"):
            assert _get(server, f"/api/points?projection={bad}")[0] == 400


# --------------------------------------------------------------------------- tabular, colour
@pytest.fixture(scope="module")
def table_run(tmp_path_factory, small_run) -> tuple[Path, np.ndarray]:
    """Real-valued columns with a header, standardised: a Gaussian (linear) likelihood."""
    folder = tmp_path_factory.mktemp("explore")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(240, 2))
    x = np.concatenate([base @ rng.normal(size=(2, 4)) * 3 + 10, rng.normal(size=(240, 2))], 1)
    path = folder / "table.csv"
    np.savetxt(path, x, delimiter=",", header="a,b,c,d,e,f", comments="", fmt="%.6f")
    out = folder / "table"
    small_run(out, data=str(path), latent_dim=2, standardize=True, **TINY)
    return out, np.loadtxt(path, delimiter=",", skiprows=1)


def test_tabular_run_decodes_rows_in_data_units(table_run):
    run, x = table_run
    with aevb.explore(run) as server:
        info = _api(server, "info")
        assert info["kind"] == "table" and info["image_shape"] is None
        assert info["columns"] == list("abcdef") and info["likelihood"] == "gaussian-linear"
        assert not info["labelled"] and _api(server, "points")["labels"] is None
        p = _api(server, "point", i=0)
        assert len(p["data"]["values"]) == 6
        want = aevb.reconstruct(run, n=1)
        assert any(np.allclose(row, want.x[0], atol=1e-5) for row in x)  # a row of the file
        assert np.allclose(p["data"]["values"], want.x[0], rtol=1e-4, atol=1e-4)
        assert np.allclose(
            p["reconstruction"]["values"], want.reconstruction[0], rtol=1e-4, atol=1e-4
        )
        d = _api(server, "decode", p="0.5,0.5")
        assert np.allclose(
            d["data"]["values"], aevb.decode(run, np.array([[0.5, 0.5]]))[0], rtol=1e-4
        )
        assert max(abs(v) for v in d["data"]["values"]) > 2  # data units, not z-scores


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, small_run) -> Path:
    """A folder of 8x8 RGB patches of scikit-learn's bundled photographs, in two classes."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations
    images = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
    root = tmp_path_factory.mktemp("explore") / "patches"
    rng = np.random.default_rng(1)
    for name in ("china", "flower"):
        photo = np.asarray(Image.open(images / f"{name}.jpg"))
        (root / name).mkdir(parents=True)
        for k in range(60):
            y, x = rng.integers(0, photo.shape[0] - 8), rng.integers(0, photo.shape[1] - 8)
            Image.fromarray(photo[y : y + 8, x : x + 8]).save(root / name / f"{k:02d}.png")
    out = root.parent / "colour"
    small_run(out, data=str(root), latent_dim=3, **TINY)
    return out


def test_colour_run_has_rgb_pixels_and_folder_labels(colour_run):
    with aevb.explore(colour_run) as server:
        info = _api(server, "info")
        assert info["image_shape"] == [8, 8, 3] and info["label_names"] == ["china", "flower"]
        pts = _api(server, "points")
        assert len(pts["x"]) == info["points"] == 12 and set(pts["labels"]) <= {0, 1}
        d = _api(server, "decode", p="0,0")  # PCA: the pre-image of the map's origin
        want = _pixels(aevb.decode(colour_run, np.array([d["z"]]))[0])
        assert len(d["data"]["pixels"]) == 192
        assert np.abs(np.array(d["data"]["pixels"]) - want).max() <= 1
        p = _api(server, "point", i=0)
        assert p["label_name"] in ("china", "flower")


# --------------------------------------------------------------------------- refusals
BAD = [
    "/api/decode?p=1,2,3",  # a latent point of the wrong length
    "/api/decode?z=1,2,3",
    "/api/decode?p=nan,1",
    "/api/decode?p=inf,1",
    "/api/decode?p=1e300,1",
    "/api/decode?p=1,x",
    "/api/decode?p=",
    "/api/decode",  # missing
    "/api/decode?p=1,2&z=1,2",
    "/api/decode?p=1,2&p=3,4",
    "/api/decode?p=1,2&evil=1",
    "/api/grid?n=100000&x=-1,1&y=-1,1",  # a huge grid
    "/api/grid?n=4&x=-1,1",
    "/api/grid?n=-3&x=-1,1&y=-1,1",
    "/api/point?i=297",  # an unknown image index
    "/api/point?i=-1",
    "/api/point?i=1.5",
    "/api/point?i=99999999999999999999999",
    "/api/point",
    "/api/path?a=1",
    "/api/path?a=1&b=2&steps=100000",
    "/api/path?a=1&b=2&t=1.5",
    "/api/path?a=1&b=2&method=cubic",
    "/api/path?a=1&b=2&t=0.5&steps=3",
    "/api/points?projection=pca",  # N_z = 2: the latent space itself
    "/api/info?x=1",
    "/api/points?" + "&".join(f"k{i}=1" for i in range(200)),
]


def test_bad_requests_get_a_400_with_a_json_message(serving):
    for target in BAD:
        status, body = _get(serving, target)
        assert status == 400, (target, body)
        msg = json.loads(body)["error"]
        assert msg and "\n" not in msg and "Traceback" not in msg, (target, msg)
    assert _api(serving, "decode", p="1,1")["p"] == [1, 1]  # still serving


OUTSIDE = [
    "/../",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/static/../server.py",
    "/static/%2e%2e/state.py",
    "/static/..%2fserver.py",
    "/static/",
    "/static/explore.js/../../server.py",
    "/api/../static/explore.js",
    "//etc/passwd",
    "/etc/passwd",
    "/C:/Windows/win.ini",
    "http://127.0.0.1/../etc/passwd",
    "/index.html%00.js",
    "/api/",
    "/api/info/../points",
]


def test_only_the_page_and_its_endpoints_are_served(serving):
    for target in OUTSIDE:
        status, body = _get(serving, target)
        assert status == 404, (target, status, body[:80])
        assert json.loads(body) == {"error": "not found", "status": 404}
    status, body = _get(serving, "/")
    assert status == 200 and b"/static/explore.js" in body
    for asset in ("/static/explore.js", "/static/explore.css"):
        assert _get(serving, asset)[0] == 200
    # a page elsewhere reaching it through DNS rebinding carries its own Host
    status, body = _get(serving, "/api/info", {"Host": "attacker.example:80"})
    assert status == 403 and "localhost" in json.loads(body)["error"]
    assert _get(serving, "/api/info", {"Host": f"localhost:{serving.server_address[1]}"})[0] == 200
    host, port = serving.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("POST", "/api/decode?p=1,1", body=b"{}")
    r = c.getresponse()
    assert r.status == 405 and "read-only" in json.loads(r.read())["error"]
    c.close()
    for garbage in (b"BREW / HTTP/1.1", b"GET / HTTP/9.9", b"GET /" + b"a" * 70000 + b" HTTP/1.1"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(garbage + b"\r\n\r\n")
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        # a JSON error (after a status line, except where the request was not HTTP/1.x)
        err = json.loads(reply[reply.index(b"{") :])
        assert err["status"] in (400, 414, 501, 505) and err["error"], reply[:200]


def _hammer(server: ExploreServer, n: int = 200, threads: int = 16) -> Counter:
    """n requests from ``threads`` threads: the status of each (an exception's name if none)."""
    targets = ["/api/decode?p=0.1,0.2", "/api/point?i=7", "/api/path?a=1&b=9&steps=8", "/"]

    def one(k: int) -> int | str:
        try:
            status, body = _get(server, targets[k % len(targets)])
            if status != 200:
                assert json.loads(body)["status"] == status
            return status
        except Exception as e:  # a connection reset or a timeout: what must not happen
            return type(e).__name__

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(n)))


def test_concurrent_requests_are_served_or_refused_cleanly(digits_run, capsys):
    with aevb.explore(digits_run) as server:  # 8 workers, a queue of 2 s
        got = _hammer(server)
    stats = dict(server.stats)  # stop() waited for the last workers to count their requests
    assert set(got) <= {200, 503}, got
    assert got[200] == stats["served"] and got[503] == stats["refused"]
    assert 1 <= stats["peak"] <= 8
    # one worker, no queueing: most are refused, each with a clean 503
    with aevb.explore(digits_run, workers=1) as server:
        server.queue_timeout = 0.0
        got1 = _hammer(server)
    stats1 = dict(server.stats)
    assert set(got1) <= {200, 503} and sum(got1.values()) == 200, got1
    assert got1[503] == stats1["refused"] and stats1["peak"] == 1
    with capsys.disabled():
        print(
            f"\nexplore concurrency: 200 requests from 16 threads, 8 workers: {got[200]} served, "
            f"{got[503]} refused, peak {stats['peak']} at once; 1 worker without a queue: "
            f"{got1[200]} served, {got1[503]} refused"
        )


# --------------------------------------------------------------------------- the run on disk
def _tree(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_the_run_is_read_only_and_verified_first(digits_run, tmp_path):
    before = _tree(digits_run)
    with aevb.explore(digits_run) as server:
        _api(server, "decode", p="0,0")
        _api(server, "info")
    assert _tree(digits_run) == before
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in before:
        (bad / name).parent.mkdir(parents=True, exist_ok=True)
        (bad / name).write_bytes((digits_run / name).read_bytes())
    raw = bytearray((bad / runs.METRICS).read_bytes())
    raw[10] ^= 1  # one bit of the metrics the manifest recorded
    (bad / runs.METRICS).write_bytes(bytes(raw))
    with pytest.raises(RunError):
        aevb.explore(bad)


def test_options_are_checked(digits_run, capsys):
    with pytest.raises(ConfigError, match="port"):
        aevb.explore(digits_run, port=70000)
    with pytest.raises(ConfigError, match="max_points"):
        aevb.explore(digits_run, max_points=1)
    with aevb.explore(digits_run, max_points=50) as server:
        info = _api(server, "info")
        assert info["points"] == 50 and info["total"] == 297 and info["thinned"]
        assert len(_api(server, "points")["rows"]) == 50
    capsys.readouterr()
    server = aevb.explore(digits_run, host="0.0.0.0")  # bound, never started
    try:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("aevb: warning:") and "0.0.0.0" in err[0]
        assert not server.local_only
    finally:
        server.stop()
    assert main(["explore", str(digits_run / "nope")]) == 2
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]) == 1


# --------------------------------------------------------------------------- command line
def _start_cli(run: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", AEVB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aevb", "explore", str(run), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("aevb explore: http://"):
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.communicate()[1][-2000:]}")
    return proc, line.split()[2]


def _ctrl_c(proc: subprocess.Popen) -> tuple[int, list[str]]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip()]


def test_cli_prints_the_url_and_stops_on_ctrl_c_with_130(digits_run):
    proc, url = _start_cli(digits_run)
    try:
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"aevb explore" in r.read()
        with urllib.request.urlopen(url + "api/points", timeout=30) as r:
            assert len(json.loads(r.read())["x"]) == 297
    finally:
        rc, err = _ctrl_c(proc)
    assert rc == 130 and err == ["aevb: explore stopped"], (rc, err)


def test_cli_bad_arguments_exit_2_with_one_line(digits_run, capsys):
    for argv in (["--port", "70000"], ["--max-points", "1"]):
        with pytest.raises(SystemExit) as e:
            main(["explore", str(digits_run), *argv])
        assert e.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("aevb: error:"), err
    assert main(["explore", str(digits_run), "--split", "nope"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "nope" in err[0], err


# --------------------------------------------------------------------------- the paper's model
def test_decode_latency_of_the_paper_mnist_model(tmp_path, small_run, shared_data_dir, capsys):
    """784-500-20 on binarized MNIST: the map holds all 10 000 test images, a decode over HTTP
    takes well under 100 ms (measured here from a Python client; in the browser by the browser
    test and benchmarks/bench_explore.py)."""
    out = tmp_path / "mnist"
    small_run(
        out,
        data="binarized-mnist",
        data_dir=str(shared_data_dir),
        latent_dim=20,
        hidden=500,
        budget=2_000,
        train_size=2_000,
        eval_size=200,
        eval_per_decade=1,
    )
    with aevb.explore(out) as server:
        assert _api(server, "info")["points"] == 10_000
        times = []
        for k in range(40):
            t = time.perf_counter()
            d = _api(server, "decode", p=f"{k / 20 - 1},0.5")
            times.append(1000 * (time.perf_counter() - t))
            assert len(d["data"]["pixels"]) == 784
    med = float(np.median(times))
    assert med < 100, times
    with capsys.disabled():
        print(f"\nexplore: 784-500-20 decode over HTTP, median {med:.1f} ms ({len(times)})")


# --------------------------------------------------------------------------- in a browser
@pytest.mark.browser
def test_the_page_in_a_browser(digits_run, tmp_path, capsys):
    why = bench_explore.browser_missing()
    if why:
        pytest.skip(f"no browser test: {why}")
    proc, url = _start_cli(digits_run)
    try:
        driver = bench_explore.chrome()
        try:
            shot = tmp_path / "explore.png"
            res = bench_explore.drive(driver, url, moves=24, screenshot=shot)
        finally:
            driver.quit()
    finally:
        rc, err = _ctrl_c(proc)
    assert rc == 130 and err == ["aevb: explore stopped"]
    assert res["errors"] == ""
    assert res["points"] == 297  # one point per test datapoint
    assert len(set(res["decoded_images"])) > 1  # the decoded image changed as the cursor moved
    a, b = res["picked"]
    assert a is not None and b is not None and a != b and res["frames"] == 10
    assert res["slider_images"][0] != res["slider_images"][-1]
    assert res["hovered"].startswith(f"point {a} ") and "label" in res["hovered"]
    t = res["timings"]
    assert t["decodes"] >= 5 and t["fetch_ms"]["median"] < 100
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(
            f"\nexplore in Chromium: {t['decodes']} decodes, request median "
            f"{t['fetch_ms']['median']} ms p95 {t['fetch_ms']['p95']} ms, drawn median "
            f"{t['drawn_ms']['median']} ms ({bench_explore.describe_cpu()})"
        )


def test_static_files_are_package_data():
    """The page ships in the wheel: setuptools package-data names the static folder."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = cfg["tool"]["setuptools"]["package-data"]["aevb"]
    assert any(p.startswith("explorer/static") for p in data)
    static = ROOT / "src" / "aevb" / "explorer" / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "explore.js", "explore.css"}

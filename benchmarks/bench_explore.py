"""``aevb explore`` in a real browser: decode latency per cursor move, and the docs' screenshot.

Starts the explorer on a run (by default trains the paper's MNIST model first: 784-500-2 on
binarized MNIST), opens the page in headless Chromium driven by Selenium, drags the cursor over
the map, runs the interpolation slider, and reports the time per decode measured in the page: the
fetch of each /api/decode request (performance.now around fetch + JSON parse; also the browser's
Resource Timing of the request) and the time until the decoded image is drawn. The CPU is named
beside the figures.

    python benchmarks/bench_explore.py --explore-data mnist --screenshot docs/figures/explore.png
    python benchmarks/bench_explore.py --run runs/digits --moves 60 --json out.json

Needs ``pip install selenium`` (the dev extra) and Chromium with its driver (Debian: apt-get
install chromium chromium-driver); Selenium is pointed at the system chromedriver, never at a
download. tests/test_explore.py drives the page through :func:`drive` on a small digits run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aevb.hardware import describe_cpu

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def browser_missing() -> str | None:
    """Why no browser test can run here (None when Selenium, Chromium and its driver exist)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _browser() is None:
        return "no Chromium found (Debian: apt-get install chromium chromium-driver)"
    if _driver() is None:
        return "no chromedriver found (Debian: apt-get install chromium-driver)"
    return None


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _driver() -> str | None:
    found = shutil.which("chromedriver")
    return found or next((p for p in DRIVERS if Path(p).is_file()), None)


def chrome(width: int = 1360, height: int = 1900) -> Any:
    """Headless Chromium through the system chromedriver (Selenium's own download disabled)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _browser() or "chromium"
    for a in (
        "--headless=new",
        "--no-sandbox",  # root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(_driver() or "chromedriver"), options=opts)


def _wait(driver: Any, script: str, timeout: float = 20.0) -> Any:
    """Poll a JavaScript expression until it is truthy; its value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"the page never satisfied: {script}")
        time.sleep(0.05)


def _decoded_image(driver: Any) -> str:
    """The decoded view's pixels (a data URL of its canvas) or its table's text."""
    return driver.execute_script(
        "const c = document.querySelector('#decoded canvas');"
        "return c ? c.toDataURL() : document.getElementById('decoded').innerText;"
    )


def _map_offset(driver: Any, k: int) -> tuple[int, int]:
    """Point k's position on the map canvas, relative to its centre (Selenium's origin)."""
    sx, sy = driver.execute_script(
        "const p = aevbExplore.state.points, k = arguments[0]; return toScreen(p.x[k], p.y[k]);",
        k,
    )
    return round(sx - 280), round(sy - 280)


def drag_cursor(driver: Any, moves: int, pause: float = 0.04) -> list[str]:
    """Drag the cursor across the map in ``moves`` steps; the decoded image after each third."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "map")
    seen = []
    start = driver.execute_script("return aevbExplore.decodes;")
    chain = ActionChains(driver, duration=10).move_to_element_with_offset(canvas, -230, -200)
    chain.click_and_hold().perform()
    for k in range(moves):  # a diagonal sweep, in small steps, with a pause for each decode
        ActionChains(driver, duration=10).move_by_offset(11, 9).pause(pause).perform()
        if k % 3 == 2:
            seen.append(_decoded_image(driver))
    ActionChains(driver).release().perform()
    _wait(driver, f"aevbExplore.decodes > {start} && !decodeBusy")
    seen.append(_decoded_image(driver))
    return seen


def run_slider(driver: Any, values: tuple[int, ...] = (0, 250, 500, 750, 1000)) -> list[str]:
    """Move the interpolation slider through ``values`` (of 1000); the view at each."""
    out = []
    for v in values:
        driver.execute_script(
            "const s = document.getElementById('slider'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));",
            v,
        )
        _wait(driver, f"Number(document.getElementById('slider-view').dataset.t) === {v} / 1000")
        _wait(driver, "!sliderBusy")
        out.append(
            driver.execute_script(
                "const c = document.querySelector('#slider-view canvas');"
                "return c ? c.toDataURL() : document.getElementById('slider-view').innerText;"
            )
        )
    return out


def pick_two(driver: Any) -> tuple[int, int]:
    """Click two far-apart points of the map (A, then B); the points the page picked."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "map")
    ends = driver.execute_script(
        "const x = aevbExplore.state.points.x; let lo = 0, hi = 0;"
        "x.forEach((v, k) => { if (v < x[lo]) lo = k; if (v > x[hi]) hi = k; }); return [lo, hi];"
    )
    for k in ends:
        dx, dy = _map_offset(driver, k)
        ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    _wait(driver, "document.getElementById('strip').dataset.frames")
    return tuple(driver.execute_script("return [aevbExplore.state.a, aevbExplore.state.b];"))


def hover_point(driver: Any, k: int) -> str:
    """Rest the mouse on point k; the caption the page shows for it."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "map")
    dx, dy = _map_offset(driver, k)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
    _wait(driver, "document.getElementById('hover-info').textContent.startsWith('point')")
    return driver.find_element("id", "hover-info").text


def save_screenshot(driver: Any, path: Path) -> None:
    """The window as a PNG of at most 256 colours (a third of the size; the page has few)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    q = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q.save(path, optimize=True)


def timings(driver: Any) -> dict:
    """Per-decode times in ms, as the page measured them, and the browser's Resource Timing."""
    page = driver.execute_script("return aevbExplore.timings;")
    resource = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/api/decode')).map(e => e.duration);"
    )
    return {
        "decodes": len(page),
        "fetch_ms": _summary([t["fetch"] for t in page]),
        "drawn_ms": _summary([t["total"] for t in page]),
        "resource_ms": _summary(resource),
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {
        "median": round(statistics.median(v), 2),
        "p95": round(v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))], 2),
        "max": round(v[-1], 2),
    }


def drive(driver: Any, url: str, moves: int = 30, screenshot: str | Path | None = None) -> dict:
    """Open the page, check the map, drag the cursor, pick two points, run the slider, hover a
    point; what was seen and the decode timings (tests/test_explore.py asserts on them)."""
    driver.get(url)
    _wait(driver, "window.aevbExplore && aevbExplore.ready")
    points = int(driver.find_element("id", "map").get_attribute("data-points"))
    images = drag_cursor(driver, moves)
    a, b = pick_two(driver)
    slider = run_slider(driver)
    hovered = hover_point(driver, a)
    errors = driver.execute_script(
        "const s = document.getElementById('status'); return s.hidden ? '' : s.textContent;"
    )
    if screenshot is not None:
        save_screenshot(driver, Path(screenshot))
    return {
        "points": points,
        "decoded_images": images,
        "picked": (a, b),
        "frames": int(
            driver.execute_script("return document.getElementById('strip').dataset.frames;")
        ),
        "slider_images": slider,
        "hovered": hovered,
        "errors": errors,
        "timings": timings(driver),
    }


def _train(out: Path, args: argparse.Namespace) -> Path:
    import aevb

    aevb.train(
        args.data,
        out,
        data_dir=os.environ.get("AEVB_DATA_DIR"),
        latent_dim=args.latent_dim,
        hidden=500,
        budget=args.budget,
        progress=False,
        draw_figures=False,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="an existing run directory (default: train one)")
    p.add_argument(
        "--data", default="binarized-mnist", help="the run's training data (binarized-mnist)"
    )
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--budget", type=int, default=1_000_000, help="training samples")
    p.add_argument(
        "--explore-data",
        help="the points on the map, as aevb explore --data (default: the run's test split)",
    )
    p.add_argument("--moves", type=int, default=60, help="cursor moves (decodes asked for)")
    p.add_argument("--screenshot", help="PNG of the page after the session")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    why = browser_missing()
    if why:
        sys.exit(f"bench_explore: {why}")
    import torch

    import aevb

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else _train(Path(tmp) / "run", args)
        with aevb.explore(run, data=args.explore_data) as server:
            driver = chrome()
            try:
                res = drive(driver, server.url, args.moves, args.screenshot)
            finally:
                driver.quit()
            stats = dict(server.stats)
    res = {
        "run": str(args.run or f"{args.data}, 784-500-{args.latent_dim}, {args.budget:,} samples"),
        "cpu": describe_cpu(),
        "points": res["points"],
        "timings": res["timings"],
        "server": stats,
    }
    t = res["timings"]
    print(f"run: {res['run']}; cpu: {res['cpu']}; {res['points']} points on the map")
    print(f"server: {res['server']}")
    for key, what in (
        ("fetch_ms", "decode request (fetch + JSON)"),
        ("resource_ms", "decode request (Resource Timing)"),
        ("drawn_ms", "decode until drawn"),
    ):
        s = t[key]
        print(f"{what:34s} median {s['median']:7.2f} ms  p95 {s['p95']:7.2f} ms  ({t['decodes']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

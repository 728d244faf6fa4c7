"""The interactive report (grok_jax.report): the page of a tiny store opened in
headless Chromium (a click shows the cell's stored numbers, the step slider
recolours cells as the store's logs say, no console errors), the page's parts, the
re-run commands against the sweep's own command-line parser, and the CLI's errors.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them); they skip without them, except under ``CI=true``, where they fail.
"""

import base64
import gzip
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest
import zarr

import grok_jax
from grok_jax import config as cfg
from grok_jax import figures, phases, plotting, report, results
from grok_jax import sweep as sweep_cli

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
XI = ["--config.sweep.xi=(0.0,0.2,0.4)"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny grid with 3 ξ (2 wd × 3 ξ × 2 seeds: not square, so that no axes can
    be swapped unseen), run by the command line: its output directory, with the
    report the sweep writes by default."""
    out = tmp_path_factory.mktemp("report") / "tiny"
    proc = subprocess.run([sys.executable, "-m", "grok_jax.sweep", "--grid=tiny", *XI, f"--out={out}",
                           "--compilation_cache="], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out / report.REPORT}" in proc.stdout
    return out


@pytest.fixture(scope="module")
def ds(store):
    return grok_jax.load_results(store, parameters=False)


# --- the page in Chromium ---

@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through its own chromedriver (no downloads)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: .ci/run installs chromium and chromium-driver")
        pytest.skip(f"no browser: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1600", "--force-device-scale-factor=1",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='grok_jax_chromium_')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _drawn(driver):
    """Waits until the page has unpacked plotly.js and drawn the phase map."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", "#phase-map .heatmaplayer"))


def _open(driver, path):
    driver.get(f"file://{path}")
    _drawn(driver)
    driver.get_log("browser")  # start the console afresh


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _cell_box(driver, x, y, map_id="phase-map"):
    """Viewport pixels of cell (x, y) of a map: its centre and size."""
    return driver.execute_script("""
        const gd = document.getElementById(arguments[2]), L = gd._fullLayout, r = gd.getBoundingClientRect();
        const at = (ax, v) => ax.l2p(v) + ax._offset;
        return [r.left + at(L.xaxis, arguments[0]), r.top + at(L.yaxis, arguments[1]),
                Math.abs(at(L.xaxis, 1) - at(L.xaxis, 0)), Math.abs(at(L.yaxis, 1) - at(L.yaxis, 0))];""",
                                 x, y, map_id)


def _click(driver, px, py):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(px), int(py)).click()
    actions.perform()
    ActionChains(driver).reset_actions()


def _move_away(driver):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(5, 5)  # the page's corner: no hover label over the maps
    actions.perform()


def _pixel(driver, px, py):
    """The colour the browser shows at a viewport pixel, from a screenshot."""
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    return image.getpixel((int(px), int(py)))


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _lighter(rgb):  # how the page draws inferred cells
    return tuple(round(v + (255 - v) * 0.55) for v in rgb)


def _close(a, b, tol=3):
    return all(abs(u - v) <= tol for u, v in zip(a, b))


def _fill(driver, x, y):
    """A pixel inside cell (x, y) of the phase map, off its centre (the seed-share
    text), its diagonal (the inferred hatch) and its edge (the chosen-cell frame)."""
    cx, cy, w, h = _cell_box(driver, x, y)
    return _pixel(driver, cx + 0.3 * w, cy + 0.3 * h)


def test_a_click_shows_the_cells_stored_numbers(browser, store, ds):
    _open(browser, store / report.REPORT)
    x, y = 1, 1  # xi = 0.3, wd = 5
    cx, cy, _, _ = _cell_box(browser, x, y)
    _click(browser, cx, cy)
    head = browser.find_element("id", "cell-head").text
    assert head.startswith(f"wd={ds.wd.values[y]:g}, xi={ds.xi.values[x]:g}: ")
    for s in range(ds.sizes["seed"]):
        row = browser.find_element("css selector", f'#cell-table tr[data-seed="{s}"]')
        stored = float(ds.test_acc.isel(wd=y, xi=x, seed=s, step=-1))
        assert row.find_element("class name", "test_acc").text == f"{stored:.4f}"
        for peak in ("peak_test_acc", "peak_train_acc"):
            assert row.find_element("class name", peak).text == f"{float(ds[peak].isel(wd=y, xi=x, seed=s)):.4f}"
    config = json.loads(ds.attrs["config"])
    cell = {"wd": ds.wd.values[y].item(), "xi": ds.xi.values[x].item()}
    assert browser.find_element("id", "command").text == report.rerun_command(config, cell)
    assert browser.find_elements("css selector", "#curves .scatterlayer .trace")  # curves drawn
    assert browser.find_elements("css selector", "#hist .barlayer .trace")  # IPR histogram drawn
    assert not _errors(browser)


def _majority_at(ds, step_index):
    """Each cell's majority phase at a logged step, from the store's logs alone."""
    log = {k: ds[k].isel(step=slice(0, step_index + 1)).transpose("wd", "xi", "seed", "step").values
           for k in ("train_loss", "test_loss", "weight_norm", "train_acc", "test_acc")}
    xi = np.broadcast_to(ds.xi.values[None, :, None], log["train_acc"].shape[:3])
    return phases.majority(phases.classify_log(log, xi), axis=2)


def test_the_step_slider_recolours_cells_as_the_store_says(browser, store, ds):
    from selenium.webdriver.common.keys import Keys

    _open(browser, store / report.REPORT)
    final, _ = plotting.cell_phase(ds)
    first, share = _majority_at(ds, 1)  # the first logged step after step 0
    changed = [(y, x) for y, x in np.ndindex(first.shape) if first[y, x] != final.values[y, x] and share[y, x] == 1]
    assert changed, "the tiny store has no cell whose phase changes between its first logged steps and the end"
    y, x = changed[0]
    assert _close(_fill(browser, x, y), _rgb(plotting.PHASE_COLORS[final.values[y, x]]))
    slider = browser.find_element("id", "step")
    slider.send_keys(Keys.HOME, Keys.ARROW_RIGHT)  # step 0, then the next logged step
    _move_away(browser)
    assert browser.find_element("id", "step-label").text.startswith(f"{ds.step.values[1]} of ")
    assert _close(_fill(browser, x, y), _rgb(plotting.PHASE_COLORS[first[y, x]]))
    slider.send_keys(Keys.END)
    _move_away(browser)
    assert _close(_fill(browser, x, y), _rgb(plotting.PHASE_COLORS[final.values[y, x]]))
    assert not _errors(browser)


def test_the_page_is_not_blank(browser, store):
    from PIL import Image

    _open(browser, store / report.REPORT)
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    assert len(image.getcolors(1 << 24)) > 100  # maps, colour bar, text
    assert not _errors(browser)


def test_inferred_and_unrun_cells(browser, ds, tmp_path):
    """A partial grid: a cell inferred (drawn lighter, said on hover and click) and
    one not run (blank)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    partial = ds.copy(deep=True)
    (y_inf, x_inf), (y_not, x_not) = (0, 0), (1, 0)
    for (y, x), inferred in (((y_inf, x_inf), True), ((y_not, x_not), False)):
        sel = {"wd": y, "xi": x}
        for name in [n for n, v in partial.data_vars.items() if "step" in v.dims or n.startswith("ipr_")]:
            partial[name][sel] = np.nan
        partial["ran"][sel] = False
        partial["inferred"] = partial.get("inferred", partial["ran"] & False)
        partial["inferred"][sel] = inferred
        partial["phase"][sel] = phases.MEMORIZATION if inferred else -1
        partial["phase_majority"][sel] = phases.MEMORIZATION if inferred else -1
    path = report.write_report(partial, tmp_path)
    _open(browser, path)
    _move_away(browser)
    assert _close(_fill(browser, x_inf, y_inf), _lighter(_rgb(plotting.PHASE_COLORS[phases.MEMORIZATION])))
    assert _close(_fill(browser, x_not, y_not), (255, 255, 255))
    cx, cy, _, _ = _cell_box(browser, x_inf, y_inf)
    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(int(cx), int(cy))
    actions.perform()
    assert "inferred (not run): Memorization" in browser.find_element("css selector", ".hoverlayer").text
    _click(browser, cx, cy)
    assert "inferred" in browser.find_element("id", "cell-head").text
    assert browser.find_element("id", "command").text.startswith("python -m grok_jax.sweep --grid=tiny")
    assert "not run" in browser.find_element("id", "legend").text
    assert not _errors(browser)


def test_show_renders_the_page_in_a_notebook(browser, ds, tmp_path, monkeypatch):
    """``show`` hands Jupyter an iframe holding the whole page (IPython faked)."""
    shown = []
    display = types.ModuleType("IPython.display")
    display.HTML = lambda text: text
    display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    report.show(ds)
    (html,) = shown
    path = tmp_path / "notebook.html"
    path.write_text(f"<html><body>{html}</body></html>")
    browser.get(f"file://{path}")
    browser.switch_to.frame(browser.find_element("tag name", "iframe"))
    try:
        assert _drawn(browser)
        assert browser.find_element("id", "settings").text == plotting.title(ds)
    finally:
        browser.switch_to.default_content()
    assert not _errors(browser)


# --- the page without a browser ---

def test_the_page_is_self_contained(store):
    from plotly.offline import get_plotlyjs

    text = (store / report.REPORT).read_text()
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link[^>]*href=", text)  # nothing loaded from outside
    packed = re.search(r'<script type="application/octet-stream" id="plotly-gz">([^<]*)</script>', text).group(1)
    assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()
    assert len(text) < 3_000_000


def test_a_paper_scale_page_is_under_10_mb():
    """A store of the paper-scale wd_xi grid's shape (9 wd × 19 ξ × 3 seeds = 513
    lanes, 101 logged steps, N 500), its numbers random: the page is under 10 MB."""
    from grok_jax import metrics, results

    config = cfg.load_config("wd_xi", "paper")
    steps = np.arange(0, config.steps + 1, config.log_every)
    names = metrics.metric_names(("U", "V", "W"))
    finals = {"ipr_hidden": (("hidden",), (config.width,)), **{n: ((), ()) for n in phases.SUMMARY}}
    flat = results.empty(config.to_json(sort_keys=True), {k: tuple(v) for k, v in config.sweep.items()}, steps,
                         names, finals)
    rng = np.random.default_rng(0)
    for name in [*names, "ipr_hidden", *phases.SUMMARY]:
        flat[name].values[:] = rng.random(flat[name].shape)
    flat["done"].values[:], flat["phase"].values[:] = True, rng.integers(0, len(phases.PHASES), flat.sizes["lane"])
    size = len(report.page(results.to_grid(flat)).encode())
    assert flat.sizes["lane"] == 513 and len(steps) == 101
    assert 3e6 < size < 10e6


def test_payload_matches_the_store(ds):
    data = report.payload(ds)
    final, _ = plotting.cell_phase(ds)
    assert data["cells"]["phase"] == final.values.ravel().tolist()
    assert (data["x"], data["y"]) == ("xi", "wd")
    steps = report.step_phases(ds.transpose("wd", "xi", "seed", ...), json.loads(ds.attrs["config"]))
    np.testing.assert_array_equal(steps[..., -1], ds.phase.transpose("wd", "xi", "seed").values)  # as stored
    test = ds.test_acc.isel(step=-1).transpose("wd", "xi", "seed").values.ravel()
    assert data["lanes"]["test_acc"] == [round(float(v), 4) for v in test]
    assert len(data["commands"]) == 6 and data["ipr"]["init"] is not None


def test_noreport_skips_it(store):
    (store / report.REPORT).unlink()
    proc = subprocess.run([sys.executable, "-m", "grok_jax.sweep", "--grid=tiny", *XI, f"--out={store}", "--noreport",
                           "--compilation_cache="], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (store / report.REPORT).exists()
    proc = subprocess.run([sys.executable, "-m", "grok_jax.report", str(store)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {store / report.REPORT}", proc.stderr


@pytest.mark.parametrize("args, needle", [
    ([], "usage: python -m grok_jax.report DIR"),
    (["{tmp}/missing"], "no results store at {tmp}/missing/results.zarr"),
    (["{tmp}"], "no results store at {tmp}/results.zarr"),
    (["--out=x"], "usage"),
    (["a", "b", "c"], "usage"),
])
def test_bad_input_is_one_line_and_status_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle.format(tmp=tmp_path) in err


def test_a_store_of_another_kind_is_refused(tmp_path, capsys):
    (tmp_path / "results.zarr").mkdir()
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path)])
    assert exit_.value.code == 2 and "is not a readable grok_jax results store" in capsys.readouterr().err


def test_a_store_of_another_format_is_named_as_such(store, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(store / "results.zarr", old / "results.zarr")
    zarr.open_group(str(old / "results.zarr"), mode="a").attrs["format"] = results.FORMAT - 1
    with pytest.raises(SystemExit) as exit_:
        report.main([str(old)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert f"written in store format {results.FORMAT - 1}; this version reads format {results.FORMAT}" in err
    assert not (old / report.REPORT).exists()


# --- the re-run command of a cell, parsed by the sweep's command line ---

def _configs():
    """Every shipped grid at each of its scales and every figure run at tiny scale."""
    out = [(f"{g} ({s})", cfg.load_config(g, s)) for g in cfg.available_grids() for s in cfg.SCALES
           if g != "tiny" or s == "small"]
    out += [(f"{name}/{run}", grid) for name in figures.available_figures()
            for run, grid in figures.load_figure(name, "tiny").runs.items()]
    return out


class _Parsed(Exception):
    pass


def _parse(command, monkeypatch):
    """The config and output directory that the sweep's command line makes of
    ``command``, stopped before anything runs."""
    def caught(config, target, options):
        raise _Parsed(config, target)

    monkeypatch.setattr(sweep_cli, "sweep", caught)
    monkeypatch.setattr(sweep_cli, "start", lambda *args, **kwargs: None)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "grok_jax.sweep"]
    with pytest.raises(_Parsed) as parsed:
        sweep_cli.main(argv[3:])
    return parsed.value.args


def _lane_settings(config: dict) -> dict:
    """What a lane of one cell trains with: every field, swept ones at their values."""
    flat = dict(report._leaves({k: v for k, v in config.items() if k not in ("sweep", "plot")}))
    flat.update({k: tuple(v) for k, v in config["sweep"].items()})
    flat.update({k: v[0] for k, v in flat.items() if isinstance(v, tuple) and len(v) == 1})
    return flat


@pytest.mark.parametrize("name, config", _configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_rerun_command_runs_that_cell(name, config, monkeypatch):
    stored = json.loads(config.to_json(sort_keys=True))
    cell = {a: v[-1] for a, v in stored["sweep"].items() if a != "seed"}
    command = report.rerun_command(stored, cell)
    parsed, target = _parse(command, monkeypatch)
    expected = {**stored, "sweep": {**stored["sweep"], **{a: [v] for a, v in cell.items()}}}
    got = json.loads(parsed.to_json(sort_keys=True))
    assert _lane_settings(got) == _lane_settings(expected), command
    assert target == "results/cell" + "".join(f"_{a}{v:g}" if not isinstance(v, str) else f"_{a}{v}"
                                              for a, v in cell.items())

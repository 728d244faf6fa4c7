"""An interactive report of a results store: one self-contained HTML page.

    python -m grok_jax.report results/wd_xi      # writes results/wd_xi/report.html

The page opens offline in a browser (plotly.js and the data inlined, no server):
the phase diagram over the store's two plot axes with a selector for every other
swept axis, a step slider that recolours it with every cell's phase at that logged
step beside the test accuracy then, and on a click a cell's curves per seed, the
histogram of its per-neuron IPR and the command that runs it again; the config and
what ran. :func:`show` renders the same page inline in Jupyter. See docs/report.md.

Curves travel as 2 bytes per logged number, base64-encoded (accuracies in steps of
1e-4, losses and weight norms as float16 of their log10), so that the page of a
paper-scale store stays a few MB.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import itertools
import json
import os
import re
import shlex
import sys
import warnings
from typing import Any

import numpy as np
import xarray as xr

from grok_jax import analysis, phases, plotting, results
from grok_jax import config as cfg
from grok_jax.errors import ConfigError, StoreDamaged

REPORT = "report.html"  # the page's name in an output directory
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_template.html")
BINS = 20  # per-neuron IPR histogram bins over [0, 1]
LOG_SCALE = re.compile(r"(train_loss|test_loss|weight_norm|norm_.+)$")  # curves sent as log10


def write_report(data: xr.Dataset | str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Writes the report of a store (a dataset of :func:`grok_jax.load_results`, or
    the path of an output directory or store) to ``out/report.html`` (default: the
    store's directory; needed for a dataset). Returns the page's path."""
    ds = _dataset(data)
    if out is None:
        if not isinstance(data, (str, os.PathLike)):
            raise ValueError("write_report of a dataset needs out, the directory to write report.html to")
        out = os.path.dirname(os.path.abspath(results.store_path(data)))
    path = os.path.join(os.fspath(out), REPORT)
    partial, text = f"{path}.partial", page(ds)
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)  # a report is whole or absent
    return path


def show(data: xr.Dataset | str | os.PathLike, height: int = 1400) -> None:
    """Renders the report of a store inline in Jupyter: the same page, in an iframe."""
    from IPython.display import HTML, display

    display(HTML(inline(_dataset(data), height)))


def inline(ds: xr.Dataset, height: int = 1400) -> str:
    """The report as an ``<iframe>`` that holds the whole page (``srcdoc``)."""
    return (f'<iframe srcdoc="{html.escape(page(ds), quote=True)}" style="width:100%;height:{height}px;border:0" '
            'sandbox="allow-scripts allow-popups"></iframe>')


def _dataset(data: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    return data if isinstance(data, xr.Dataset) else results.load_results(data, parameters=False)


def page(ds: xr.Dataset) -> str:
    """The whole report: the template with plotly.js (:func:`packed_plotly`) and
    :func:`payload` inlined."""
    import plotly

    with open(TEMPLATE, encoding="utf-8") as f:
        template = f.read()
    data = json.dumps(payload(ds), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    parts = {"PLOTLY_VERSION": plotly.__version__, "PLOTLY_GZ": packed_plotly(), "DATA": data}
    # one pass: what is put in is not searched again
    return re.sub(r"/\*\{(" + "|".join(parts) + r")\}\*/", lambda m: parts[m.group(1)], template)


@functools.lru_cache
def packed_plotly() -> str:
    """plotly.js of the plotly package, gzipped and base64-encoded: 2.0 MB instead of
    4.8 (the page unpacks it with the browser's ``DecompressionStream``)."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode("ascii")


def payload(ds: xr.Dataset) -> dict:
    """What the page draws, as JSON: the axes, every cell's phase (final and at each
    logged step, the seed majority) and test accuracy, every lane's final numbers,
    curves and IPR histograms, the re-run command of every cell, config and runs."""
    config = json.loads(ds.attrs["config"])
    axes = json.loads(ds.attrs["axes"])
    if any(ds.sizes.get(a) != len(v) for a, v in axes.items()):
        raise ValueError("a report shows a whole store: this dataset is a selection of one (use load_results)")
    cells = [a for a in axes if a != "seed"]  # a cell: one value of each; its lanes: the seeds
    seeds = axes.get("seed")
    lanes = ds.transpose(*cells, *(["seed"] if seeds else []), ...)
    n_cells, n_seeds = int(np.prod([len(axes[a]) for a in cells])), len(seeds or [0])
    flat = lambda name: lanes[name].values.reshape(n_cells * n_seeds, *lanes[name].shape[len(axes):])  # noqa: E731
    ran = flat("ran").astype(bool)
    inferred = flat("inferred").astype(bool) if "inferred" in ds else np.zeros_like(ran)
    per_step = step_phases(lanes, config).reshape(n_cells * n_seeds, -1)
    phase, fraction = plotting.cell_phase(ds)
    x, y = plotting.plot_axes(ds)
    return {
        "title": plotting.title(ds),
        "phases": list(phases.PHASES),
        "colors": list(plotting.PHASE_COLORS),
        "accuracies": plotting.ACCURACIES,  # name, legend, colour of the five accuracy curves
        "axes": [{"name": a, "label": plotting.LABELS.get(a, a), "values": axes[a],
                  "ticks": [plotting._value(v) for v in axes[a]]} for a in cells],
        "x": x, "y": y,
        "seeds": seeds,
        "steps": ds["step"].values.tolist(),
        "cells": _cells(phase.transpose(*cells).values.ravel(), fraction, cells, ran,
                        plotting.cell_inferred(ds).transpose(*cells).values.ravel(), per_step,
                        flat("test_acc"), n_seeds),
        "lanes": _lanes(lanes, flat, ran, inferred),
        "curves": {name: _encode(name, flat(name)) for name in _metrics(ds)},
        "ipr": _histograms(ds, cells, seeds, n_cells * n_seeds),
        "commands": [rerun_command(config, dict(zip(cells, values))) for values in _cell_values(axes, cells)],
        "config": config,
        "runs": json.loads(ds.attrs.get("runs", "[]")),
    }


def step_phases(ds: xr.Dataset, config: dict) -> np.ndarray:
    """Every lane's phase at each logged step (dims: the swept axes, then ``step``):
    :func:`grok_jax.phases.classify_steps`, as if training had stopped there; -1
    for lanes not run."""
    log = {name: ds[name].values for name in ("train_loss", "test_loss", "weight_norm", "train_acc", "test_acc")}
    ran = ds["ran"].values.astype(bool)
    xi = (ds["xi"].broadcast_like(ds["ran"]).transpose(*ds["ran"].dims).values if "xi" in ds.dims
          else np.full(ran.shape, config["xi"]))
    return np.where(ran[..., None], phases.classify_steps(log, xi), -1).astype(np.int8)


def _cells(phase: np.ndarray, fraction: xr.DataArray | None, dims: list[str], ran: np.ndarray, inferred: np.ndarray,
           per_step: np.ndarray, test_acc: np.ndarray, n_seeds: int) -> dict:
    """Per cell: final phase, seed agreement, whether it ran or was inferred (``inferred``:
    per cell); at each step the majority phase, the count of seeds in it and the mean
    test accuracy."""
    n_steps = per_step.shape[-1]
    top, share = phases.majority(per_step.reshape(-1, n_seeds, n_steps), axis=1)
    seeds_ran = ran.reshape(-1, n_seeds).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells not run: all NaN
        test = np.nanmean(test_acc.reshape(-1, n_seeds, n_steps), axis=1)
    agree = np.nan_to_num(np.round(share * seeds_ran[:, None]), nan=0).astype(np.uint8)
    frac = fraction.transpose(*dims).values.ravel() if fraction is not None else np.ones(len(phase))
    return {
        "phase": phase.astype(int).tolist(),
        "fraction": [analysis.plain(f) for f in frac],
        "ran": seeds_ran.tolist(),
        "inferred": inferred.tolist(),
        "step_phase": _b64(top.astype(np.int8)),
        "step_agree": _b64(agree) if n_seeds > 1 else None,  # one seed: it agrees with itself
        "step_test": _q4(test),
    }


def _lanes(lanes: xr.Dataset, flat, ran: np.ndarray, inferred: np.ndarray) -> dict:
    """Per lane: its phase, whether it ran or was inferred, final metrics, grokking
    and unlearning steps, peak test and train accuracies (``None`` where there is
    none), rounded to 4 digits."""
    out = {"phase": flat("phase").astype(int).tolist(), "ran": ran.tolist(), "inferred": inferred.tolist()}
    for name in analysis.FINAL_METRICS:
        out[name] = [analysis.plain(v) for v in flat(name)[:, -1]]
    for name in analysis.LANE_SCALARS:
        out[name] = [analysis.plain(v) for v in flat(name)] if name in lanes else [None] * len(ran)
    return out


def _metrics(ds: xr.Dataset) -> list[str]:
    """The logged metrics: every variable over (swept axes and) ``step`` alone."""
    axes = set(json.loads(ds.attrs["axes"]))
    return [name for name, v in ds.data_vars.items() if v.dims and v.dims[-1] == "step" and set(v.dims[:-1]) <= axes]


def _encode(name: str, values: np.ndarray) -> dict:
    """A metric's curves, compactly: accuracies and IPR (in [0, 1]) in steps of 1e-4
    (:func:`_q4`), losses and weight norms as float16 of their log10 (3 significant
    digits over any range), anything else as float16."""
    finite = values[np.isfinite(values)]
    if not LOG_SCALE.match(name) and np.all((finite >= 0) & (finite <= 1)):
        return {"enc": "q4", "data": _q4(values)}
    if not LOG_SCALE.match(name):
        return {"enc": "f16", "data": _f16(values)}
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"enc": "log10_f16", "data": _f16(np.log10(values))}


def _histograms(ds: xr.Dataset, cells: list[str], seeds: list | None, n_lanes: int) -> dict:
    """Counts of the final per-neuron IPR of every lane in :data:`BINS` bins over
    [0, 1], and at initialization where the stored plan lets
    :func:`grok_jax.analysis.initial_ipr` rebuild the initial networks."""
    order = [*cells, *(["seed"] if seeds else [])]
    init = None
    if "plan" in ds.attrs:
        init = analysis.initial_ipr(ds)
        group = init.dims[-1]
    else:
        group = next((n[4:] for n in ds.data_vars if n.startswith("ipr_")), None)
    if group is None:
        return {"group": None, "final": None, "init": None}
    count = lambda da: [_counts(row) for row in da.transpose(*order, ...).values.reshape(n_lanes, -1)]  # noqa: E731
    return {"group": group, "final": count(ds[f"ipr_{group}"]), "init": count(init) if init is not None else None}


def _counts(values: np.ndarray) -> list[int]:
    return np.histogram(values[np.isfinite(values)], BINS, (0.0, 1.0))[0].tolist()


def _cell_values(axes: dict, cells: list[str]) -> list[tuple]:
    """Every cell's values of the axes ``cells``, in C order (one cell, ``()``, for none)."""
    return list(itertools.product(*(axes[a] for a in cells)))


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values).tobytes()).decode("ascii")


def _q4(values: np.ndarray) -> str:
    """Numbers in [0, 1] as uint16 counts of 1e-4 (exactly what 4 decimals show);
    65535 for NaN."""
    v = np.asarray(values, np.float64)
    return _b64(np.where(np.isfinite(v), np.round(np.clip(v, 0, 1) * 1e4), 65535).astype("<u2"))


def _f16(values: np.ndarray) -> str:
    with np.errstate(over="ignore"):  # beyond float16's 65504: inf, as drawn anyway
        return _b64(np.asarray(values, "<f4").astype("<f2"))


# --- the command that runs one cell again ---

def rerun_command(config: dict, cell: dict[str, Any], out: str | None = None) -> str:
    """The ``python -m grok_jax.sweep`` line that runs again the lanes of one cell
    (its value of each swept axis but seeds; every seed) of a store with ``config``:
    the shipped grid that needs the fewest flags, with ``--config`` flags for the
    fields that differ from it. Its output goes to ``out`` (default
    ``results/cell_<axis><value>...``)."""
    scale = config.get("scale", "small")
    options = [(len(_rerun_flags(config, base, cell, scale)), grid, base) for grid, base in _grids(scale)]
    _, grid, base = min(options, key=lambda o: o[0])
    out = out or os.path.join("results", "cell" + "".join(f"_{a}{plotting._value(v)}" for a, v in cell.items()))
    head = ["python", "-m", "grok_jax.sweep", f"--grid={grid}", *(["--scale=paper"] if scale == "paper" else [])]
    return " ".join(head + _rerun_flags(config, base, cell, scale) + [_flag("out", out)])


@functools.lru_cache
def _grids(scale: str) -> tuple[tuple[str, dict], ...]:
    """The shipped grids' configs at ``scale`` (those that have it: not tiny's paper)."""
    out = []
    for grid in cfg.available_grids():
        try:
            out.append((grid, cfg.load_config(grid, scale).to_dict()))
        except ConfigError:
            continue
    return tuple(out)


def _rerun_flags(config: dict, grid: dict, cell: dict[str, Any], scale: str) -> list[str]:
    """The flags that turn ``grid`` into ``config`` at one cell: every axis at the
    cell's value (the seed axis whole; an axis of the grid that ``config`` does not
    sweep at its one value), then the fixed fields that differ (every field the
    model sets itself when the model differs, which the sweep would else reset)."""
    sweep = {**{a: [config[a]] for a in grid["sweep"]}, **config["sweep"], **{a: [v] for a, v in cell.items()}}
    flags = [_flag(f"config.sweep.{a}", repr(tuple(v))) for a, v in sweep.items()
             if tuple(v) != tuple(grid["sweep"].get(a, ()))]
    model_set = set(cfg.model_defaults(config["model"], scale)) if config["model"] != grid["model"] else set()
    for name, value in _leaves(config):
        if name.split(".")[0] in ("sweep", "plot", "scale") or name in sweep:
            continue
        if name in model_set or _leaf(grid, name) != value:
            flags.append(_flag(f"config.{name}", str(value)))
    return flags


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out += _leaves(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return out


def _leaf(tree: dict, name: str) -> Any:
    for key in name.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _flag(name: str, text: str) -> str:
    """``--name=text``, quoted for a POSIX shell only where it must be (a tuple
    between double quotes, as the README writes them)."""
    if re.fullmatch(r"[\w.+/,:=-]+", text):
        return f"--{name}={text}"
    if not re.search(r'["$`\\!]', text):
        return f'--{name}="{text}"'
    return shlex.quote(f"--{name}={text}")


def main(argv: list[str] | None = None) -> None:
    """``python -m grok_jax.report DIR [OUT]``: writes ``OUT/report.html`` (default
    ``DIR/report.html``) from the store in output directory ``DIR``. Exits with
    status 2 on bad input (no store there), 1 when the page cannot be written."""
    from grok_jax.cli import fail

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("python -m grok_jax.report DIR [OUT]: writes OUT/report.html (default DIR/report.html), the "
              "interactive report of the results store in DIR (see docs/report.md)")
        sys.exit(0)
    if not 1 <= len(args) <= 2 or any(a.startswith("-") for a in args):
        fail(ConfigError(f"usage: python -m grok_jax.report DIR [OUT], not {' '.join(args) or 'nothing'}"))
    store = results.store_path(args[0])
    if not os.path.isdir(store):
        fail(ConfigError(f"no results store at {store}; give an output directory of grok_jax.sweep"))
    try:
        ds = results.load_results(store, parameters=False)
        fmt = int(ds.attrs.get("format", 0))
    except StoreDamaged as e:
        fail(e)
    except Exception as e:  # noqa: BLE001 - whatever else is there is no store of this version
        fail(f"{store} is not a readable grok_jax results store ({type(e).__name__}: {e})")
    if fmt != results.FORMAT:
        fail(f"{store} was written in store format {fmt}; this version reads format {results.FORMAT}")
    out = args[1] if len(args) > 1 else os.path.dirname(os.path.abspath(store))
    try:
        os.makedirs(out, exist_ok=True)
        print(f"wrote {write_report(ds, out)}")
    except OSError as e:
        fail(f"cannot write {os.path.join(out, REPORT)}: {e.strerror or e}", status=1)


if __name__ == "__main__":
    main()

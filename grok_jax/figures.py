"""The paper's figures, one command each (README, "Figures"):

    python -m grok_jax.figures --figure=fig1            # quick scale: minutes on a laptop CPU
    python -m grok_jax.figures --figure=all --scale=paper
    python -m grok_jax.figures --list
    python -m grok_jax.figures --claims_table           # figures/README.md's claims table from figures/*.json

Each figure is a preset in ``grok_jax/presets/`` (its runs' grid configs and how it is
drawn). Its runs are sweeps with a results store each under ``--results``, reused
when the same run was stored before (by this or another figure); the figure is
written to ``--out`` as PNG and PDF, with a JSON summary of its numbers beside them,
and each run's interactive report (``report.html``) beside its store.
The preset's claims (:class:`grok_jax.presets.Claim`) are checked on those numbers,
printed ✓/✗ and recorded in the JSON; a claim that fails is a finding, not an error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import ml_collections
import numpy as np
import xarray as xr

from grok_jax import analysis, phases, plotting, presets, results
from grok_jax import config as cfg
from grok_jax.analysis import plain
from grok_jax.errors import ConfigError, RunError

if TYPE_CHECKING:
    from grok_jax.execution import Options

PRESETS_DIR = os.path.dirname(os.path.abspath(presets.__file__))
Datasets = dict[str, xr.Dataset]  # run name -> its results


class Renderer(NamedTuple):
    """How a figure is drawn: ``draw(datasets, options, head, paths) -> summary``
    writes the figure to ``paths`` and returns its numbers; ``parameters``: it
    needs the stored final parameters."""

    draw: Callable[[Datasets, ml_collections.ConfigDict, str, Sequence[str]], dict]
    parameters: bool = False


def _only(datasets: Datasets) -> xr.Dataset:
    (ds,) = datasets.values()
    return ds


def _draw_dynamics(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    ds = _only(datasets)
    plotting.dynamics(ds, options.rows, f"{head}: {plotting.title(ds)}", paths)
    lanes = analysis.lane_summary(ds)

    def line(lane: dict) -> str:
        where = ", ".join(f"{k}={v}" for k, v in lane.items() if k in ds.dims)
        what = f"{lane['phase']}, test {lane['final_test_acc']}, train {lane['final_train_acc']}"
        return f"{where}: {what}" if where else what

    return {"lanes": lanes, "headline": "; ".join(line(lane) for lane in lanes)}


def stack_runs(datasets: Datasets, field: str) -> tuple[xr.DataArray, xr.DataArray | None, list[dict]]:
    """The cell phases (and seed fractions) of runs that differ in config ``field``,
    stacked along a new dim ``field`` in the order of its values, over the union of
    their axes: a cell that a run lacks (an α left out of one batch size) is -1, not
    run. Also returns the runs' configs, in that order."""
    configs = [json.loads(ds.attrs["config"]) for ds in datasets.values()]
    order = np.argsort([c[field] for c in configs], kind="stable")
    cells = [plotting.cell_phase(list(datasets.values())[i]) for i in order]
    configs = [configs[i] for i in order]
    index = xr.DataArray([c[field] for c in configs], dims=field, name=field)
    phase = xr.concat([c[0] for c in cells], index, join="outer", fill_value=-1)
    fraction = (xr.concat([c[1] for c in cells], index, join="outer", fill_value=np.nan)
                if cells[0][1] is not None else None)
    return phase, fraction, configs


def _draw_phases(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    first = next(iter(datasets.values()))
    x, y = plotting.plot_axes(first)
    if len(datasets) == 1:
        phase, fraction = plotting.cell_phase(first)
        title = plotting.title(first)
    else:  # one run per value of options.panel (e.g. batch sizes, whose step counts differ)
        field = options.panel
        phase, fraction, configs = stack_runs(datasets, field)
        per_run = "; ".join(f"{field} {c[field]}: {c['steps']} steps, lr {c['lr']:g}" for c in configs)
        title = f"{plotting.title(first)} [{per_run}]"
    plotting.heatmap(phase, x, y, paths, f"{head}: {title}", phase=True, fraction=fraction)
    return {"phases": {name: plotting.phase_table(ds) for name, ds in datasets.items()},
            "cells": {name: phase_cells(ds) for name, ds in datasets.items()}}


def phase_cells(ds: xr.Dataset) -> list[dict]:
    """One record per cell of a phase diagram: its coordinates and (majority) phase
    name (``None``: not run), what the figures' claims read."""
    phase, _ = plotting.cell_phase(ds)
    records = []
    for index in np.ndindex(*phase.shape):
        record = {d: plain(phase[d].values[i]) for d, i in zip(phase.dims, index)}
        code = int(phase.values[index])
        record["phase"] = phases.PHASES[code] if code >= 0 else None
        records.append(record)
    return records


def _draw_ipr_histograms(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    ds = _only(datasets)
    select = dict(options.get("select", {}))  # cells drawn, e.g. {"alpha": 0.5, "xi": 0.2}
    init = analysis.initial_ipr(ds).sel(select)
    ds = ds.sel(select)
    final = ds[f"ipr_{init.dims[-1]}"]
    chosen = "".join(f", {k}={v:g}" for k, v in select.items())
    plotting.ipr_histograms(final, init, ds, options.bins, f"{head}: {plotting.title(ds)}{chosen}", paths)
    lanes = analysis.lane_summary(ds)
    for record, (_, sel) in zip(lanes, plotting.lane_panels(ds)):
        f, i = final.isel(sel).values, init.isel(sel).values
        record.update(mean_ipr_init=plain(np.nanmean(i)), mean_ipr_final=plain(np.nanmean(f)),
                      share_above_half_init=plain(np.mean(i > 0.5)), share_above_half_final=plain(np.mean(f > 0.5)),
                      share_low_final=plain(np.mean(f < 0.25)), share_high_final=plain(np.mean(f >= 0.75)))
    return {"lanes": lanes}


def _draw_batchnorm(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    ds = _only(datasets)
    r = analysis.bn_scale_correlation(ds)
    init = analysis.initial_ipr(ds)
    plotting.bn_scale_scatter(ds, init, r, options.bins, f"{head}: {plotting.title(ds)}", paths)
    lanes = analysis.lane_summary(ds)
    for record, (_, sel) in zip(lanes, plotting.lane_panels(ds)):
        record["correlation_bn_scale_ipr"] = plain(r.isel(sel))
    values = ", ".join(f"{v:.2f}" for v in np.ravel(r.values))
    return {"lanes": lanes, "mean_correlation": plain(r.mean()),
            "headline": f"correlation of |BN scale| with IPR_k: r = {values} (mean {float(r.mean()):.2f})"}


def _draw_pruning(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    from grok_jax.pruning import prune

    ds = _only(datasets)
    curves = prune(ds, tuple(options.fractions) or None, random=options.random, log=print)
    plotting.pruning_curves(curves, f"{head}: {plotting.title(ds)}", paths)
    report = {}
    for order in curves.order.values:
        at = curves.sel(order=order).sel(fraction=list(options.report), method="nearest")
        spread = [d for d in at.dims if d != "fraction"]
        report[str(order)] = {f"{float(f):.3g}": {m: plain(at[m].sel(fraction=f).mean(spread))
                                                 for m in ("test_acc", "train_acc", "corrupt_acc", "clean_acc")}
                              for f in at.fraction.values}
    summary = {"unpruned": analysis.lane_summary(ds), "pruned": {}}
    for order in ("low", "high"):
        summary["pruned"][order] = report.pop(order)
    low, high = summary["pruned"]["low"], summary["pruned"]["high"]
    summary["headline"] = "; ".join(
        f"{name} {f}: test {v['test_acc']}, corrupted {v['corrupt_acc']}"
        for name, part in (("lowest-IPR", low), ("highest-IPR", high)) for f, v in part.items())
    summary["pruned"]["random (mean)"] = {
        f: {m: plain(np.mean([r[f][m] for r in report.values() if r[f][m] is not None] or [np.nan])) for m in v}
        for f, v in next(iter(report.values()), {}).items()}
    return summary


def _draw_prunable(datasets: Datasets, options: Any, head: str, paths: Sequence[str]) -> dict:
    from grok_jax.pruning import prune

    ds = _only(datasets)
    curves = prune(ds, tuple(options.fractions) or None, log=print)
    counts = analysis.prunable(curves, curves["width"], options.threshold)
    plotting.prunable_vs_width(counts, f"{head}: {plotting.title(ds)}; test accuracy threshold "
                                       f"{options.threshold:g}", paths)
    rest = [d for d in counts.dims if d != "width"]
    return {"threshold": options.threshold, "widths": {
        f"{int(w)}": {"mean": plain(counts.sel(width=w).mean(rest)), "std": plain(counts.sel(width=w).std(rest)),
                      "kept_mean": plain(w - counts.sel(width=w).mean(rest)),
                      "networks": int(np.isfinite(counts.sel(width=w)).sum()),
                      "counts": [plain(v) for v in np.ravel(counts.sel(width=w).values)]}
        for w in counts.width.values}}


RENDERERS: dict[str, Renderer] = {
    "dynamics": Renderer(_draw_dynamics),
    "phases": Renderer(_draw_phases),
    "ipr_histograms": Renderer(_draw_ipr_histograms),
    "batchnorm": Renderer(_draw_batchnorm, parameters=True),
    "pruning": Renderer(_draw_pruning, parameters=True),
    "prunable": Renderer(_draw_prunable, parameters=True),
}


def available_figures() -> list[str]:
    """Names of the presets in ``grok_jax/presets/``: the paper's figures, then the appendix's."""
    names = [n[:-3] for n in os.listdir(PRESETS_DIR) if n.endswith(".py") and not n.startswith("_")]
    return sorted(names, key=lambda n: (not n.startswith("fig"), n))


def preset_path(name: str) -> str:
    """The config file of a figure: a name in ``grok_jax/presets/`` or a path to a ``.py`` file."""
    return cfg.config_file(name, PRESETS_DIR, "figure", lambda: available_figures() + ["all"])


def load_figure(name: str, scale: str = "quick") -> ml_collections.ConfigDict:
    """The checked preset of figure ``name`` at ``scale`` (a ``ConfigError`` names
    what is wrong: a bad scale, an unknown figure or renderer, a bad run config)."""
    if scale not in presets.SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(presets.SCALES)}")
    path = preset_path(name)
    config = cfg.call_get_config(path, scale, "figure")
    _check_figure(config, path)
    return config


def _check_figure(config: Any, path: str) -> None:
    for field in ("description", "renderer", "runs", "options"):
        if field not in config:
            raise ConfigError(f"figure {path} has no field {field!r}; start from grok_jax.presets.figure_config")
    if config.renderer not in RENDERERS:
        raise ConfigError(f"figure {path}: renderer={config.renderer!r} is not valid; valid: {', '.join(RENDERERS)}")
    if not config.runs:
        raise ConfigError(f"figure {path} has no runs")
    if config.renderer == "prunable" and any("width" not in grid.sweep for grid in config.runs.values()):
        raise ConfigError(f"figure {path}: the prunable renderer needs a width axis (runs.<name>.sweep.width)")
    for run, grid in config.runs.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", run):
            raise ConfigError(f"figure {path}: run name {run!r} must be letters, digits, '_', '.' or '-' "
                              "(it names the run's results directory)")
        try:
            cfg.check_config(grid)
        except ConfigError as e:
            raise ConfigError(f"figure {path}, run {run!r}: {e}") from e


def output_stem(out: str, name: str, scale: str) -> str:
    """``out/<name>`` at quick scale (the gallery), ``out/<name>_<scale>`` otherwise."""
    base = os.path.splitext(os.path.basename(name))[0]
    return os.path.join(out, base if scale == "quick" else f"{base}_{scale}")


def run_figure(name: str, figure: ml_collections.ConfigDict, scale: str, out: str, results_dir: str,
               options: Options | None = None) -> list[str]:
    """Runs (or reuses) the figure's sweeps with ``options`` (memory budget,
    ``repair``, ``log``; default ``Options()``), draws it and writes
    ``output_stem(...)`` ``.png``, ``.pdf`` and ``.json`` (its numbers), and each
    run's interactive report beside its store (:mod:`grok_jax.report`). Returns the
    paths, the JSON last."""
    from grok_jax.execution import Options, sweep
    from grok_jax.report import write_report

    start = time.perf_counter()
    renderer = RENDERERS[figure.renderer]
    options = (options or Options())._replace(parameters=renderer.parameters)
    datasets, stores, existed = {}, {}, {}
    for run, grid in figure.runs.items():
        stores[run] = os.path.join(results_dir, scale, run)
        existed[run] = os.path.exists(results.store_path(stores[run]))
        options.log(f"{name}: run {run!r} -> {stores[run]}")
        datasets[run] = sweep(grid, stores[run], options)
    os.makedirs(out, exist_ok=True)
    stem = output_stem(out, name, scale)
    head = f"{os.path.basename(stem)} ({scale} scale)"
    paths = [f"{stem}.png", f"{stem}.pdf"]
    summary = renderer.draw(datasets, figure.options, head, paths)
    reports = [write_report(ds, stores[run]) for run, ds in datasets.items()]  # beside each run's store
    record = {"figure": os.path.basename(stem), "scale": scale, "description": figure.description,
              "stores": stores, "stores_existed": existed,  # reused: the wall time is mostly drawing
              "wall_seconds": round(time.perf_counter() - start, 1), "summary": summary,
              "claims": check_claims(figure, summary, scale)}
    _write_json(f"{stem}.json", record)
    return [*paths, *reports, f"{stem}.json"]


def check_claims(figure: ml_collections.ConfigDict, summary: dict, scale: str) -> list[dict]:
    """The figure's claims (``figure.claims``, :class:`grok_jax.presets.Claim`) checked on
    its summary: one record each, ``{text, expected, holds, measured, why}``;
    ``expected``: whether the paper's claim is expected at ``scale``. A check that
    finds its number missing does not hold (measured: what is missing)."""
    records = []
    for claim in figure.get("claims", ()):
        try:
            holds, measured = claim.check(summary)
        except Exception as e:  # noqa: BLE001 - a number missing or None: not shown; never a lost figure
            holds, measured = False, f"cannot check: {type(e).__name__}: {e}"
        records.append({"text": claim.text, "expected": scale in claim.scales, "holds": bool(holds),
                        "measured": str(measured), "why": claim.why})
    return records


def claim_line(claim: dict, scale: str) -> str:
    """``✓ text (measured: ...)``, ``✗ ...``, or ``– not expected at <scale> scale: ...``."""
    text = f"{claim['text']} (measured: {claim['measured']})"
    if not claim["expected"]:
        return f"– not expected at {scale} scale: {text}"
    return f"{'✓' if claim['holds'] else '✗'} {text}"


def claims_tally(records: Sequence[dict], scale: str) -> str:
    """``claims: N of M hold at <scale> scale``, over the claims expected there."""
    expected = [c for c in records if c["expected"]]
    return f"claims: {sum(c['holds'] for c in expected)} of {len(expected)} hold at {scale} scale"


CLAIMS_BEGIN, CLAIMS_END = "<!-- claims table: begin -->", "<!-- claims table: end -->"


def claims_table(out: str) -> str:
    """The markdown table of the claims recorded in ``out/*.json`` (every figure of
    the gallery), one row per claim: figure, scale, claim, result, measured, threshold."""
    rows = ["| figure | scale | claim | result | measured | threshold and why |",
            "| --- | --- | --- | --- | --- | --- |"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    names = sorted((n[:-5] for n in os.listdir(out) if n.endswith(".json")),
                   key=lambda n: (not n.startswith("fig"), n))
    tally: dict[str, list[dict]] = {}
    unchecked = []  # drawn before claims were checked
    for name in names:
        try:
            with open(os.path.join(out, f"{name}.json")) as f:
                record = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {os.path.join(out, name)}.json: {e}") from e
        if "claims" not in record:
            unchecked.append(name)
            continue
        for claim in record["claims"]:
            tally.setdefault(record["scale"], []).append(claim)
            result = ("✓ holds" if claim["holds"] else "✗ fails") if claim["expected"] else (
                f"– not expected ({'holds' if claim['holds'] else 'fails'})")
            rows.append(f"| [{name}]({name}.png) | {record['scale']} | {cell(claim['text'])} | {result} | "
                        f"{cell(claim['measured'])} | {cell(claim['why'])} |")
    lines = [f"{claims_tally(records, scale)}." for scale, records in tally.items()]
    if unchecked:
        lines.append(f"(no claims recorded in {', '.join(unchecked)}: drawn before claims were checked; "
                     "draw them again)")
    return "\n".join(rows + [""] + lines)


def write_claims_table(out: str, readme: str | None = None) -> str:
    """Replaces the text between :data:`CLAIMS_BEGIN` and :data:`CLAIMS_END` in
    ``readme`` (default ``out/README.md``) with :func:`claims_table` of ``out``;
    a ``ConfigError`` if the markers are missing. Returns the README's path."""
    readme = readme or os.path.join(out, "README.md")
    try:
        with open(readme) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {readme}: {e.strerror or e}") from e
    begin, end = text.find(CLAIMS_BEGIN), text.find(CLAIMS_END)
    if begin < 0 or end < begin:
        raise ConfigError(f"{readme} has no lines {CLAIMS_BEGIN} ... {CLAIMS_END} to put the claims table between")
    text = f"{text[:begin + len(CLAIMS_BEGIN)]}\n{claims_table(out)}\n{text[end:]}"
    partial = f"{readme}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, readme)
    return readme


def _write_json(path: str, record: dict) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
    os.replace(partial, path)  # a summary is whole or absent


def _figure_names(value: str) -> list[str]:
    names = available_figures() if value == "all" else [v for v in value.split(",") if v]
    if not names:
        raise ConfigError(f"--figure={value!r} names no figure; valid figures: {', '.join(available_figures())}, all")
    return names


def _check_shared_runs(figures: dict[str, ml_collections.ConfigDict]) -> None:
    """Runs of the same name share a store: their configs must be equal."""
    seen: dict[str, tuple[str, str]] = {}
    for name, figure in figures.items():
        for run, grid in figure.runs.items():
            text = grid.to_json(sort_keys=True)
            if run in seen and seen[run][1] != text:
                raise ConfigError(f"figures {seen[run][0]} and {name} both have a run {run!r} with different "
                                  "configs; rename one of them")
            seen.setdefault(run, (name, text))


def _listing(scale: str) -> str:
    lines = [f"{'figure':<14} {'renderer':<15} description (runs at --scale={scale})"]
    for name in available_figures():
        figure = load_figure(name, scale)
        runs = ", ".join(figure.runs)
        lines.append(f"{name:<14} {figure.renderer:<15} {figure.description} [runs: {runs}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m grok_jax.figures [flags]``: exit status 2 on bad input (before
    anything runs), 1 when a store or figure cannot be written or a store is damaged
    (``--repair`` recomputes its damaged chunks' lanes), 75 when stopped by SIGTERM
    (checkpointed: run it again), 130 on Ctrl-C."""
    from absl import flags

    from grok_jax.cli import fail as _fail
    from grok_jax.cli import start
    from grok_jax.plan import check_fits, check_resources
    from grok_jax.programs import default_cache_dir

    argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    fv = flags.FlagValues()
    figure = flags.DEFINE_string("figure", None, f"figure(s), comma-separated: {', '.join(available_figures())}, "
                                 "all, or a path to a preset file", flag_values=fv)
    listing = flags.DEFINE_bool("list", False, "list the figures and exit", flag_values=fv)
    scale = flags.DEFINE_enum("scale", "quick", presets.SCALES, "quick: minutes on a laptop CPU; paper: the "
                              "paper's settings; tiny: seconds (tests)", flag_values=fv)
    out = flags.DEFINE_string("out", "figures", "directory of the figures (PNG, PDF, JSON)", flag_values=fv)
    results_dir = flags.DEFINE_string("results", os.path.join("results", "figures"), "directory of the runs' "
                                      "results stores (<results>/<scale>/<run>), reused when present", flag_values=fv)
    repair = flags.DEFINE_bool("repair", False, "recompute the lanes of the runs' stores' damaged chunks (named "
                               "by the error that reports them)", flag_values=fv)
    memory = flags.DEFINE_float("memory_gb", 4.0, "memory budget per device for a chunk of lanes, GiB",
                                flag_values=fv)
    cache = flags.DEFINE_string("compilation_cache", default_cache_dir(), "persistent compilation cache "
                                "directory ('' disables it)", flag_values=fv)
    table = flags.DEFINE_bool("claims_table", False, "rewrite the claims table of <out>/README.md (between its "
                              "claims-table marker comments) from the claims recorded in <out>/*.json, and exit",
                              flag_values=fv)
    show_help = flags.DEFINE_bool("help", False, "show this help", short_name="h", flag_values=fv)
    try:
        rest = fv(argv)[1:]
        if show_help.value:
            print(f"python -m grok_jax.figures [flags]\n{fv.get_help()}")
            sys.exit(0)
        if rest:
            raise ConfigError(f"unexpected arguments {rest}; use --flag=value")
        if listing.value:
            print(_listing(scale.value))
            sys.exit(0)
        if table.value:
            print(f"wrote the claims table of {write_claims_table(out.value)}")
            sys.exit(0)
        if not figure.value:
            raise ConfigError(f"no --figure given; valid figures: {', '.join(available_figures())}, all "
                              "(--list describes them)")
        figures = {name: load_figure(name, scale.value) for name in _figure_names(figure.value)}
        _check_shared_runs(figures)
        check_resources(memory.value, None)
        for config in figures.values():
            for grid in config.runs.values():
                check_fits(grid, memory.value)
    except (ConfigError, flags.Error) as e:
        _fail(e)
    start(cache.value, cache.present)
    from grok_jax.execution import Options  # jax: once the input is checked

    claims: list[dict] = []  # a claim that fails is a finding, not an error: the exit status stays 0
    for name, config in figures.items():
        try:
            start = time.perf_counter()
            paths = run_figure(name, config, scale.value, out.value, results_dir.value,
                               Options(memory.value, repair=repair.value))
            print(f"{name}: wrote {', '.join(paths)} ({time.perf_counter() - start:.0f} s)")
            with open(paths[-1]) as f:
                record = json.load(f)
            headline = record["summary"].get("headline")
            if headline:
                print(f"{name}: {headline}")
            for claim in record["claims"]:
                print(claim_line(claim, scale.value))
            claims += record["claims"]
        except ConfigError as e:
            _fail(f"{name}: {e}")
        except RunError as e:
            _fail(f"{name}: {e}", status=e.status)
        except OSError as e:
            _fail(f"{name}: cannot write the figure to {out.value}: {e.strerror or e}", status=1)
        except KeyboardInterrupt:
            _fail(f"interrupted in {name}; finished runs are kept under {results_dir.value}: run the same "
                  "command again to resume", status=130)
    print(claims_tally(claims, scale.value))


if __name__ == "__main__":
    main()

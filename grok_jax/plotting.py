"""Heatmaps of a sweep: the phase diagram and final accuracies.

``config.plot.x`` and ``config.plot.y`` name the heatmap axes; seeds are
aggregated (majority phase, mean accuracy) and every other swept axis becomes a
panel. Titles carry the fixed settings, so a figure says what produced it.
"""

from __future__ import annotations

import itertools
import json
import os
import textwrap
import warnings
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from grok_jax import phases  # noqa: E402
from grok_jax.models import title_parts  # noqa: E402

PHASE_COLORS = ("#2ca02c", "#9bd770", "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e", "#000000")
INFERRED_STYLE = {"facecolor": (1, 1, 1, 0.45), "hatch": "///", "edgecolor": "white", "linewidth": 0}  # paler, hatched
LABELS = {"xi": "corruption fraction ξ", "wd": "weight decay", "alpha": "data fraction α",
          "dropout": "dropout", "lr": "learning rate", "seed": "seed"}


def title(ds: xr.Dataset) -> str:
    """The settings a figure was made with: the fixed ones and the seed count."""
    c = json.loads(ds.attrs["config"])
    swept = set(json.loads(ds.attrs["axes"]))
    fixed = lambda k, text: [] if k in swept else [text]  # noqa: E731  (swept ones label the panels)
    task = f"{c['task']} mod p={c['p']}" if not {"task", "p"} & swept else None
    model, about_model = title_parts(c, swept)  # its name, width and options, from its ModelSpec
    parts = [*fixed("model", model), *([task] if task else fixed("task", c["task"]) + fixed("p", f"p={c['p']}")),
             *about_model, *fixed("loss", c["loss"]), f"{c['steps']} steps"]
    if c.get("batch_size") and "batch_size" not in swept:
        parts.append(f"batch {c['batch_size']}")
    parts += [f"{k}={c[k]}" for k in ("lr", "alpha", "xi", "wd", "dropout") if k not in swept]
    if c["batchnorm"]:
        parts.append(f"BatchNorm ({c.get('bn_stats', 'full_batch')} statistics)")
    parts.append(f"{ds.sizes.get('seed', 1)} seed(s)")
    return ", ".join(parts)


def _panels(da: xr.DataArray, x: str, y: str | None) -> list[tuple[str, xr.DataArray]]:
    """Splits ``da`` into (label, 2-D array) panels over its remaining dims."""
    rest = [d for d in da.dims if d not in (x, y)]
    out = []
    for combo in itertools.product(*(range(da.sizes[d]) for d in rest)):
        sel = dict(zip(rest, combo))
        label = ", ".join(f"{d}={_value(da[d].values[i])}" for d, i in sel.items())
        panel = da.isel(sel)
        out.append((label, panel.transpose(y, x) if y else panel.expand_dims("_", 0)))
    return out


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v)


def heatmap(da: xr.DataArray, x: str, y: str | None, path: str | Sequence[str], suptitle: str,
            phase: bool = False, fraction: xr.DataArray | None = None, inferred: xr.DataArray | None = None) -> str:
    """Saves one heatmap panel per combination of the non-(x, y) dims of ``da`` to
    ``path`` (or each of several paths: PNG, PDF); cells whose ``fraction`` (of
    seeds in the majority phase) is below 1 show it, ``inferred`` cells (not run,
    their phase inferred by refinement) are hatched and paler. Returns the (first) path."""
    panels = _panels(da, x, y)
    fractions = [f for _, f in _panels(fraction, x, y)] if fraction is not None else [None] * len(panels)
    guessed = [g for _, g in _panels(inferred, x, y)] if inferred is not None else [None] * len(panels)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols + (2.2 if phase else 1.0), 3.8 * rows),
                            squeeze=False, constrained_layout=True)
    if phase:
        cmap = ListedColormap(PHASE_COLORS)
        norm = BoundaryNorm(np.arange(len(PHASE_COLORS) + 1) - 0.5, len(PHASE_COLORS))
    else:
        cmap, norm = "viridis", plt.Normalize(0, 1)
    for ax, (label, panel), frac, guess in zip(axs.flat, panels, fractions, guessed):
        values = np.ma.masked_less(panel.values.astype(float), 0) if phase else panel.values
        im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        for (i, j), f in np.ndenumerate(frac.values if frac is not None else []):
            if f < 1:
                ax.text(j, i, f"{f:.0%}", ha="center", va="center", fontsize=7, color="white")
        for i, j in np.argwhere(guess.values if guess is not None else np.zeros((0, 2))):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, **INFERRED_STYLE))
        ax.set_xticks(range(panel.shape[1]), [_value(v) for v in da[x].values], rotation=90)
        ax.set_xlabel(LABELS.get(x, x))
        if y:
            ax.set_yticks(range(panel.shape[0]), [_value(v) for v in da[y].values])
            ax.set_ylabel(LABELS.get(y, y))
        else:
            ax.set_yticks([])
        ax.set_title(label, fontsize=10)
    for ax in axs.flat[len(panels):]:
        ax.axis("off")
    if phase:
        present = sorted(set(np.unique(da.values)) - {-1})
        handles = [Patch(color=PHASE_COLORS[k], label=phases.PHASES[k]) for k in present]
        if inferred is not None and bool(inferred.any()):
            handles.append(Patch(facecolor="#a0a0a0", hatch="///", edgecolor="white", label="inferred\n(not run)"))
        fig.legend(handles=handles, loc="outside right center", title="phase")
    else:
        fig.colorbar(im, ax=axs, shrink=0.8, label=da.name)
    return _save(fig, suptitle, [path] if isinstance(path, str) else list(path))[0]


def _save(fig: plt.Figure, suptitle: str, paths: Sequence[str]) -> list[str]:
    """Titles ``fig`` (wrapped to its width), writes it to every path, closes it."""
    width_in = fig.get_size_inches()[0]
    fig.suptitle("\n".join(textwrap.wrap(suptitle, width=int(width_in * 13))), fontsize=10)
    for path in paths:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return list(paths)


def cell_inferred(ds: xr.Dataset) -> xr.DataArray:
    """Cells never run whose phase refinement inferred (:mod:`grok_jax.refine`)."""
    inferred = ds["inferred"] if "inferred" in ds else xr.zeros_like(ds["phase"], bool)
    return inferred.any("seed") if "seed" in inferred.dims else inferred


def cell_phase(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray | None]:
    """Each cell's phase (the seed majority when seeds are swept) and the fraction
    of its seeds in it (``None`` without a seed axis)."""
    if "phase_majority" in ds:
        return ds["phase_majority"], ds["phase_fraction"]
    return ds["phase"], None


def plot_axes(ds: xr.Dataset) -> tuple[str | None, str | None]:
    """The heatmap axes: ``config.plot.x``/``y`` where swept, else the first axes
    (``None`` when nothing but seeds is swept)."""
    plot = json.loads(ds.attrs["config"])["plot"]
    swept = [a for a in json.loads(ds.attrs["axes"]) if a != "seed"]
    # numeric axes first: string axes (activation, ...) make better panels than heatmap axes
    axes = sorted(swept, key=lambda a: ds[a].dtype.kind not in "biuf")
    if not axes:
        return None, None
    x = plot["x"] if plot["x"] in axes else axes[0]
    y = plot.get("y") if plot.get("y") in axes and plot.get("y") != x else None
    if y is None and len(axes) > 1:
        y = next(a for a in axes if a != x)
    return x, y


def plot_fallback(ds: xr.Dataset) -> str | None:
    """What :func:`plot_axes` chose instead of ``config.plot`` (``None``: as asked)."""
    plot = json.loads(ds.attrs["config"])["plot"]
    x, y = plot_axes(ds)
    asked = {k: plot.get(k) for k in ("x", "y") if plot.get(k) is not None}
    unused = {k: v for k, v in asked.items() if v not in (x, y)}
    if not unused or x is None:
        return None
    named = ", ".join(f"plot.{k}={v!r}" for k, v in unused.items())
    shown = f"x={x}" + (f", y={y}" if y else "")
    return f"{named} {'is' if len(unused) == 1 else 'are'} not swept; the heatmaps show {shown}"


def save_figures(ds: xr.Dataset, out: str) -> list[str]:
    """Writes ``phase_diagram.png``, ``test_acc.png`` and ``train_acc.png`` to ``out``
    (nothing for a grid that sweeps no axis but seeds: it has no map to draw)."""
    x, y = plot_axes(ds)
    if x is None:
        return []
    phase, fraction = cell_phase(ds)
    final = ds.isel(step=-1)
    if "seed" in ds.dims:
        final = final.mean("seed")
    head = title(ds)
    paths = [heatmap(phase, x, y, os.path.join(out, "phase_diagram.png"), f"Phase diagram: {head}", phase=True,
                     fraction=fraction, inferred=cell_inferred(ds))]
    for name, what in (("test_acc", "test accuracy"), ("train_acc", "train accuracy (labels trained on)")):
        da = final[name].rename(what)
        paths.append(heatmap(da, x, y, os.path.join(out, f"{name}.png"), f"Final {what}: {head}"))
    return paths


def phase_table(ds: xr.Dataset) -> str:
    """A text table of the (majority) phase of every cell, one block per panel;
    ``*`` marks cells where the seeds disagree, parentheses inferred cells."""
    x, y = plot_axes(ds)
    phase, fraction = cell_phase(ds)
    split = (fraction < 1) if fraction is not None else xr.zeros_like(phase, bool)
    split = split.astype(int) + 2 * cell_inferred(ds)  # 1: seeds disagree, 2: inferred
    short = lambda k, s: (f"({phases.SHORT[k]})" if s == 2 else phases.SHORT[k] + "*" * s) if k >= 0 else "-"  # noqa: E731
    legend = "  ".join(f"{s}={n}" for s, n in zip(phases.SHORT, phases.PHASES))
    if x is None:
        code, agree = int(phase.values), float(fraction) if fraction is not None else 1.0
        return f"phase: {phases.PHASES[code] if code >= 0 else 'not run'} ({agree:.0%} of seeds)"
    lines = []
    for (label, panel), (_, disagree) in zip(_panels(phase, x, y), _panels(split, x, y)):
        if label:
            lines.append(f"[{label}]")
        corner = f"{y} \\ {x}" if y else x
        lines.append(f"{corner:>12} " + " ".join(f"{_value(v):>5}" for v in panel[x].values))
        ys = [_value(v) for v in panel[y].values] if y else [""]
        for yv, row, srow in zip(ys, panel.values, disagree.values):
            lines.append(f"{yv:>12} " + " ".join(f"{short(k, s):>5}" for k, s in zip(row, srow)))
    notes = [n for n, k in (("* seeds disagree", 1), ("(X) inferred, not run", 2)) if bool((split == k).any())]
    lines.append(legend + "".join(f"  {n}" for n in notes))
    return "\n".join(lines)


# --- curves and distributions (the figures of grok_jax.figures) ---

ACCURACIES = (  # name, legend, color
    ("train_acc", "train (labels trained on)", "#1f77b4"),
    ("test_acc", "test", "#2ca02c"),
    ("corrupt_acc", "corrupted vs their labels", "#d62728"),
    ("inversion_acc", "corrupted vs true labels", "#9467bd"),
    ("clean_acc", "clean training examples", "#ff7f0e"),
)


def lane_panels(ds: xr.Dataset) -> list[tuple[str, dict]]:
    """``(label, selection)`` of every lane of ``ds`` over the swept axes it still has
    (a selection may have dropped some), in grid order."""
    dims = _swept_dims(ds)
    out = []
    for combo in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        sel = dict(zip(dims, combo))
        out.append((", ".join(f"{d}={_value(ds[d].values[i])}" for d, i in sel.items()), sel))
    return out or [("", {})]


def _swept_dims(ds: xr.Dataset) -> list[str]:
    """The swept axes ``ds`` still has (a selection may have dropped some), in grid order."""
    return [d for d in json.loads(ds.attrs["axes"]) if d in ds.dims]


def _grid(rows: int, cols: int, width: float = 4.2, height: float = 3.0):
    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)


def _phase_name(ds: xr.Dataset, sel: dict) -> str:
    code = int(ds["phase"].isel(sel))
    return phases.PHASES[code] if code >= 0 else "not run"


def dynamics(ds: xr.Dataset, rows: Sequence[str], suptitle: str, paths: Sequence[str]) -> list[str]:
    """Curves over steps, one column per lane: ``rows`` of ``"accuracy"`` (the five
    accuracies, with the grokking step (test accuracy first ≥ 90%) and the
    unlearning step (corrupted labels forgotten) as vertical lines), ``"ipr"`` (mean
    IPR) and ``"norms"`` (weight norms)."""
    lanes = lane_panels(ds)
    fig, axs = _grid(len(rows), len(lanes))
    steps = ds["step"].values
    for j, (label, sel) in enumerate(lanes):
        lane = ds.isel(sel)
        for i, row in enumerate(rows):
            ax = axs[i, j]
            if row == "accuracy":
                for name, legend, color in ACCURACIES:
                    if np.isfinite(lane[name].values).any():
                        ax.plot(steps, lane[name].values, label=legend, color=color, lw=1.4)
                for key, text, style, y in (("grok_step", "grokking", "--", 0.55), ("unlearn_step", "unlearning", ":", 0.2)):
                    at = float(lane[key]) if key in lane else np.nan
                    if np.isfinite(at):
                        ax.axvline(at, color="k", ls=style, lw=1)
                        ax.text(at, y, f" {text} {at:g}", rotation=90, va="bottom", fontsize=7)
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("accuracy")
                ax.set_title(f"{label}: {_phase_name(ds, sel)}" if label else _phase_name(ds, sel), fontsize=10)
            elif row == "ipr":
                ax.plot(steps, lane["ipr"].values, color="#8c564b")
                ax.set_ylim(0, 1)
                ax.set_ylabel("mean IPR")
            elif row == "norms":
                for name in [v for v in ds.data_vars if v.startswith("norm_")] + ["weight_norm"]:
                    ax.plot(steps, lane[name].values, label=name, lw=1.2, ls="-" if name == "weight_norm" else "--")
                ax.set_yscale("log")
                ax.set_ylabel("weight norm")
            ax.set_xlabel("step")
            if j == 0 and row in ("accuracy", "norms"):
                ax.legend(fontsize=7, loc="best")
    return _save(fig, suptitle, paths)


def ipr_histograms(final: xr.DataArray, init: xr.DataArray, ds: xr.Dataset, bins: int, suptitle: str,
                   paths: Sequence[str]) -> list[str]:
    """Per-neuron IPR histograms, one panel per lane: at init (grey) and final; a
    row per value of the first of two swept axes left (e.g. a row per seed, a column
    per wd), else one row."""
    lanes = lane_panels(ds)
    dims = _swept_dims(ds)
    fig, axs = _grid(*((ds.sizes[dims[0]], ds.sizes[dims[1]]) if len(dims) == 2 else (1, len(lanes))))
    edges = np.linspace(0, 1, bins + 1)
    for ax, (label, sel) in zip(axs.flat, lanes):
        f, i = final.isel(sel).values, init.isel(sel).values
        ax.hist(i[np.isfinite(i)], edges, color="#bbbbbb", label="init")
        ax.hist(f[np.isfinite(f)], edges, color="#1f77b4", alpha=0.75, label="final")
        ax.set_xlabel("per-neuron IPR")
        ax.set_ylabel("neurons")
        head = f"{label}: " if label else ""
        ax.set_title(f"{head}{_phase_name(ds, sel)}, mean IPR {np.nanmean(f):.2f}", fontsize=10)
    axs.flat[0].legend(fontsize=8)
    return _save(fig, suptitle, paths)


def bn_scale_scatter(ds: xr.Dataset, init: xr.DataArray, r: xr.DataArray, bins: int, suptitle: str,
                     paths: Sequence[str]) -> list[str]:
    """Left: IPR histogram of all lanes' neurons, init and final; right: |BN scale|
    against IPR_k, one color per lane, its correlation in the legend."""
    fig, axs = _grid(1, 2, width=5.0, height=3.8)
    hist, scatter = axs[0]
    final = ds["ipr_hidden"].values
    edges = np.linspace(0, 1, bins + 1)
    hist.hist(init.values[np.isfinite(init.values)], edges, color="#bbbbbb", label="init")
    hist.hist(final[np.isfinite(final)], edges, color="#1f77b4", alpha=0.75, label="final")
    hist.set_xlabel("per-neuron IPR")
    hist.set_ylabel("neurons (all lanes)")
    hist.legend(fontsize=8)
    for label, sel in lane_panels(ds):
        scale = np.abs(ds["params.bn_scale"].isel(sel).values)
        scatter.scatter(ds["ipr_hidden"].isel(sel).values, scale, s=6, alpha=0.6,
                        label=f"{label or 'run'}: r = {float(r.isel(sel)):.2f}")
    scatter.set_xlabel("per-neuron IPR")
    scatter.set_ylabel("|BN scale|")
    scatter.legend(fontsize=7)
    return _save(fig, suptitle, paths)


def pruning_curves(curves: xr.Dataset, suptitle: str, paths: Sequence[str]) -> list[str]:
    """Accuracies (top) and losses (bottom) against the fraction of neurons pruned,
    one column per order (lowest IPR first, highest first, random): the mean over
    networks (and random orders), the band their minimum to maximum."""
    orders = [o for o in ("low", "high") if o in curves.order.values]
    groups = [(o, [o]) for o in orders]
    randoms = [o for o in curves.order.values if str(o).startswith("random")]
    if randoms:
        groups.append(("random", randoms))
    titles = {"low": "lowest IPR first", "high": "highest IPR first", "random": f"random order ({len(randoms)} per network)"}
    fig, axs = _grid(2, len(groups))
    frac = curves["fraction"].values
    spread = [d for d in curves.dims if d not in ("order", "fraction")]
    for j, (name, members) in enumerate(groups):
        sub = curves.sel(order=members)
        over = [*spread, "order"]
        for row, entries in ((0, ACCURACIES), (1, (("train_loss", "train", "#1f77b4"), ("test_loss", "test", "#2ca02c")))):
            ax = axs[row, j]
            for var, legend, color in entries:
                if not np.isfinite(sub[var].values).any():
                    continue
                stacked = sub[var].stack(_runs=over).transpose("fraction", "_runs").values
                ax.plot(frac, np.nanmean(stacked, 1), color=color, label=legend, lw=1.4)
                if stacked.shape[1] > 1:
                    ax.fill_between(frac, np.nanmin(stacked, 1), np.nanmax(stacked, 1), color=color, alpha=0.2, lw=0)
            ax.set_xlabel("fraction of neurons pruned")
            ax.set_ylabel("accuracy" if row == 0 else "loss")
            if row == 0:
                ax.set_ylim(-0.02, 1.02)
                ax.set_title(titles[name], fontsize=10)
            else:
                ax.set_yscale("log")
            if j == 0:
                ax.legend(fontsize=7)
    return _save(fig, suptitle, paths)


def prunable_vs_width(counts: xr.DataArray, suptitle: str, paths: Sequence[str]) -> list[str]:
    """Neurons prunable (left, with the neurons that must be kept) and their fraction
    of the width (right) against the width: each network a dot, the mean a line."""
    fig, axs = _grid(1, 2, width=4.5, height=3.6)
    widths = counts["width"].values.astype(float)
    other = [d for d in counts.dims if d != "width"]
    values = counts.transpose("width", *other).values.reshape(len(widths), -1)
    for ax, scale, label in ((axs[0, 0], 1.0, "neurons prunable"), (axs[0, 1], None, "fraction of width prunable")):
        v = values if scale else values / widths[:, None]
        for k in range(v.shape[1]):
            ax.scatter(widths, v[:, k], color="#1f77b4", s=12, alpha=0.5)
        with warnings.catch_warnings():  # a width with no network that reached the threshold: no mean
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(widths, np.nanmean(v, 1), color="k", marker="o", lw=1.2, label="mean over networks")
        ax.set_xscale("log")
        ax.set_xlim(widths.min() / 1.4, widths.max() * 1.4)
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("width N")
        ax.set_ylabel(label)
        if not np.isfinite(v).any():
            ax.text(0.5, 0.5, "no network reached the\ntest accuracy threshold", transform=ax.transAxes,
                    ha="center", va="center")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kept = np.nanmean(widths[:, None] - values, 1)
    axs[0, 0].plot(widths, kept, color="#d62728", marker="s", lw=1.2, label="neurons kept (N − prunable)")
    axs[0, 0].legend(fontsize=8)
    return _save(fig, suptitle, paths)

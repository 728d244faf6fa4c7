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

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from grok_jax import phases  # noqa: E402

PHASE_COLORS = ("#2ca02c", "#9bd770", "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e", "#000000")
LABELS = {"xi": "corruption fraction ξ", "wd": "weight decay", "alpha": "data fraction α",
          "dropout": "dropout", "lr": "learning rate", "seed": "seed"}


def title(ds: xr.Dataset) -> str:
    """The settings a figure was made with: the fixed ones and the seed count."""
    c = json.loads(ds.attrs["config"])
    swept = set(json.loads(ds.attrs["axes"]))
    fixed = lambda k, text: [] if k in swept else [text]  # noqa: E731  (swept ones label the panels)
    task = f"{c['task']} mod p={c['p']}" if not {"task", "p"} & swept else None
    parts = [*fixed("model", c.get("model", "mlp2")), *([task] if task else fixed("task", c["task"]) + fixed("p", f"p={c['p']}")),
             *fixed("width", f"N={c['width']}"), *fixed("activation", f"φ={c['activation']}"),
             *fixed("loss", c["loss"]), f"{c['steps']} steps"]
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


def heatmap(da: xr.DataArray, x: str, y: str | None, path: str, suptitle: str,
            phase: bool = False, fraction: xr.DataArray | None = None) -> str:
    """Saves one heatmap panel per combination of the non-(x, y) dims of ``da``;
    cells whose ``fraction`` (of seeds in the majority phase) is below 1 show it."""
    panels = _panels(da, x, y)
    fractions = [f for _, f in _panels(fraction, x, y)] if fraction is not None else [None] * len(panels)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols + (2.2 if phase else 1.0), 3.8 * rows),
                            squeeze=False, constrained_layout=True)
    if phase:
        cmap = ListedColormap(PHASE_COLORS)
        norm = BoundaryNorm(np.arange(len(PHASE_COLORS) + 1) - 0.5, len(PHASE_COLORS))
    else:
        cmap, norm = "viridis", plt.Normalize(0, 1)
    for ax, (label, panel), frac in zip(axs.flat, panels, fractions):
        values = np.ma.masked_less(panel.values.astype(float), 0) if phase else panel.values
        im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        for (i, j), f in np.ndenumerate(frac.values if frac is not None else []):
            if f < 1:
                ax.text(j, i, f"{f:.0%}", ha="center", va="center", fontsize=7, color="white")
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
        fig.legend(handles=handles, loc="outside right center", title="phase")
    else:
        fig.colorbar(im, ax=axs, shrink=0.8, label=da.name)
    width_in = fig.get_size_inches()[0]
    fig.suptitle("\n".join(textwrap.wrap(suptitle, width=int(width_in * 13))), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell_phase(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray | None]:
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
    phase, fraction = _cell_phase(ds)
    final = ds.isel(step=-1)
    if "seed" in ds.dims:
        final = final.mean("seed")
    head = title(ds)
    paths = [heatmap(phase, x, y, os.path.join(out, "phase_diagram.png"), f"Phase diagram: {head}", phase=True,
                     fraction=fraction)]
    for name, what in (("test_acc", "test accuracy"), ("train_acc", "train accuracy (labels trained on)")):
        da = final[name].rename(what)
        paths.append(heatmap(da, x, y, os.path.join(out, f"{name}.png"), f"Final {what}: {head}"))
    return paths


def phase_table(ds: xr.Dataset) -> str:
    """A text table of the (majority) phase of every cell, one block per panel;
    ``*`` marks cells where the seeds disagree."""
    x, y = plot_axes(ds)
    phase, fraction = _cell_phase(ds)
    split = (fraction < 1) if fraction is not None else xr.zeros_like(phase, bool)
    short = lambda k, s: (phases.SHORT[k] if k >= 0 else "-") + ("*" if s else "")  # noqa: E731
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
    lines.append(legend + ("  (* seeds disagree)" if bool(split.any()) else ""))
    return "\n".join(lines)

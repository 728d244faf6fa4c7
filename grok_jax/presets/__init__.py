"""Figure presets: one config file per figure of the paper, each with ``get_config(scale)``.

A preset is an ``ml_collections.ConfigDict`` with

* ``description``: what the figure shows (``python -m grok_jax.figures --list``);
* ``renderer``: how it is drawn, a name of :data:`grok_jax.figures.RENDERERS`;
* ``runs``: run name -> the grid config of a sweep it needs (a results store each,
  shared by every figure whose run has the same name: such runs must have the same
  config);
* ``options``: the renderer's settings;
* ``claims``: the paper's claims about the figure, as :class:`Claim` checks on the
  numbers the renderer writes to the figure's JSON ``summary`` (empty: none).

Scales: ``tiny`` (seconds; the tests and CI), ``quick`` (minutes on a 2-core laptop
CPU: smaller p, width and grid) and ``paper`` (the paper's settings). Copy a file,
change a field, and pass its path: ``python -m grok_jax.figures --figure=my_fig1.py``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import ml_collections

from grok_jax.config import base_config

SCALES = ("tiny", "quick", "paper")


class Claim(NamedTuple):
    """A claim of the paper, checked on a figure's summary (the dict its renderer
    returns, written to the figure's JSON).

    Attributes:
      text: the claim in words, with its figure ("Fig. 1: wd 0 is Coexistence").
      check: ``check(summary) -> (holds, measured)``: whether it holds and the
        number (or phase) it was judged on, as text. A ``KeyError``/``LookupError``
        (the number is missing) counts as not holding.
      scales: where the paper's claim is expected to hold; elsewhere it is reported
        as not expected, not as a failure (tiny runs 60 steps: nothing grokks).
      why: the threshold the check uses and why.
    """

    text: str
    check: Callable[[dict], tuple[bool, str]]
    scales: tuple[str, ...] = ("quick", "paper")
    why: str = ""


def lane(summary: dict, key: str = "lanes", **where: Any) -> dict:
    """The record of ``summary[key]`` whose fields equal ``where`` (e.g. ``wd=5.0``);
    a ``LookupError`` names what is missing."""
    for record in summary[key]:
        if all(record.get(k) == v for k, v in where.items()):
            return record
    raise LookupError(f"no lane with {where}")


def cells(summary: dict, run: str | None = None, **where: Any) -> list[str]:
    """The phases (names) of the cells of a phase-diagram summary (``summary["cells"]``)
    whose coordinates equal ``where``, of run ``run`` (default: every run)."""
    runs = summary["cells"] if run is None else {run: summary["cells"][run]}
    return [c["phase"] for records in runs.values() for c in records
            if all(c.get(k) == v for k, v in where.items())]


def run_config(scale: str) -> ml_collections.ConfigDict:
    """The base grid config of a figure's run at ``scale``: the paper's settings
    (p 97, N 500, 2000 steps), quick (p 41, N 128, 1000 steps) or tiny (p 11, N 24,
    60 steps, for tests)."""
    config = base_config("paper" if scale == "paper" else "small")
    if scale == "tiny":
        config.p, config.width, config.steps, config.log_every = 11, 24, 60, 20
    return config


def pick(scale: str, tiny: Any, quick: Any, paper: Any) -> Any:
    """The value of a setting at ``scale``."""
    return {"tiny": tiny, "quick": quick, "paper": paper}[scale]


def phase_is(phase: str, **where: Any) -> Callable[[dict], tuple[bool, str]]:
    """A check: the lane at ``where`` (e.g. ``wd=5.0``) ends in ``phase``."""
    def check(summary: dict) -> tuple[bool, str]:
        got = lane(summary, **where)["phase"]
        return got == phase, str(got)
    return check


def count(summary: dict, names: tuple[str, ...], run: str | None = None, **where: Any) -> int:
    """How many cells at ``where`` are in one of the phases ``names``; a
    ``LookupError`` if no cell is at ``where`` (a value not on the axis)."""
    found = cells(summary, run, **where)
    if not found:
        raise LookupError(f"no cell with {where}")
    return sum(p in names for p in found)


def agreement(summary: dict, run: str, field: str, a: Any, b: Any) -> tuple[float, int]:
    """The share of cells whose phase is the same at ``field`` = ``a`` and = ``b``
    (e.g. task add and mul), over the cells run at both, and their number."""
    def panel(value: Any) -> dict:
        return {tuple((k, v) for k, v in c.items() if k not in (field, "phase")): c["phase"]
                for c in summary["cells"][run] if c.get(field) == value and c["phase"] is not None}
    first, second = panel(a), panel(b)
    both = [k for k in first if k in second]
    if not both:
        raise LookupError(f"no cell run at both {field}={a} and {field}={b}")
    return sum(first[k] == second[k] for k in both) / len(both), len(both)


INVERSION = ("Partial Inversion", "Full Inversion")  # the Inversion phases


GENERALIZING = ("Coexistence",) + INVERSION  # the phases whose test accuracy is high


def more_cells(label: str, field: str, low: Any, high: Any, names: tuple[str, ...] = ("Coexistence",),
               run: str | None = None) -> Claim:
    """The claim that ``field`` = ``high`` (e.g. a larger weight decay) gives more
    cells in the phases ``names`` than ``low``, with its label (e.g. "Fig. 7b: the
    3-layer MLP")."""
    what = "Coexistence or Inversion" if names == GENERALIZING else " or ".join(names)

    def check(summary: dict) -> tuple[bool, str]:
        a, b = (count(summary, names, run, **{field: v}) for v in (low, high))
        return b > a, f"{a} {what} cells at {field} {low:g}, {b} at {high:g}"
    return Claim(f"{label} shows the weight-decay trend: more {what} at {field} {high:g} than {low:g}", check,
                 why=f"strictly more {what} cells on the same α × ξ grid: the paper states a direction, not a "
                     "size, so any increase counts (with one seed a boundary cell may flip)")


def figure_config(description: str, renderer: str, **runs: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A preset: its description, renderer and runs (``options`` starts empty)."""
    config = ml_collections.ConfigDict()
    config.description = description
    config.renderer = renderer
    config.runs = ml_collections.ConfigDict(runs)
    config.options = ml_collections.ConfigDict()
    config.claims = ()  # Claim tuples: the paper's claims, checked on the summary
    return config


def xi_axis(scale: str) -> tuple[float, ...]:
    """Corruption fractions of a phase diagram: 19 at paper scale (0 … 0.9)."""
    return pick(scale, (0.0, 0.4), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                tuple(round(0.05 * i, 2) for i in range(19)))


def alpha_axis(scale: str) -> tuple[float, ...]:
    """Data fractions of a phase diagram: 17 at paper scale (0.1 … 0.9)."""
    return pick(scale, (0.5, 0.7), (0.3, 0.5, 0.7), tuple(round(0.1 + 0.05 * i, 2) for i in range(17)))

"""Figure presets: one config file per figure of the paper, each with ``get_config(scale)``.

A preset is an ``ml_collections.ConfigDict`` with

* ``description``: what the figure shows (``python -m grok_jax.figures --list``);
* ``renderer``: how it is drawn, a name of :data:`grok_jax.figures.RENDERERS`;
* ``runs``: run name -> the grid config of a sweep it needs (a results store each,
  shared by every figure whose run has the same name: such runs must have the same
  config);
* ``options``: the renderer's settings.

Scales: ``tiny`` (seconds; the tests and CI), ``quick`` (minutes on a 2-core laptop
CPU: smaller p, width and grid) and ``paper`` (the paper's settings). Copy a file,
change a field, and pass its path: ``python -m grok_jax.figures --figure=my_fig1.py``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from grok_jax.config import base_config

SCALES = ("tiny", "quick", "paper")


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


def figure_config(description: str, renderer: str, **runs: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A preset: its description, renderer and runs (``options`` starts empty)."""
    config = ml_collections.ConfigDict()
    config.description = description
    config.renderer = renderer
    config.runs = ml_collections.ConfigDict(runs)
    config.options = ml_collections.ConfigDict()
    return config


def xi_axis(scale: str) -> tuple[float, ...]:
    """Corruption fractions of a phase diagram: 19 at paper scale (0 … 0.9)."""
    return pick(scale, (0.0, 0.4), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
                tuple(round(0.05 * i, 2) for i in range(19)))


def alpha_axis(scale: str) -> tuple[float, ...]:
    """Data fractions of a phase diagram: 17 at paper scale (0.1 … 0.9)."""
    return pick(scale, (0.5, 0.7), (0.3, 0.5, 0.7), tuple(round(0.1 + 0.05 * i, 2) for i in range(17)))

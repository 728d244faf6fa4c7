"""Default settings shared by every grid in ``sweeps/`` and their validation."""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from grok_jax.data import check_task, split_sizes
from grok_jax.errors import ConfigError

SWEEPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps")
# Settings a sweep may vary per lane inside one compiled program (traced values).
TRACED_AXES = ("seed", "xi", "wd", "alpha", "dropout", "lr")
SCALES = ("small", "paper")


def base_config(scale: str = "small") -> ml_collections.ConfigDict:
    """Settings of PAPER.md §1-3; ``scale='small'`` shrinks p, width and steps so a
    grid finishes in minutes on a laptop CPU, ``'paper'`` is the paper's scale."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    paper = scale == "paper"
    c = ml_collections.ConfigDict()
    c.scale = scale  # which preset the sizes below come from (recorded for titles)
    c.task = "add"  # (m ∘ n) mod p with ∘ one of add, sub, mul, div (div needs prime p)
    c.p = 97 if paper else 41  # modulus; the data set is all p² ordered pairs
    c.width = 500 if paper else 128  # hidden width N
    c.activation = "quad"  # φ: "quad" (x², the paper's Eq. 1) or "relu" (App. N)
    c.batchnorm = False  # post-activation BatchNorm with learned scale and shift (Eq. 5)
    c.loss = "mse"  # "mse" (mean over examples and p outputs, one-hot targets) or "ce"
    c.steps = 2000 if paper else 1000  # full-batch AdamW steps
    c.log_every = 20  # metrics are logged every this many steps (and at step 0)
    c.lr = 0.01  # AdamW learning rate
    c.b1 = 0.9  # AdamW β1
    c.b2 = 0.98  # AdamW β2
    c.eps = 1e-8  # AdamW ε
    c.wd = 0.0  # decoupled weight decay, PyTorch semantics (w ← w − lr·wd·w per step)
    c.alpha = 0.5  # data fraction α: training pairs are the first ⌊α p²⌋ of a shuffle
    c.xi = 0.0  # corruption fraction ξ: first ⌊ξ n_train⌋ training labels made random
    c.dropout = 0.0  # dropout probability on the hidden pre-activation
    c.seed = 0  # seed of every random stream (init, split, corruption, dropout)
    c.sweep = ml_collections.ConfigDict()  # axis name -> tuple of values; product is run
    # Most programs per grid when α is swept: lanes are grouped by α and padded to their
    # group's largest. Each group costs a compilation (seconds), worth it at paper scale.
    c.compile_groups = 8 if paper else 1
    c.plot = ml_collections.ConfigDict({"x": "xi", "y": "wd"})  # heatmap axes
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` with a one-line message naming the first bad value."""
    known = set(base_config())
    for name in config:
        if name not in known:
            raise ConfigError(f"unknown config field {name!r}; valid fields: {', '.join(sorted(known))}")
    check_task(config.task, config.p)
    for name in config.sweep:
        if name not in TRACED_AXES:
            raise ConfigError(f"cannot sweep {name!r}; sweepable axes: {', '.join(TRACED_AXES)}")
        if not isinstance(config.sweep[name], (tuple, list)):
            raise ConfigError(f"sweep axis {name!r} must be a tuple of values, e.g. (0, 1), "
                              f"not {config.sweep[name]!r}")
        values = tuple(config.sweep[name])
        for value in values:
            integral = isinstance(value, int) and not isinstance(value, bool)
            if not (integral if name == "seed" else integral or isinstance(value, float)):
                kind = "integers" if name == "seed" else "numbers"
                raise ConfigError(f"sweep axis {name!r} has {value!r}; its values must be {kind}")
        if not values:
            raise ConfigError(f"sweep axis {name!r} has no values")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep axis {name!r} repeats a value: {values}")
    for alpha in axis_values(config, "alpha"):
        for xi in axis_values(config, "xi"):
            split_sizes(alpha, xi, config.task, config.p)
    for rate in axis_values(config, "dropout"):
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"dropout={rate} is outside [0, 1)")
    for name in ("wd", "lr"):
        for value in axis_values(config, name):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value} must be a finite number >= 0")
    for name in ("steps", "log_every", "width", "compile_groups"):
        if config[name] < 1:
            raise ConfigError(f"{name}={config[name]} must be >= 1")
    if config.steps % config.log_every:
        raise ConfigError(f"steps={config.steps} is not a multiple of log_every={config.log_every}")
    for name, valid in (("activation", ("quad", "relu")), ("loss", ("mse", "ce"))):
        if config[name] not in valid:
            raise ConfigError(f"unknown {name} {config[name]!r}; valid: {', '.join(valid)}")


STATIC_FIELDS = ("task", "p", "width", "activation", "batchnorm", "loss", "steps", "log_every", "b1", "b2", "eps")


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a compiled program closes over (hashable, so it keys caches).

    Traced settings (seed, ξ, wd, α, dropout, lr) are left out, so grids that differ
    only in them share one compiled program; ``use_dropout`` says whether the
    program draws dropout masks at all.
    """
    static = {name: config[name] for name in STATIC_FIELDS}
    static["use_dropout"] = any(rate > 0 for rate in axis_values(config, "dropout"))
    return ml_collections.FrozenConfigDict(static)


def axis_values(config: ml_collections.ConfigDict, name: str) -> tuple:
    """The values a setting takes in the grid: the swept ones, else the fixed one."""
    return tuple(config.sweep[name]) if name in config.sweep else (config[name],)


def available_grids() -> list[str]:
    """Names of the grids shipped in ``sweeps/``."""
    names = os.listdir(SWEEPS_DIR) if os.path.isdir(SWEEPS_DIR) else []
    return sorted(n[:-3] for n in names if n.endswith(".py") and not n.startswith("_"))


def grid_path(grid: str) -> str:
    """The config file of a grid: a name in ``sweeps/`` or a path to a ``.py`` file."""
    if grid.endswith(".py"):
        if not os.path.isfile(grid):
            raise ConfigError(f"grid file {grid!r} does not exist")
        return os.path.abspath(grid)
    path = os.path.join(SWEEPS_DIR, f"{grid}.py")
    if not os.path.isfile(path):
        valid = ", ".join(available_grids()) or f"none found in {SWEEPS_DIR} (install with pip install -e)"
        raise ConfigError(f"unknown grid {grid!r}; valid grids: {valid}")
    return path


def load_config(grid: str, scale: str = "small") -> ml_collections.ConfigDict:
    """``get_config(scale)`` of a grid, as the command line loads it.

    Example:
      >>> config = load_config("wd_xi")
      >>> config.steps = 500
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    spec = importlib.util.spec_from_file_location(f"grok_jax_grid_{grid}", grid_path(grid))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(scale)

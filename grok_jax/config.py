"""Default settings shared by every grid in ``grok_jax/grids/`` and their validation."""

from __future__ import annotations

import difflib
import importlib.util
import math
import os

import ml_collections

from grok_jax.data import check_task, split_sizes
from grok_jax.errors import ConfigError

GRIDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")  # installed with the package
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


# Python types of the fields (a float field takes an int too; bool is no number).
FIELD_TYPES = {
    "scale": str, "task": str, "p": int, "width": int, "activation": str, "batchnorm": bool, "loss": str,
    "steps": int, "log_every": int, "lr": float, "b1": float, "b2": float, "eps": float, "wd": float,
    "alpha": float, "xi": float, "dropout": float, "seed": int, "compile_groups": int,
}
CHOICES = {"scale": SCALES, "activation": ("quad", "relu"), "loss": ("mse", "ce")}
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38  # swept values are float32 arrays on the device
MAX_P = 46340  # pair indices m·p + n are int32: p² < 2³¹
PLOT_FIELDS = ("x", "y")
PLOT_AXES = tuple(a for a in TRACED_AXES if a != "seed")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` with a one-line message naming the first bad value.

    Every field is checked, fixed and swept values alike, before anything runs.

    Example:
      >>> config = load_config("tiny"); config.b2 = 1.0
      >>> check_config(config)
      Traceback (most recent call last):
      ConfigError: b2=1.0 is outside [0, 1)
    """
    known = tuple(base_config())
    for name in config:
        if name not in known:
            raise ConfigError(f"unknown config field {name!r}{_did_you_mean(name, known)}; "
                              f"valid fields: {', '.join(sorted(known))}")
    for name in known:
        if name not in config:
            raise ConfigError(f"config has no field {name!r}; start from grok_jax.config.base_config()")
    for name in FIELD_TYPES:
        _check_value(name, config[name])
    _check_sweep(config)
    _check_plot(config.plot)
    check_task(config.task, config.p)
    if config.steps % config.log_every:
        raise ConfigError(f"steps={config.steps} is not a multiple of log_every={config.log_every}")
    for alpha in axis_values(config, "alpha"):
        for xi in axis_values(config, "xi"):
            split_sizes(alpha, xi, config.task, config.p)


def _check_sweep(config: ml_collections.ConfigDict) -> None:
    if not isinstance(config.sweep, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"sweep must map axis names to tuples of values, not {config.sweep!r}")
    for name in config.sweep:
        if name not in TRACED_AXES:
            raise ConfigError(f"cannot sweep {name!r}{_did_you_mean(name, TRACED_AXES)}; "
                              f"sweepable axes: {', '.join(TRACED_AXES)}")
        values = config.sweep[name]
        if not isinstance(values, (tuple, list)):
            raise ConfigError(f"sweep axis {name!r} must be a tuple of values, e.g. (0, 1), not {values!r}")
        if not values:
            raise ConfigError(f"sweep axis {name!r} has no values")
        for value in values:
            _check_value(name, value, swept=True)
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep axis {name!r} repeats a value: {tuple(values)}")


def _check_plot(plot: ml_collections.ConfigDict) -> None:
    if plot.get("x") is not None and plot.get("x") == plot.get("y"):
        raise ConfigError(f"plot.x and plot.y are both {plot.x!r}; a heatmap needs two axes")
    for name in plot:
        if name not in PLOT_FIELDS:
            raise ConfigError(f"unknown config field 'plot.{name}'{_did_you_mean(name, PLOT_FIELDS)}; "
                              f"valid: plot.x, plot.y")
        if plot[name] is not None and plot[name] not in PLOT_AXES:
            raise ConfigError(f"plot.{name}={plot[name]!r} is not a heatmap axis; valid: {', '.join(PLOT_AXES)} "
                              "(seeds are aggregated)")


def _check_value(name: str, value: object, swept: bool = False) -> None:
    """One value of field ``name`` (fixed, or one of a sweep axis'): type, then range."""
    kind = FIELD_TYPES[name]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {int: is_int, float: is_int or isinstance(value, float), bool: isinstance(value, bool),
          str: isinstance(value, str)}[kind]
    if not ok:
        what = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[kind]
        where = f"sweep axis {name!r} has {value!r}; each value" if swept else f"{name}={value!r}"
        raise ConfigError(f"{where} must be {what}")
    bad = _range_error(name, value)
    if bad:
        raise ConfigError(f"{name}={value!r} {bad}")


def _range_error(name: str, value) -> str | None:
    """Why ``value`` is out of range for ``name``, or ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and FIELD_TYPES[name] is float and not (
            math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        return f"must be a finite number (float32: |x| <= {FLOAT32_MAX:.4g})"
    if name in CHOICES and value not in CHOICES[name]:
        return f"is not valid; valid: {', '.join(CHOICES[name])}"
    if name == "seed" and not -2**31 <= value <= INT32_MAX:
        return f"is outside int32 [{-2**31}, {INT32_MAX}]"
    if name == "p" and value > MAX_P:
        return f"is too large: pair indices are int32, p <= {MAX_P}"
    if name in ("steps", "log_every", "width", "compile_groups") and not 1 <= value <= INT32_MAX:
        return f"must be >= 1 (and at most {INT32_MAX})"
    if name in ("b1", "b2", "dropout") and not 0.0 <= value < 1.0:
        return "is outside [0, 1)"
    if name == "eps" and not value > 0:
        return "must be > 0"
    if name in ("wd", "lr") and not value >= 0:
        return "must be a finite number >= 0"
    return None


def _did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


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
    """Names of the grids shipped in ``grok_jax/grids/``."""
    names = os.listdir(GRIDS_DIR)
    return sorted(n[:-3] for n in names if n.endswith(".py") and not n.startswith("_"))


def grid_path(grid: str) -> str:
    """The config file of a grid: a name in ``grok_jax/grids/`` or a path to a ``.py`` file."""
    if grid.endswith(".py"):
        if not os.path.isfile(grid):
            raise ConfigError(f"grid file {grid!r} does not exist")
        return os.path.abspath(grid)
    path = os.path.join(GRIDS_DIR, f"{grid}.py")
    if not os.path.isfile(path):
        valid = ", ".join(available_grids())
        raise ConfigError(f"unknown grid {grid!r}; valid grids: {valid}")
    return path


def load_config(grid: str, scale: str = "small") -> ml_collections.ConfigDict:
    """``get_config(scale)`` of a grid, as the command line loads it. A file that
    fails to import, lacks ``get_config`` or returns no ConfigDict is a ``ConfigError``
    naming the file and the error's last line.

    Example:
      >>> config = load_config("wd_xi")
      >>> config.steps = 500
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    path = grid_path(grid)
    try:
        spec = importlib.util.spec_from_file_location(f"grok_jax_grid_{os.path.basename(path)[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever a user's file raises, say where
        raise ConfigError(f"grid file {path} failed to import: {_last_line(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"grid file {path} defines no get_config(scale)")
    try:
        config = module.get_config(scale)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"get_config({scale!r}) of {path} failed: {_last_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config({scale!r}) of {path} returned {type(config).__name__}, not an "
                          "ml_collections.ConfigDict (start from grok_jax.config.base_config(scale))")
    return config


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1].strip() if lines else ''}".rstrip(": ")

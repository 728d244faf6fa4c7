"""Default settings shared by every grid in ``grok_jax/grids/`` and their validation."""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import math
import os
from typing import Callable

import ml_collections

from grok_jax.data import check_task, split_sizes
from grok_jax.errors import ConfigError
from grok_jax.models import ACTIVATION_MODELS, BATCHNORM_MODELS, MODELS
from grok_jax.models.mlp2 import BN_STATS

GRIDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")  # installed with the package
# Settings a sweep may vary per lane inside one compiled program (traced values).
TRACED_AXES = ("seed", "xi", "wd", "alpha", "dropout", "lr")
# Settings a sweep may vary that change the program (shapes or code): each
# combination of their values is a compile group of its own.
STATIC_AXES = ("model", "task", "p", "width", "activation", "loss", "batch_size", "parameterization")
SWEEPABLE = TRACED_AXES + STATIC_AXES
SCALES = ("small", "paper")
# The paper's training settings of each architecture (§2.2, Fig. 7) where they differ
# from the two-layer MLP's, per scale: base_config(scale, model) starts from them, and
# the command line applies them when --config.model names another model than the grid's
# (to the fields the grid left at their defaults; see switch_model).
MODEL_DEFAULTS = {
    "mlp3": {"small": {}, "paper": {"steps": 5000}},
    "transformer": {"small": {"width": 32, "lr": 0.002, "steps": 1500},
                    "paper": {"width": 128, "lr": 0.001, "steps": 3000}},
}


def base_config(scale: str = "small", model: str = "mlp2") -> ml_collections.ConfigDict:
    """Settings of PAPER.md §1-3; ``scale='small'`` shrinks p, width and steps so a
    grid finishes in minutes on a laptop CPU, ``'paper'`` is the paper's scale.
    ``model`` takes that architecture's own settings (:data:`MODEL_DEFAULTS`).

    Example:
      >>> c = base_config("paper", model="transformer")
      >>> c.width, c.lr, c.steps                           # (128, 0.001, 3000)
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    paper = scale == "paper"
    c = ml_collections.ConfigDict()
    c.scale = scale  # which preset the sizes below come from (recorded for titles)
    # model by name, see grok_jax.models.MODELS: "mlp2" (the paper's Eq. 1), "mlp3" (3-layer
    # ReLU MLP, Fig. 7b), "transformer" (1-layer encoder, Fig. 7a; width is its d_embed)
    c.model = "mlp2"
    c.task = "add"  # (m ∘ n) mod p with ∘ one of add, sub, mul, div (div needs prime p)
    c.p = 97 if paper else 41  # modulus; the data set is all p² ordered pairs
    c.width = 500 if paper else 128  # hidden width N
    c.activation = "quad"  # mlp2's φ: "quad" (x², the paper's Eq. 1) or "relu" (App. N); the others are ReLU
    c.parameterization = "standard"  # mlp3's init: "standard" N(0, 2/fan_in) or "lazy" N(0, 2/N^(2/3)) (App. G.3)
    c.heads = 4  # transformer: attention heads (must divide width, the embedding dimension)
    c.layernorm = False  # transformer: LayerNorm before each sublayer (the paper's has none)
    c.tie_embeddings = False  # transformer: read out with the token embedding (the paper's does not)
    c.batchnorm = False  # post-activation BatchNorm with learned scale and shift (Eq. 5)
    # What BatchNorm's eval mode normalizes with: "running" (PyTorch BatchNorm1d: running
    # mean and unbiased variance, momentum 0.1) or "full_batch" (all training rows' statistics)
    c.bn_stats = "running"
    c.loss = "mse"  # "mse" (mean over examples and p outputs, one-hot targets) or "ce"
    c.steps = 2000 if paper else 1000  # AdamW steps
    # rows per step: 0 = full batch; B > 0 = mini-batches of B rows, a fresh random order of
    # the training rows each epoch, the last batch of an epoch partial (see scale_for_batch)
    c.batch_size = 0
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
    # float32 matmul precision (jax.default_matmul_precision): "highest" on every platform
    # by default: true float32 (a no-op on CPUs; no TF32 on GPUs, as PyTorch's float32
    # default; 6 bf16 passes on TPUs). "high" (bf16×3) and "default" (TF32 / one bf16 pass)
    # are faster on accelerators and change results beyond rounding
    c.matmul_precision = "highest"
    c.sweep = ml_collections.ConfigDict()  # axis name -> tuple of values; product is run
    # Most programs per grid when α is swept: lanes are grouped by α and padded to their
    # group's largest. Each group costs a compilation (seconds), worth it at paper scale.
    c.compile_groups = 8 if paper else 1
    c.plot = ml_collections.ConfigDict({"x": "xi", "y": "wd"})  # heatmap axes
    c.update(model_defaults(model, scale))
    c.model = model
    return c


def model_defaults(model: str, scale: str) -> dict:
    """The settings ``model`` trains with at ``scale`` where they differ from the
    two-layer MLP's: none for a model registered without an entry in
    :data:`MODEL_DEFAULTS`; a ``ConfigError`` names an unknown model."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r} is not valid; valid: {', '.join(MODELS)}")
    return dict(MODEL_DEFAULTS.get(model, {}).get(scale, {}))


def switch_model(config: ml_collections.ConfigDict, grid: ml_collections.ConfigDict, scale: str,
                 given: set[str]) -> dict:
    """Gives ``config``, the config of grid ``grid`` with ``config.model`` changed,
    that model's settings (:func:`model_defaults`) in the fields ``grid`` left at
    its own model's defaults, that are not swept and not in ``given`` (set by the
    user); returns the fields it set.

    Example:
      >>> config = load_config("wd_xi"); config.model = "transformer"
      >>> switch_model(config, load_config("wd_xi"), "small", given={"steps"})
      {'width': 32, 'lr': 0.002}
    """
    grid_defaults = base_config(scale, grid.model)
    changed = {name: value for name, value in model_defaults(config.model, scale).items()
               if name not in given and name not in config.sweep and grid[name] == grid_defaults[name]}
    config.update(changed)
    return changed


# Python types of the fields (a float field takes an int too; bool is no number).
FIELD_TYPES = {
    "scale": str, "model": str, "task": str, "p": int, "width": int, "activation": str, "batchnorm": bool,
    "parameterization": str, "heads": int, "layernorm": bool, "tie_embeddings": bool,
    "bn_stats": str, "loss": str, "batch_size": int, "steps": int, "log_every": int, "lr": float, "b1": float, "b2": float, "eps": float, "wd": float,
    "alpha": float, "xi": float, "dropout": float, "seed": int, "compile_groups": int, "matmul_precision": str,
}
CHOICES = {"scale": SCALES, "model": MODELS, "activation": ("quad", "relu"), "loss": ("mse", "ce"),
           "bn_stats": BN_STATS, "parameterization": ("standard", "lazy"),
           "matmul_precision": ("highest", "high", "default")}
# MODELS: looked up when checked, so that models registered later count
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38  # swept values are float32 arrays on the device
MAX_P = 46340  # pair indices m·p + n are int32: p² < 2³¹
PLOT_FIELDS = ("x", "y")
PLOT_AXES = tuple(a for a in TRACED_AXES if a != "seed") + ("p", "width", "batch_size")


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
    if config.steps % config.log_every:
        raise ConfigError(f"steps={config.steps} is not a multiple of log_every={config.log_every}")
    _check_model_options(config)
    for task, p, batch in itertools.product(*(axis_values(config, a) for a in ("task", "p", "batch_size"))):
        check_task(task, p)
        for alpha, xi in itertools.product(axis_values(config, "alpha"), axis_values(config, "xi")):
            n_train, _ = split_sizes(alpha, xi, task, p)
            rows = min(batch or n_train, n_train)  # rows of a step; the epoch's last batch has the rest
            if config.batchnorm and 1 in (rows, n_train % rows or rows):
                raise ConfigError(f"batch_size={batch} with alpha={alpha} at p={p} ({n_train} training pairs) "
                                  "gives batches of one row, whose BatchNorm statistics are undefined (PyTorch "
                                  "raises); choose another batch_size or alpha")


def _check_model_options(config: ml_collections.ConfigDict) -> None:
    """Options that only some models have are refused for the others, rather than
    silently ignored."""
    for model in axis_values(config, "model"):
        if config.batchnorm and model not in BATCHNORM_MODELS:
            raise ConfigError(f"batchnorm=True: model {model!r} has no BatchNorm option; models with one: "
                              f"{', '.join(BATCHNORM_MODELS)}")
        if model not in ACTIVATION_MODELS and "activation" in config.sweep:
            raise ConfigError(f"sweep axis 'activation' does nothing for model {model!r} (a ReLU network); "
                              f"models with an activation choice: {', '.join(ACTIVATION_MODELS)}")
        if model == "transformer":
            for width in axis_values(config, "width"):
                if width % config.heads:
                    raise ConfigError(f"heads={config.heads} does not divide width={width} (the transformer's "
                                      "embedding dimension)")


def _check_sweep(config: ml_collections.ConfigDict) -> None:
    if not isinstance(config.sweep, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"sweep must map axis names to tuples of values, not {config.sweep!r}")
    for name in config.sweep:
        if name not in SWEEPABLE:
            raise ConfigError(f"cannot sweep {name!r}{_did_you_mean(name, SWEEPABLE)}; "
                              f"sweepable axes: {', '.join(SWEEPABLE)}")
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
    if name in ("steps", "log_every", "width", "compile_groups", "heads") and not 1 <= value <= INT32_MAX:
        return f"must be >= 1 (and at most {INT32_MAX})"
    if name == "batch_size" and not 0 <= value <= INT32_MAX:
        return "must be >= 0 (0: full batch)"
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


STATIC_FIELDS = ("model", "task", "p", "width", "activation", "batchnorm", "bn_stats", "loss", "batch_size",
                 "steps", "log_every", "b1", "b2", "eps", "parameterization", "heads", "layernorm", "tie_embeddings",
                 "matmul_precision")


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a compiled program closes over (hashable, so it keys caches).

    Traced settings (seed, ξ, wd, α, dropout, lr) are left out, so grids that differ
    only in them share one compiled program; ``use_dropout`` says whether the
    program draws dropout masks at all. The static axes of a sweep must be fixed
    first (:func:`static_groups`).
    """
    swept = [name for name in STATIC_AXES if name in config.sweep]
    if swept:
        raise ValueError(f"static axes {swept} are swept: take one of static_groups(config) first")
    static = {name: config[name] for name in STATIC_FIELDS}
    static["use_dropout"] = any(rate > 0 for rate in axis_values(config, "dropout"))
    return ml_collections.FrozenConfigDict(static)


def static_groups(config: ml_collections.ConfigDict) -> list[tuple[dict, ml_collections.ConfigDict]]:
    """One ``(values, config)`` per combination of the swept static axes, in grid
    order: ``values`` maps each swept static axis to its value, ``config`` is the
    grid's config with those values fixed and only the traced axes left swept.

    Example:
      >>> config.sweep.width = (64, 128)
      >>> [values for values, _ in static_groups(config)]
      [{'width': 64}, {'width': 128}]
    """
    swept = [name for name in config.sweep if name in STATIC_AXES]
    groups = []
    for combo in itertools.product(*(config.sweep[name] for name in swept)):
        values = dict(zip(swept, combo))
        group = ml_collections.ConfigDict(config.to_dict())
        for name, value in values.items():
            setattr(group, name, value)
            del group.sweep[name]
        groups.append((values, group))
    return groups


def scale_for_batch(config: ml_collections.ConfigDict, batch_size: int, reference: int = 256
                    ) -> ml_collections.ConfigDict:
    """A copy of ``config`` trained in mini-batches of ``batch_size`` with the
    paper's scaling (App. A): ``steps × reference/batch_size`` steps (and
    ``log_every`` likewise, so that as many states are logged) and learning rates
    ``× sqrt(batch_size/reference)``, swept ones included.

    Example:
      >>> c = scale_for_batch(load_config("wd_xi"), 64)   # 1000 steps at lr 0.01 ->
      >>> c.batch_size, c.steps, c.lr                      # (64, 4000, 0.005)
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1 to scale for")
    if "batch_size" in config.sweep:
        raise ConfigError("batch_size is swept: the batch sizes of one store share steps and log_every, so "
                          "scale each batch size's config separately (one store each)")
    c = ml_collections.ConfigDict(config.to_dict())
    factor = reference / batch_size
    steps, log_every = c.steps * factor, c.log_every * factor
    if steps != int(steps) or log_every != int(log_every):
        raise ConfigError(f"steps={c.steps} and log_every={c.log_every} times {reference}/{batch_size} are not "
                          "integers; choose a batch_size that divides them")
    c.batch_size, c.steps, c.log_every = batch_size, int(steps), int(log_every)
    scale = math.sqrt(batch_size / reference)
    c.lr = c.lr * scale
    if "lr" in c.sweep:
        c.sweep.lr = tuple(lr * scale for lr in c.sweep.lr)
    return c


def axis_values(config: ml_collections.ConfigDict, name: str) -> tuple:
    """The values a setting takes in the grid: the swept ones, else the fixed one."""
    return tuple(config.sweep[name]) if name in config.sweep else (config[name],)


def available_grids() -> list[str]:
    """Names of the grids shipped in ``grok_jax/grids/``."""
    names = os.listdir(GRIDS_DIR)
    return sorted(n[:-3] for n in names if n.endswith(".py") and not n.startswith("_"))


def grid_path(grid: str) -> str:
    """The config file of a grid: a name in ``grok_jax/grids/`` or a path to a ``.py`` file."""
    return config_file(grid, GRIDS_DIR, "grid", available_grids)


def config_file(name: str, directory: str, kind: str, available: Callable[[], list[str]]) -> str:
    """The ``.py`` file ``name`` names: a path, or a name of a file in ``directory``
    (a ``ConfigError`` lists ``available()`` otherwise); ``kind`` names it in errors."""
    if name.endswith(".py"):
        if not os.path.isfile(name):
            raise ConfigError(f"{kind} file {name!r} does not exist")
        return os.path.abspath(name)
    path = os.path.join(directory, f"{name}.py")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(available())}")
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
    return call_get_config(grid_path(grid), scale, "grid")


def call_get_config(path: str, scale: str, kind: str) -> ml_collections.ConfigDict:
    """Imports the config file at ``path`` and returns its ``get_config(scale)``; a file
    that fails to import, lacks ``get_config`` or returns no ConfigDict is a
    ``ConfigError`` naming the file (``kind``: "grid", "figure") and the error's last line."""
    try:
        spec = importlib.util.spec_from_file_location(f"grok_jax_{kind}_{os.path.basename(path)[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever a user's file raises, say where
        raise ConfigError(f"{kind} file {path} failed to import: {_last_line(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{kind} file {path} defines no get_config(scale)")
    try:
        config = module.get_config(scale)
    except ConfigError as e:
        raise ConfigError(f"get_config({scale!r}) of {path}: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"get_config({scale!r}) of {path} failed: {_last_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config({scale!r}) of {path} returned {type(config).__name__}, not an "
                          "ml_collections.ConfigDict")
    return config


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1].strip() if lines else ''}".rstrip(": ")

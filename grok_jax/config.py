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
from grok_jax.models import MODELS
from grok_jax.models.mlp2 import BN_STATS

GRIDS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")  # installed with the package
# Settings a sweep may vary per lane inside one compiled program (traced values).
TRACED_AXES = ("seed", "xi", "wd", "alpha", "dropout", "lr")
# Settings a sweep may vary that change the program (shapes or code): each
# combination of their values is a compile group of its own. The models' option axes
# (grok_jax.models.ModelSpec.axes: mlp2's activation, mlp3's parameterization) are
# static axes too: STATIC_AXES and SWEEPABLE are computed when read (module
# __getattr__ below), so that a model registered later counts.
SHARED_STATIC_AXES = ("model", "task", "p", "width", "loss", "batch_size")
SCALES = ("small", "paper")


def model_axes() -> dict[str, tuple[str, ...]]:
    """Each sweep axis that is a model option (``config.sweep.activation``) -> the
    registered models with an option of that name, whose sections it sets."""
    axes: dict[str, tuple[str, ...]] = {}
    for name, spec in MODELS.items():
        for axis in spec.axes:
            axes[axis] = axes.get(axis, ()) + (name,)
    return axes


def static_axes() -> tuple[str, ...]:
    """The static axes (:data:`STATIC_AXES`): the shared ones, then the models'."""
    return SHARED_STATIC_AXES + tuple(a for a in model_axes() if a not in SHARED_STATIC_AXES)


def __getattr__(name: str):
    if name == "STATIC_AXES":
        return static_axes()
    if name == "SWEEPABLE":
        return TRACED_AXES + static_axes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def base_config(scale: str = "small", model: str = "mlp2") -> ml_collections.ConfigDict:
    """The paper's settings (Doshi et al., arXiv:2310.13061); ``scale='small'``
    shrinks p, width and steps so a grid finishes in minutes on a laptop CPU,
    ``'paper'`` is the paper's scale.
    ``model`` takes that architecture's own settings (its ``ModelSpec.defaults``).
    Each registered model's options are in a section of its own, ``config.<name>``
    (e.g. ``config.transformer.heads``), built from its ``ModelSpec.options``.

    Example:
      >>> c = base_config("paper", model="transformer")
      >>> c.width, c.lr, c.steps
      (128, 0.001, 3000)
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    paper = scale == "paper"
    c = ml_collections.ConfigDict()
    c.scale = scale  # which preset the sizes below come from (recorded for titles)
    # model by name, see grok_jax.models.MODELS: "mlp2" (the paper's Eq. 1), "mlp3" (3-layer
    # ReLU MLP, Fig. 7b), "transformer" (1-layer encoder, Fig. 7a; width is its d_embed).
    # Its own options are in its section, config.<model> (below)
    c.model = "mlp2"
    c.task = "add"  # (m ∘ n) mod p with ∘ one of add, sub, mul, div (div needs prime p)
    c.p = 97 if paper else 41  # modulus; the data set is all p² ordered pairs
    c.width = 500 if paper else 128  # hidden width N
    # post-activation BatchNorm with learned scale and shift (Eq. 5); models whose
    # ModelSpec.batchnorm is set (mlp2, mlp3)
    c.batchnorm = False
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
    # Each registered model's section of options (grok_jax/models/<name>.py documents
    # them): c.mlp2.activation, c.mlp3.parameterization, c.transformer.heads, ...
    for name, spec in MODELS.items():
        if name in c or set(spec.axes) & set(c):
            raise ValueError(f"model {name!r} or one of its axes {spec.axes} is named like a config field")
        c[name] = ml_collections.ConfigDict({} if spec.options is None else spec.options.to_dict())
    c.update(model_defaults(model, scale))
    c.model = model
    return c


def model_defaults(model: str, scale: str) -> dict:
    """The settings ``model`` trains with at ``scale`` where they differ from the
    two-layer MLP's (its ``ModelSpec.defaults``); a ``ConfigError`` names an unknown
    model."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r} is not valid; valid: {', '.join(MODELS)}")
    return dict(MODELS[model].defaults(scale))


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
# The models' options are typed by their defaults (ModelSpec.options), their valid
# values in ModelSpec.choices.
FIELD_TYPES = {
    "scale": str, "model": str, "task": str, "p": int, "width": int, "batchnorm": bool,
    "bn_stats": str, "loss": str, "batch_size": int, "steps": int, "log_every": int, "lr": float, "b1": float, "b2": float, "eps": float, "wd": float,
    "alpha": float, "xi": float, "dropout": float, "seed": int, "compile_groups": int, "matmul_precision": str,
}
CHOICES = {"scale": SCALES, "model": MODELS, "loss": ("mse", "ce"), "bn_stats": BN_STATS,
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
      grok_jax.errors.ConfigError: b2=1.0 is outside [0, 1)
    """
    known = tuple(base_config())
    for name in config:
        if name not in known:
            moved = [f"{model}.{name}" for model, spec in MODELS.items() if name in _options(spec)]
            hint = f" (did you mean {' or '.join(moved)}?)" if moved else _did_you_mean(name, known)
            raise ConfigError(f"unknown config field {name!r}{hint}; valid fields: {', '.join(sorted(known))}")
    for name in known:
        if name not in config:
            raise ConfigError(f"config has no field {name!r}; start from grok_jax.config.base_config()")
    for name in FIELD_TYPES:
        _check_value(name, config[name])
    _check_sections(config)
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
    silently ignored; then each model's own checks (``ModelSpec.check``), on every
    static group of the grid with that model."""
    axes = model_axes()
    for model in axis_values(config, "model"):
        spec = MODELS[model]
        if config.batchnorm and not spec.batchnorm:
            with_bn = [name for name, s in MODELS.items() if s.batchnorm]
            raise ConfigError(f"batchnorm=True: model {model!r} has no BatchNorm option; models with one: "
                              f"{', '.join(with_bn)}")
        for axis in config.sweep:
            if axis in axes and model not in axes[axis]:
                raise ConfigError(f"sweep axis {axis!r} does nothing for model {model!r} (it has no such "
                                  f"option); models with it: {', '.join(axes[axis])}")
    for _, group in static_groups(config):
        MODELS[group.model].check(group)


def _options(spec) -> dict:
    """A model's options and their defaults (``ModelSpec.options``)."""
    return {} if spec.options is None else spec.options.to_dict()


def _check_sections(config: ml_collections.ConfigDict) -> None:
    """Each model's section: its options, each of its default's type and, where the
    model lists them, one of its choices."""
    for model, spec in MODELS.items():
        options, section = _options(spec), config[model]
        paths = [f"{model}.{name}" for name in options]
        if not isinstance(section, (dict, ml_collections.ConfigDict)):
            raise ConfigError(f"{model}={section!r} must be the section of model {model!r}'s options "
                              f"({', '.join(paths) or 'it has none'})")
        for name in section:
            if name not in options:
                raise ConfigError(f"unknown config field '{model}.{name}'{_did_you_mean(name, options, model)}; "
                                  f"valid: {', '.join(paths) or 'none (the model has no options)'}")
        for name, default in options.items():
            if name not in section:
                raise ConfigError(f"config has no field '{model}.{name}'; start from grok_jax.config.base_config()")
            _check_value(f"{model}.{name}", section[name], kind=type(default), choices=spec.choices.get(name))


def _check_sweep(config: ml_collections.ConfigDict) -> None:
    if not isinstance(config.sweep, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"sweep must map axis names to tuples of values, not {config.sweep!r}")
    sweepable = TRACED_AXES + static_axes()
    axes = model_axes()
    for name in config.sweep:
        if name not in sweepable:
            raise ConfigError(f"cannot sweep {name!r}{_did_you_mean(name, sweepable)}; "
                              f"sweepable axes: {', '.join(sweepable)}")
        values = config.sweep[name]
        if not isinstance(values, (tuple, list)):
            raise ConfigError(f"sweep axis {name!r} must be a tuple of values, e.g. (0, 1), not {values!r}")
        if not values:
            raise ConfigError(f"sweep axis {name!r} has no values")
        if name in axes and name not in FIELD_TYPES:
            # a model option: typed and checked as each model of the grid with it has it
            grid = [m for m in axis_values(config, "model") if m in axes[name]] or list(axes[name])
            for model in grid:
                default = _options(MODELS[model])[name]
                for value in values:
                    _check_value(name, value, swept=True, kind=type(default),
                                 choices=MODELS[model].choices.get(name))
        else:
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


def _check_value(name: str, value: object, swept: bool = False, kind: type | None = None,
                 choices: tuple | None = None) -> None:
    """One value of field ``name`` (fixed, or one of a sweep axis'): type, then range.
    A model's option (``"mlp2.activation"``, or its sweep axis) comes with its
    ``kind`` (the type of its default) and its ``choices``, if any."""
    if kind is not None:
        _check_type(name, value, kind, swept)
        if kind is float and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise ConfigError(f"{name}={value!r} must be a finite number (float32: |x| <= {FLOAT32_MAX:.4g})")
        if choices is not None and value not in choices:
            raise ConfigError(f"{name}={value!r} is not valid; valid: {', '.join(map(str, choices))}")
        return
    _check_type(name, value, FIELD_TYPES[name], swept)
    bad = _range_error(name, value)
    if bad:
        raise ConfigError(f"{name}={value!r} {bad}")


def _check_type(name: str, value: object, kind: type, swept: bool) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {int: is_int, float: is_int or isinstance(value, float), bool: isinstance(value, bool),
          str: isinstance(value, str)}[kind]
    if not ok:
        what = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[kind]
        where = f"sweep axis {name!r} has {value!r}; each value" if swept else f"{name}={value!r}"
        raise ConfigError(f"{where} must be {what}")


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
    if name == "batch_size" and not 0 <= value <= INT32_MAX:
        return "must be >= 0 (0: full batch)"
    if name in ("b1", "b2", "dropout") and not 0.0 <= value < 1.0:
        return "is outside [0, 1)"
    if name == "eps" and not value > 0:
        return "must be > 0"
    if name in ("wd", "lr") and not value >= 0:
        return "must be a finite number >= 0"
    return None


def _did_you_mean(name: str, valid, section: str | None = None) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {section + '.' if section else ''}{close[0]}?)" if close else ""


# ... and the section of the config's model (config.<model>: all its options)
STATIC_FIELDS = ("model", "task", "p", "width", "batchnorm", "bn_stats", "loss", "batch_size",
                 "steps", "log_every", "b1", "b2", "eps", "matmul_precision")


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The settings a compiled program closes over (hashable, so it keys caches).

    Traced settings (seed, ξ, wd, α, dropout, lr) are left out, so grids that differ
    only in them share one compiled program; ``use_dropout`` says whether the
    program draws dropout masks at all. The model's section (``config.<model>``, its
    options) is in, the other models' are not. The static axes of a sweep must be
    fixed first (:func:`static_groups`).
    """
    swept = [name for name in static_axes() if name in config.sweep]
    if swept:
        raise ValueError(f"static axes {swept} are swept: take one of static_groups(config) first")
    static = {name: config[name] for name in STATIC_FIELDS}
    static[config.model] = config[config.model]
    static["use_dropout"] = any(rate > 0 for rate in axis_values(config, "dropout"))
    return ml_collections.FrozenConfigDict(static)


def static_groups(config: ml_collections.ConfigDict) -> list[tuple[dict, ml_collections.ConfigDict]]:
    """One ``(values, config)`` per combination of the swept static axes, in grid
    order: ``values`` maps each swept static axis to its value, ``config`` is the
    grid's config with those values fixed and only the traced axes left swept. A
    model option's axis (``activation``) is fixed in the section of each model with
    that option (``config.mlp2.activation``).

    Example:
      >>> config = load_config("tiny")
      >>> config.sweep.width = (16, 32)
      >>> [values for values, _ in static_groups(config)]
      [{'width': 16}, {'width': 32}]
    """
    statics, axes, models = static_axes(), model_axes(), axis_values(config, "model")
    swept = [name for name in config.sweep if name in statics]
    groups = []
    for combo in itertools.product(*(config.sweep[name] for name in swept)):
        values = dict(zip(swept, combo))
        group = ml_collections.ConfigDict(config.to_dict())
        for name, value in values.items():
            if name in axes and name not in FIELD_TYPES:
                for model in axes[name]:
                    if model in models:  # the grid's models with that option (check_config: all of them)
                        group[model][name] = value
            else:
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
      >>> c = scale_for_batch(load_config("wd_xi"), 64)   # wd_xi: 1000 steps at lr 0.01
      >>> c.batch_size, c.steps, c.lr
      (64, 4000, 0.005)
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
    """The values a setting takes in the grid: the swept ones, else the fixed one (of
    a model option's axis, e.g. ``activation``: the value in the section of the
    config's model, or of the first model of the grid with that option)."""
    if name in config.sweep:
        return tuple(config.sweep[name])
    axes = model_axes()
    if name in axes and name not in config:
        grid = (config.model, *config.sweep.get("model", ()))
        model = next((m for m in grid if m in axes[name]), axes[name][0])
        return (config[model][name],)
    return (config[name],)


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
    scales = getattr(module, "SCALES", None)  # the scales the file defines (default: any)
    if scales is not None and scale not in scales:
        raise ConfigError(f"{kind} file {path} defines the scale(s) {', '.join(scales)}, not {scale!r}")
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

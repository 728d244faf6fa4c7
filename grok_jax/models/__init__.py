"""Models and the interface that training, metrics and the store use.

A model is looked up by name from the config (``config.model``) in :data:`MODELS`
and built by :func:`get_model`. The rest of grok_jax talks to it only through the
:class:`Model` interface below. What the config, its checks and the figures know of
a model (its options, their checks, its training settings, its title) is in the
:class:`ModelSpec` its module registers (:func:`register`), so a new model needs
nothing but a module (see "Adding a model" in docs/models.md; ``mlp3.py`` ends with its
spec). Every method is pure and works on one lane; a sweep ``vmap``s it over lanes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Protocol

import jax
import ml_collections

from grok_jax.errors import ConfigError

Variables = dict[str, Any]  # {"params": {...}} plus model state, e.g. {"batch_stats": {...}}


class Inputs(NamedTuple):
    """Rows a model is applied to: any leading shape, all fields alike (one axis of
    rows for a model with batch statistics)."""

    m: jax.Array  # int32 first operand
    n: jax.Array  # int32 second operand
    pair: jax.Array  # int32 pair index m·p + n: keys the row's dropout noise
    weight: jax.Array  # bool: the row counts in batch statistics (False: padding)


class Model(Protocol):
    """What a model provides. ``variables`` is a dict of pytrees: ``"params"`` (the
    trained leaves) and the model's state collections (e.g. ``"batch_stats"``; none
    for a model without state).

    Attributes:
      groups: neuron group name -> number of neurons, in order (e.g.
        ``{"hidden": N}``; a Transformer has its embedding and its MLP). The first
        group's neurons are the ones the logged ``ipr`` averages over.
      batch_coupled: in train mode a row's logits depend on the other rows (batch
        statistics): the gradient cannot be computed block by block.
      eval_stats: ``"running"``: eval mode uses the state's statistics as they are;
        ``"training_rows"``: the training loop refreshes them first, by applying the
        model in train mode to all training rows (full-batch BatchNorm).
      param_dims: path of every leaf of ``variables`` (``"params.U"``) -> names of
        its dims, for the store; equal names mean the same axis (e.g. ``"hidden"``
        for the neurons of the group of that name).
      row_flops: matmul FLOPs of a forward pass per example (plans and progress
        estimates; a training step counts 3 forwards).
      row_floats, eval_floats: activation floats per example held by a training step
        and by an evaluation (memory estimates for chunk sizes).
      n_params: number of trained parameters.
    """

    groups: Mapping[str, int]
    batch_coupled: bool
    eval_stats: str
    param_dims: Mapping[str, tuple[str, ...]]
    row_flops: float
    row_floats: float
    eval_floats: float
    n_params: int

    def init(self, key: jax.Array) -> Variables:
        """Parameters and initial state of one run, from its init key."""

    def apply(self, variables: Variables, inputs: Inputs, *, train: bool, dropout_rate: jax.Array | float = 0.0,
              dropout_key: jax.Array | None = None, neuron_mask: Mapping[str, jax.Array] | None = None
              ) -> tuple[jax.Array, Variables]:
        """Logits ``inputs.m.shape + (p,)`` and the state after this call.

        ``train``: batch statistics over the rows with ``weight`` (and the state's
        running statistics updated) instead of the state's; dropout only in train
        mode with a ``dropout_key`` (a row's mask depends only on the key and its
        ``pair``, so that it is the same whatever other rows are in the batch). A
        rate of 0 keeps every unit. ``neuron_mask``: group name -> ``(n,)`` factors
        on the neurons' outputs (0 prunes a neuron). Returns the state unchanged in
        eval mode and for a model without state.
        """

    def neuron_ipr(self, params: Any) -> dict[str, jax.Array]:
        """Group name -> per-neuron IPR ``(n,)`` (:func:`grok_jax.metrics.ipr` of each
        neuron's weight vectors over the operand or output index; NaN for a neuron
        whose weights are all zero)."""

    def norm_leaves(self, params: Any) -> dict[str, jax.Array]:
        """The weights whose norms are logged, by name (``norm_<name>`` and together
        ``weight_norm``): matrices, not normalization scales or shifts."""

    # Optional: ``optimizer_groups(params) -> OptimizerGroups | None``, the model's
    # AdamW parameter groups per leaf, a function of the tree's structure and shapes
    # only (it is given ShapeDtypeStructs); without it, or with None, one AdamW trains
    # every leaf (see :func:`optimizer_groups`).


class OptimizerGroups(NamedTuple):
    """PyTorch AdamW parameter groups, per leaf of ``params`` (trees of its
    structure with Python values): leaf ``w`` is trained at learning rate
    ``lr·lr_scale`` and decayed by that learning rate times ``wd`` where ``decay``
    (``w ← w − lr·lr_scale·(adam_update + [decay]·wd·w)``)."""

    lr_scale: Any  # a float per leaf
    decay: Any  # a bool per leaf


def optimizer_groups(model: Model, params: Any) -> OptimizerGroups | None:
    """The model's optional hook ``optimizer_groups(params)``: its AdamW groups,
    or None (also for a model without the hook) for one AdamW over every leaf."""
    hook = getattr(model, "optimizer_groups", None)
    return None if hook is None else hook(params)


class ModelSpec(NamedTuple):
    """What a model knows, registered under its name by :func:`register` (each
    module in this package registers its own at import): everything that the config,
    its checks and the figures need, so that adding a model touches its module only.

    Attributes:
      factory: ``factory(config, readout_columns=None) -> Model`` for the static
        settings of a compile group (:func:`grok_jax.config.static_config`): the
        shared fields (``p``, ``width``, ``batchnorm``, ...) and the model's own section
        ``config[name]``. ``readout_columns`` is a speed hint of
        :mod:`grok_jax.layouts` that a model may ignore.
      title: what figure titles call it, e.g. ``"2-layer MLP"``.
      options: its own config section ``config.<name>``: option -> default (a bool,
        int, float or str: the type of every value it may take), one comment each.
        Options change the compiled program (they are part of ``static_config``).
      choices: option -> its valid values (checked by ``check_config``).
      axes: options that a sweep may vary (static axes), each under its own name:
        ``config.sweep.<option>`` sets ``config.<name>.<option>`` per lane, and the
        store's axis has that name. Models with an option of the same name share
        the axis; a grid that sweeps it may only have such models.
      defaults: ``defaults(scale) -> dict``: the training settings (top-level fields
        such as ``lr``, ``steps``, ``width``) it starts from at ``scale`` where they
        differ from :func:`grok_jax.config.base_config`'s (the two-layer MLP's).
      check: ``check(config) -> None``, the further checks of its options, called by
        ``check_config`` for each static group of a grid with this model (every
        static axis fixed; traced axes may still be swept): raises ``ConfigError``
        with a one-line message naming the field (``"transformer.heads=3 ..."``).
      batchnorm: it has the post-activation BatchNorm option (``config.batchnorm``).
      describe: ``describe(config, options, swept) -> list[str]``: its parts of a figure
        title, from a store's config (a dict), its options (:func:`stored_options`)
        and the names of the swept axes (which label the panels instead).
    """

    factory: Callable[..., Model]
    title: str
    options: ml_collections.ConfigDict = None  # type: ignore[assignment]  (None: no options)
    choices: Mapping[str, tuple] = {}
    axes: tuple[str, ...] = ()
    defaults: Callable[[str], dict] = lambda scale: {}
    check: Callable[[Any], None] = lambda config: None
    batchnorm: bool = False
    describe: Callable[[Mapping, Mapping, set], list[str]] = (
        lambda config, options, swept: [] if "width" in swept else [f"N={config['width']}"])


OPTION_TYPES = (bool, int, float, str)
# name -> ModelSpec, in registration order (the built-ins: mlp2, mlp3, transformer).
MODELS: dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec) -> ModelSpec:
    """Registers model ``name`` (``config.model``): its config section is
    ``config.<name>``, built from ``spec.options`` by ``base_config``. A
    ``ValueError`` says what is wrong with a spec; a registered name is refused
    (:func:`unregister` it first). Returns ``spec``.

    Example:
      >>> from grok_jax.config import base_config
      >>> spec = ModelSpec(factory=MODELS["mlp2"].factory, title="my MLP",
      ...                  options=ml_collections.ConfigDict({"gain": 1.0}))
      >>> register("my_mlp", spec) is spec
      True
      >>> base_config(model="my_mlp").my_mlp.gain        # its options' section
      1.0
      >>> unregister("my_mlp")
    """
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"model name {name!r} must be a Python identifier (it names a config section)")
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered already")
    if not isinstance(spec, ModelSpec) or not callable(spec.factory):
        raise ValueError(f"model {name!r}: register a ModelSpec with a factory")
    options = {} if spec.options is None else spec.options.to_dict()
    for option, value in options.items():
        if type(value) not in OPTION_TYPES:
            raise ValueError(f"model {name!r}: option {option!r} defaults to {value!r}; options are bool, int, "
                             "float or str")
    for option, valid in spec.choices.items():
        if option not in options or options[option] not in valid:
            raise ValueError(f"model {name!r}: choices of {option!r}, which is no option or whose default "
                             "is not one of them")
    if not set(spec.axes) <= set(options):
        raise ValueError(f"model {name!r}: axes {spec.axes} are not all options")
    MODELS[name] = spec
    return spec


def unregister(name: str) -> None:
    """Removes model ``name`` from the registry (a test's model, afterwards)."""
    del MODELS[name]


def stored_options(name: str, config: Mapping) -> dict:
    """The options of model ``name`` in a config as stored (a dict, e.g. a store's
    JSON): its section, over the defaults; a store of an earlier version kept the
    options at the top level."""
    spec = MODELS[name]
    defaults = {} if spec.options is None else spec.options.to_dict()
    section = config.get(name)
    if not isinstance(section, Mapping):
        section = {k: config[k] for k in defaults if k in config}
    return {**defaults, **section}


def title_parts(config: Mapping, swept: set) -> tuple[str, list[str]]:
    """A figure title's name of the model of a stored ``config`` (a dict) and the
    parts about it (its width and options), the swept axes left out; the bare name
    and its width for a model no longer registered."""
    name = config.get("model", "mlp2")
    spec = MODELS.get(name)
    if spec is None:
        return name, [] if "width" in swept else [f"width={config['width']}"]
    return spec.title, list(spec.describe(config, stored_options(name, config), swept))


def get_model(config: ml_collections.ConfigDict | Any, readout_columns: int | None = None) -> Model:
    """The model ``config.model`` for the static settings of ``config``.

    Example:
      >>> import jax.numpy as jnp
      >>> from grok_jax.config import load_config
      >>> model = get_model(load_config("tiny"))
      >>> variables = model.init(jax.random.key(0))
      >>> pairs = jnp.arange(3)                      # (0, 0), (0, 1), (0, 2) at p = 11
      >>> inputs = Inputs(m=pairs // 11, n=pairs % 11, pair=pairs, weight=jnp.ones(3, bool))
      >>> logits, _ = model.apply(variables, inputs, train=False)
      >>> logits.shape
      (3, 11)
    """
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; valid models: {', '.join(MODELS)}")
    return MODELS[config.model].factory(config, readout_columns=readout_columns)


def flat_variables(variables: Variables) -> dict[str, Any]:
    """``variables`` with each leaf under its dotted path, e.g. ``"params.U"`` (the
    names of :attr:`Model.param_dims` and of the store's variables)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        flat[".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return flat


def nest_variables(flat: dict[str, Any]) -> Variables:
    """The inverse of :func:`flat_variables`: ``{"params.U": x}`` -> ``{"params": {"U": x}}``."""
    nested: dict = {}
    for path, leaf in flat.items():
        *parents, name = path.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[name] = leaf
    return nested


class FinalSpec(NamedTuple):
    """A per-lane array a model leaves at the end of a run: its dims and shape."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]


def final_specs(model: Model) -> dict[str, FinalSpec]:
    """What ``final`` of :func:`grok_jax.train.make_train` holds for ``model``:
    ``ipr_<group>`` over the group's neurons, ``peak_train_acc`` (a scalar) and every
    leaf of its variables."""
    specs = {f"ipr_{group}": FinalSpec((group,), (n,)) for group, n in model.groups.items()}
    specs["peak_train_acc"] = FinalSpec((), ())
    shapes = flat_variables(jax.eval_shape(model.init, jax.random.key(0)))
    if set(shapes) != set(model.param_dims):
        raise ValueError(f"param_dims names {sorted(model.param_dims)}, the variables are {sorted(shapes)}")
    for path, shape in shapes.items():
        specs[path] = FinalSpec(tuple(model.param_dims[path]), tuple(shape.shape))
    return specs


# The built-in models register themselves (after everything above, which they import).
from grok_jax.models import mlp2, mlp3, transformer  # noqa: E402,F401

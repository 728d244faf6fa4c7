"""Models and the interface that training, metrics and the store use.

A model is looked up by name from the config (``config.model``) in :data:`MODELS`
and built by :func:`get_model`. The rest of grok_jax talks to it only through the
:class:`Model` interface below, so a new model needs nothing but a module with a
factory registered here (see "Adding a model" in the README). Every method is pure
and works on one lane; a sweep ``vmap``s it over lanes.
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


def _mlp2(config: Any, readout_columns: int | None = None) -> Model:
    from grok_jax.models import mlp2

    return mlp2.MLP2(config.p, config.width, config.activation, config.batchnorm, config.bn_stats,
                     readout_columns)


def _mlp3(config: Any, readout_columns: int | None = None) -> Model:
    from grok_jax.models import mlp3

    return mlp3.MLP3(config.p, config.width, config.batchnorm, config.bn_stats, config.parameterization)


def _transformer(config: Any, readout_columns: int | None = None) -> Model:
    from grok_jax.models import transformer

    return transformer.Transformer(config.p, config.width, config.heads, config.layernorm, config.tie_embeddings)


# name -> factory(config, readout_columns=None): the static config of a compile group;
# readout_columns is a speed hint of grok_jax.layouts (a model may ignore it).
MODELS: dict[str, Callable[..., Model]] = {"mlp2": _mlp2, "mlp3": _mlp3, "transformer": _transformer}
# Models with a BatchNorm option (config.batchnorm) and with an activation choice (config.activation).
BATCHNORM_MODELS = ("mlp2", "mlp3")
ACTIVATION_MODELS = ("mlp2",)


def get_model(config: ml_collections.ConfigDict | Any, readout_columns: int | None = None) -> Model:
    """The model ``config.model`` for the static settings of ``config``.

    Example:
      >>> model = get_model(load_config("tiny"))
      >>> variables = model.init(jax.random.key(0))
      >>> logits, _ = model.apply(variables, inputs, train=False)
    """
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; valid models: {', '.join(MODELS)}")
    return MODELS[config.model](config, readout_columns=readout_columns)


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
    ``ipr_<group>`` over the group's neurons and every leaf of its variables."""
    specs = {f"ipr_{group}": FinalSpec((group,), (n,)) for group, n in model.groups.items()}
    shapes = flat_variables(jax.eval_shape(model.init, jax.random.key(0)))
    if set(shapes) != set(model.param_dims):
        raise ValueError(f"param_dims names {sorted(model.param_dims)}, the variables are {sorted(shapes)}")
    for path, shape in shapes.items():
        specs[path] = FinalSpec(tuple(model.param_dims[path]), tuple(shape.shape))
    return specs

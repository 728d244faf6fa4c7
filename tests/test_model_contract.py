"""The model interface (grok_jax.models.Model): a contract every registered model meets.

Each check runs for every model in ``MODELS`` on a tiny derived config, with and
without BatchNorm; a new model is tested by registering it. So is ``"linear"``, a
model of this file only (registered while a test runs): a model's module and its
``register`` call are all that adding one takes (its config section, options,
checks, sweep axis, defaults and title included).
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import grok_jax
from grok_jax import config as cfg
from grok_jax import plotting
from grok_jax.config import base_config, check_config, static_config
from grok_jax.data import make_dataset, training_rows
from grok_jax.errors import ConfigError
from grok_jax.metrics import ipr
from grok_jax.plan import check_fits
from grok_jax.models import (MODELS, Inputs, ModelSpec, final_specs, flat_variables, get_model, register,
                             unregister)
from grok_jax.models.mlp2 import dropout_noise
from grok_jax.train import inputs


class Linear(NamedTuple):
    """A toy model: logits ``gain · (U e_m + V e_n) · W``, dropout on the hidden units."""

    p: int
    width: int
    gain: float

    groups = property(lambda self: {"hidden": self.width})
    batch_coupled = False
    eval_stats = "running"
    param_dims = property(lambda self: {"params.U": ("operand", "hidden"), "params.V": ("operand", "hidden"),
                                        "params.W": ("hidden", "logit")})
    row_flops = property(lambda self: 2.0 * self.width * self.p)
    row_floats = property(lambda self: 4.0 * self.width + 4.0 * self.p)
    eval_floats = property(lambda self: 2.0 * self.width + 3.0 * self.p)
    n_params = property(lambda self: 3 * self.p * self.width)

    def init(self, key):
        shapes = {"U": (self.p, self.width), "V": (self.p, self.width), "W": (self.width, self.p)}
        keys = dict(zip(shapes, jax.random.split(key, 3)))
        return {"params": {k: jax.random.normal(keys[k], s) / self.width ** 0.5 for k, s in shapes.items()}}

    def apply(self, variables, inputs, *, train, dropout_rate=0.0, dropout_key=None, neuron_mask=None):
        w = variables["params"]
        h = w["U"][inputs.m] + w["V"][inputs.n]
        if train and dropout_key is not None:
            keep = dropout_noise(dropout_key, inputs.pair, self.width) >= dropout_rate
            h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
        if neuron_mask is not None:
            h = h * neuron_mask["hidden"]
        return self.gain * h @ w["W"], {}

    def neuron_ipr(self, params):
        return {"hidden": (ipr(params["U"], axis=0) + ipr(params["V"], axis=0) + ipr(params["W"], axis=1)) / 3}

    def norm_leaves(self, params):
        return dict(params)


def _linear_options() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.gain = 1.0  # the logits' factor; a sweep axis
    return o


def _check_linear(config: Any) -> None:
    if not config.linear.gain > 0:
        raise ConfigError(f"linear.gain={config.linear.gain!r} must be > 0")


LINEAR = ModelSpec(factory=lambda config, readout_columns=None: Linear(config.p, config.width, config.linear.gain),
                   title="linear toy model", options=_linear_options(), axes=("gain",),
                   defaults=lambda scale: {"lr": 0.02}, check=_check_linear)


@pytest.fixture
def linear():
    """``"linear"`` registered for the test's duration."""
    register("linear", LINEAR)
    yield LINEAR
    unregister("linear")


def _config(name: str, batchnorm: bool, options: dict | None = None):
    config = base_config()
    config.update(dict(model=name, p=11, width=16, batchnorm=batchnorm))
    if options:
        config[name].update(options)
    return static_config(config)


CONFIGS = [(name, bn, {}) for name, spec in {**MODELS, "linear": LINEAR}.items() for bn in (False, True)
           if not bn or spec.batchnorm]
# Models with their non-default options on: the Transformer's standard parameterization
# and per-module AdamW groups (the authors' s = 0 and rescale_optim).
CONFIGS += [("transformer", False, dict(parameterization="standard", optimizer="per_module"))]


def _rows(n_train=40, n_max=50):
    ds = make_dataset(jax.random.key(1), jax.random.key(2), n_train, 5, task="add", p=11, n_max=n_max)
    return inputs(training_rows(ds, n_max))


def _take(x: Inputs, idx) -> Inputs:
    return Inputs(*(a[idx] for a in x))


@pytest.fixture(params=CONFIGS, ids=[f"{n}{'-bn' if bn else ''}{''.join('-' + v for v in o.values())}"
                                     for n, bn, o in CONFIGS])
def model(request):
    if request.param[0] == "linear":
        request.getfixturevalue("linear")
    return get_model(_config(*request.param))


def test_init_is_a_pure_function_of_its_key(model):
    a, b, c = model.init(jax.random.key(0)), model.init(jax.random.key(0)), model.init(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
    assert "params" in a
    # The store's names and dims describe every leaf, and each named dim has one size.
    sizes = {}
    for name, spec in final_specs(model).items():
        for d, n in zip(spec.dims, spec.shape):
            assert sizes.setdefault(d, n) == n, (name, d)
    assert set(flat_variables(a)) <= set(final_specs(model))
    assert all(sizes[group] == n for group, n in model.groups.items())


def test_apply_gives_logits_and_eval_mode_leaves_the_state(model):
    variables = model.init(jax.random.key(0))
    x = _rows()
    logits, state = model.apply(variables, x, train=False)
    assert logits.shape == (50, 11) and bool(jnp.isfinite(logits).all())
    jax.tree.map(np.testing.assert_array_equal, state, {k: v for k, v in variables.items() if k != "params"})
    _, trained = model.apply(variables, x, train=True)
    assert jax.tree.structure(trained) == jax.tree.structure(state)


def test_rows_are_independent_unless_the_model_has_batch_statistics(model):
    """A row's train-mode logits with dropout depend only on the key and its pair, so
    a lane gives the same numbers alone as padded in a larger group. With batch
    statistics, rows outside the batch (weight False) change nothing."""
    variables, key = model.init(jax.random.key(0)), jax.random.key(3)
    x = _rows()
    full, _ = model.apply(variables, x, train=True, dropout_rate=0.3, dropout_key=key)
    real = jnp.arange(40)
    alone, _ = model.apply(variables, _take(x, real), train=True, dropout_rate=0.3, dropout_key=key)
    np.testing.assert_allclose(alone, full[:40], rtol=1e-5, atol=1e-6)
    if not model.batch_coupled:
        part, _ = model.apply(variables, _take(x, real[::3]), train=True, dropout_rate=0.3, dropout_key=key)
        np.testing.assert_allclose(part, full[:40:3], rtol=1e-5, atol=1e-6)
    kept, _ = model.apply(variables, x, train=True, dropout_rate=0.0, dropout_key=key)
    plain, _ = model.apply(variables, x, train=True)
    np.testing.assert_array_equal(kept, plain)  # a rate of 0 keeps every unit
    assert not np.allclose(full, plain)  # the masks are applied


def test_neuron_mask_of_ones_changes_nothing_and_zeros_prune(model):
    variables = model.init(jax.random.key(0))
    x = _rows()
    plain, _ = model.apply(variables, x, train=False)
    ones = {g: jnp.ones(n) for g, n in model.groups.items()}
    np.testing.assert_array_equal(model.apply(variables, x, train=False, neuron_mask=ones)[0], plain)
    for group, n in model.groups.items():
        pruned = {**ones, group: jnp.arange(n) % 2.0}
        assert not np.allclose(model.apply(variables, x, train=False, neuron_mask=pruned)[0], plain), group


def test_ipr_by_group_and_norm_leaves(model):
    params = model.init(jax.random.key(0))["params"]
    iprs = model.neuron_ipr(params)
    assert list(iprs) == list(model.groups)
    for group, values in iprs.items():
        assert values.shape == (model.groups[group],)
        assert bool(((values > 0) & (values <= 1 + 1e-6)).all())  # IPR lies in (0, 1]
    leaves = {id(leaf) for leaf in jax.tree.leaves(params)}
    norms = model.norm_leaves(params)
    assert norms and all(id(w) in leaves for w in norms.values())  # leaves of the params themselves


def test_vmapped_over_lanes_equals_one_at_a_time_and_compiles_once(model):
    keys = jax.random.split(jax.random.key(5), 3)
    x = _rows()

    def run(key):
        variables = model.init(key)
        logits, state = model.apply(variables, x, train=True, dropout_rate=0.2, dropout_key=key)
        return logits, state, model.neuron_ipr(variables["params"])

    batched = jax.jit(jax.vmap(run))
    out = batched(keys)
    for i, key in enumerate(keys):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), out, run(key))
    batched(jax.random.split(jax.random.key(6), 3))
    assert batched._cache_size() == 1  # a second call with new keys does not recompile


def test_a_model_registered_in_a_test_has_its_section_defaults_and_sweep(linear):
    """"linear" gets its config section, its training settings, its sweep axis (a
    static axis: a program per gain, one store), its title, from its ModelSpec alone."""
    config = base_config(model="linear")
    assert (config.model, config.linear.gain, config.lr, base_config().lr) == ("linear", 1.0, 0.02, 0.01)
    assert "gain" in cfg.STATIC_AXES and "gain" in cfg.SWEEPABLE
    config.update(dict(p=11, width=8, steps=20, log_every=10, alpha=0.6, xi=0.0))
    config.sweep = ml_collections.ConfigDict(dict(gain=(0.5, 2.0), wd=(0.0, 1.0)))
    [(values, group)] = cfg.static_groups(ml_collections.ConfigDict({**config.to_dict(), "sweep": {"gain": (3.0,)}}))
    assert values == {"gain": 3.0} and group.linear.gain == 3.0 and "gain" not in group.sweep
    static = static_config(group)
    assert static.linear.gain == 3.0 and "mlp2" not in static  # the model's own section only
    ds = grok_jax.run_sweep(config, progress=False, log=lambda line: None)  # no store
    assert list(ds.gain.values) == [0.5, 2.0] and bool(ds.done.all()) and ds.sizes["hidden"] == 8
    assert not np.allclose(ds.sel(gain=0.5).train_loss, ds.sel(gain=2.0).train_loss)  # each lane its own gain
    assert np.isfinite(ds.ipr_hidden.values).all()
    title = plotting.title(ds)
    assert title.startswith("linear toy model, add mod p=11, N=8") and "gain" not in title
    grid = base_config()  # the command line's --config.model=linear on an MLP grid: its lr
    grid.model = "linear"
    assert cfg.switch_model(grid, base_config(), "small", set()) == {"lr": 0.02}


@pytest.mark.parametrize("fields,sweep,message", [
    (dict(linear=dict(gain="big")), {}, "linear.gain='big' must be a number"),
    (dict(linear=dict(gain=0.0)), {}, "linear.gain=0.0 must be > 0"),
    (dict(linear=dict(gain=float("inf"))), {}, "linear.gain=inf must be a finite number"),
    ({}, dict(gain=(1.0, -1.0)), "linear.gain=-1.0 must be > 0"),  # checked per static group
    ({}, dict(gain=(1.0, "a")), "sweep axis 'gain' has 'a'; each value must be a number"),
    ({}, dict(model=("linear", "mlp2"), gain=(1.0, 2.0)), "sweep axis 'gain' does nothing for model 'mlp2'"),
    ({}, dict(activation=("quad", "relu")), "sweep axis 'activation' does nothing for model 'linear'"),
    (dict(batchnorm=True), {}, "batchnorm=True: model 'linear' has no BatchNorm option; models with one: mlp2, mlp3"),
    (dict(linear=dict(gian=1.0)), {}, "unknown config field 'linear.gian' (did you mean linear.gain?)"),
    (dict(gain=1.0), {}, "unknown config field 'gain' (did you mean linear.gain?)"),
])
def test_a_registered_models_options_are_checked(linear, fields, sweep, message):
    config = base_config(model="linear")
    config.update({k: v for k, v in fields.items() if k != "linear"})
    if "linear" in fields:  # a section as a user's grid may give it (replaced: ConfigDict fields are typed)
        config.linear = ml_collections.ConfigDict(fields["linear"])
    config.sweep.update(sweep)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(config)


class _Clashing(Linear):
    """The toy model with a dim named like its own sweep axis."""

    param_dims = property(lambda self: {"params.U": ("operand", "gain"), "params.V": ("operand", "hidden"),
                                        "params.W": ("hidden", "logit")})


def test_a_model_dim_named_like_a_swept_axis_is_refused_at_the_entry(linear):
    unregister("linear")
    register("linear", LINEAR._replace(factory=lambda config, readout_columns=None: _Clashing(
        config.p, config.width, config.linear.gain)))  # (the fixture unregisters it)
    config = base_config(model="linear")
    config.update(dict(p=11, width=8, steps=20, log_every=10))
    config.sweep = ml_collections.ConfigDict(dict(gain=(0.5, 2.0)))
    check_config(config)
    with pytest.raises(ConfigError, match="the model's dim 'gain' of params.U has the name of a swept axis"):
        check_fits(config, 4.0)


def test_a_registered_model_leaves_no_trace():
    """Registering "linear" in the tests above changed no file: unregistered, it is
    unknown again, and no config has its section."""
    assert "linear" not in MODELS and "linear" not in base_config() and "gain" not in cfg.SWEEPABLE
    config = base_config()
    config.model = "linear"
    with pytest.raises(ConfigError, match="model='linear' is not valid; valid: mlp2, mlp3, transformer"):
        check_config(config)
    with pytest.raises(ValueError, match="registered already"):
        register("mlp2", MODELS["mlp2"])

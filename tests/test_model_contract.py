"""The model interface (grok_jax.models.Model): a contract every registered model meets.

Each check runs for every model in ``MODELS`` on a tiny derived config, with and
without BatchNorm; a new model is tested by registering it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grok_jax.config import base_config, static_config
from grok_jax.data import make_dataset, training_rows
from grok_jax.models import BATCHNORM_MODELS, MODELS, Inputs, final_specs, flat_variables, get_model
from grok_jax.train import inputs


def _config(name: str, batchnorm: bool):
    config = base_config()
    config.update(dict(model=name, p=11, width=16, batchnorm=batchnorm))
    return static_config(config)


CONFIGS = [(name, bn) for name in MODELS for bn in (False, True) if not bn or name in BATCHNORM_MODELS]


def _rows(n_train=40, n_max=50):
    ds = make_dataset(jax.random.key(1), jax.random.key(2), n_train, 5, task="add", p=11, n_max=n_max)
    return inputs(training_rows(ds, n_max))


def _take(x: Inputs, idx) -> Inputs:
    return Inputs(*(a[idx] for a in x))


@pytest.fixture(params=CONFIGS, ids=[f"{n}{'-bn' if bn else ''}" for n, bn in CONFIGS])
def model(request):
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

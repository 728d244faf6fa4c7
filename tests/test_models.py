"""Model, analytic solution (Doshi et al., arXiv:2310.13061, Eq. 2) and IPR against a NumPy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from grok_jax import metrics
from grok_jax.models.mlp2 import analytic_solution, features, init_params, init_std, neuron_ipr, readout


def _all_pairs(p):
    return jnp.divmod(jnp.arange(p * p), p)


def test_analytic_solution_is_perfect_and_periodic():
    p, width = 11, 2000
    params = analytic_solution(jax.random.key(0), p, width)
    m, n = _all_pairs(p)
    logits = readout(params, features(params, m, n, "quad"))
    labels = (m + n) % p
    assert bool(jnp.all(jnp.argmax(logits, -1) == labels))
    # Unit-scale logits: the correct class near 1, the rest near 0 (MSE small).
    assert float(jnp.mean(metrics.loss_terms(logits, labels, "mse"))) < 0.05
    np.testing.assert_allclose(neuron_ipr(params), 1.0, atol=1e-5)


def test_forward_matches_numpy():
    p, width = 11, 24
    params = init_params(jax.random.key(1), p, width)
    m, n = _all_pairs(p)
    for act in ("quad", "relu"):
        ours = readout(params, features(params, m, n, act))
        theirs = ref.forward(jax.tree.map(np.asarray, params), np.asarray(m), np.asarray(n), act)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_ipr_matches_numpy_and_gaussian_floor():
    p = 97
    x = jax.random.normal(jax.random.key(2), (400, p))
    np.testing.assert_allclose(metrics.ipr(x), ref.ipr(np.asarray(x)), rtol=1e-5)
    np.testing.assert_allclose(metrics.ipr(x.T, axis=0), ref.ipr(np.asarray(x)), rtol=1e-5)
    # Gaussian rows: |rfft|² is roughly exponential, so IPR ≈ 2/(⌊p/2⌋ + 1) ≈ 0.04.
    assert abs(float(jnp.mean(metrics.ipr(x))) - 2 / (p // 2 + 1)) < 0.01
    params = init_params(jax.random.key(3), p, 64)
    np.testing.assert_allclose(
        neuron_ipr(params), ref.neuron_ipr(*(np.asarray(params[k]) for k in "UVW")), rtol=1e-5)


def test_init_scale_is_the_papers():
    width = 500
    params = init_params(jax.random.key(4), 97, width)
    assert abs(init_std(width) - 0.5 / (2 * width) ** (1 / 3)) < 1e-12
    for w in params.values():
        assert abs(float(jnp.std(w)) / init_std(width) - 1) < 0.02


def test_dropout_rate_zero_keeps_everything_and_rescales_otherwise():
    params = init_params(jax.random.key(5), 11, 1000)
    m, n = _all_pairs(11)
    plain = features(params, m, n, "quad")
    noise = jax.random.uniform(jax.random.key(6), plain.shape)
    np.testing.assert_array_equal(features(params, m, n, "quad", 0.0, noise), plain)
    dropped = features(params, m, n, "quad", 0.5, noise)
    zero = dropped == 0
    assert abs(float(jnp.mean(zero)) - 0.5) < 0.01
    # Kept pre-activations are scaled by 1/(1-0.5) = 2, so quad features by 4.
    np.testing.assert_allclose(dropped[~zero], 4 * plain[~zero], rtol=1e-5)


@pytest.mark.parametrize("activation,columns", [("quad", None), ("relu", 16), ("quad", 12)])
@pytest.mark.parametrize("rate", [None, 0.3])
def test_hand_written_backward_passes_equal_autodiff(activation, columns, rate):
    # features and readout have custom VJPs (regathered pre-activations, a transposed
    # dW product, a readout padded to more columns); the oracle is autodiff of the
    # plain expressions, for two lanes under jit(vmap) as in a sweep and for rows
    # of two dimensions (blocks of rows).
    p, width, rows = 11, 24, 36
    keys = jax.random.split(jax.random.key(7), 2)
    params = jax.vmap(lambda k: init_params(k, p, width))(keys)
    m, n = (jax.random.randint(jax.random.key(s), (2, rows), 0, p) for s in (8, 9))  # repeated indices
    noise = None if rate is None else jax.random.uniform(jax.random.key(10), (2, rows, width))
    rates = jnp.asarray([0.0, 0.0]) if rate is None else jnp.asarray([rate, rate / 2])
    target = jax.random.normal(jax.random.key(11), (rows, p))

    def ours(params, m, n, noise, r):
        h = features(params, m, n, activation, r, noise)
        return jnp.sum(jnp.sin(readout(params, h, columns=columns)) * target.reshape(*m.shape, p))

    def plain(params, m, n, noise, r):
        pre = params["U"][m] + params["V"][n]
        if noise is not None:
            pre = jnp.where(noise >= r, pre / (1 - r), 0.0)
        h = jnp.square(pre) if activation == "quad" else jax.nn.relu(pre)
        return jnp.sum(jnp.sin(h @ params["W"]) * target.reshape(*m.shape, p))

    lanes = jax.jit(jax.vmap(jax.value_and_grad(ours)))(params, m, n, noise, rates)
    expected = jax.vmap(jax.value_and_grad(plain))(params, m, n, noise, rates)
    # one lane's rows as 4 blocks of 9 (the indices and noise with a leading block axis)
    blocks = lambda x: None if x is None else x[0].reshape(4, 9, *x.shape[2:])  # noqa: E731
    lane0 = jax.tree.map(lambda x: x[0], params)
    blocked = jax.value_and_grad(ours)(lane0, blocks(m), blocks(n), blocks(noise), rates[0])
    for got, want in ((lanes, expected), (blocked, jax.tree.map(lambda x: x[0], expected))):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        for k in "UVW":
            np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_readout_needs_at_least_p_columns():
    params = init_params(jax.random.key(12), 11, 8)
    with pytest.raises(ValueError, match="columns=10"):
        readout(params, jnp.ones((3, 8)), columns=10)

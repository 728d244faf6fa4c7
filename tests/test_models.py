"""Model, analytic solution (PAPER.md §4) and IPR against a NumPy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from grok_jax import metrics
from grok_jax.models import analytic_solution, features, init_params, init_std, readout


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
    np.testing.assert_allclose(metrics.neuron_ipr(params), 1.0, atol=1e-5)


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
    # Gaussian rows: |rfft|² is roughly exponential, so IPR ≈ 2/(⌊p/2⌋ + 1) ≈ 0.04.
    assert abs(float(jnp.mean(metrics.ipr(x))) - 2 / (p // 2 + 1)) < 0.01
    params = init_params(jax.random.key(3), p, 64)
    np.testing.assert_allclose(
        metrics.neuron_ipr(params), ref.neuron_ipr(*(np.asarray(params[k]) for k in "UVW")), rtol=1e-5)


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


@pytest.mark.parametrize("activation,columns", [("quad", None), ("relu", 16)])
@pytest.mark.parametrize("rate", [None, 0.3])
def test_hand_written_backward_passes_equal_autodiff(activation, columns, rate):
    # features and readout have custom VJPs (regathered pre-activations, a transposed
    # dW product, a readout padded to 16 columns); the oracle is autodiff of the plain
    # expressions.
    p, width = 11, 24
    params = init_params(jax.random.key(7), p, width)
    m, n = (jax.random.randint(jax.random.key(s), (37,), 0, p) for s in (8, 9))  # repeated indices
    noise = None if rate is None else jax.random.uniform(jax.random.key(10), (37, width))
    r = 0.0 if rate is None else rate
    target = jax.random.normal(jax.random.key(11), (37, p))

    def ours(params):
        h = features(params, m, n, activation, r, noise)
        return jnp.sum(jnp.sin(readout(params, h, columns=columns)) * target)

    def plain(params):
        pre = params["U"][m] + params["V"][n]
        if noise is not None:
            pre = jnp.where(noise >= r, pre / (1 - r), 0.0)
        h = jnp.square(pre) if activation == "quad" else jax.nn.relu(pre)
        return jnp.sum(jnp.sin(h @ params["W"]) * target)

    np.testing.assert_allclose(ours(params), plain(params), rtol=1e-6)
    expected = jax.grad(plain)(params)
    for batched in (False, True):  # as in a sweep: under vmap over lanes
        got = jax.vmap(jax.grad(ours))(jax.tree.map(lambda x: x[None], params)) if batched else jax.grad(ours)(params)
        for k in "UVW":
            np.testing.assert_allclose(jnp.squeeze(got[k], 0) if batched else got[k], expected[k],
                                       rtol=1e-5, atol=1e-7, err_msg=k)

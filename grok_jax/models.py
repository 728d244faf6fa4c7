"""The two-layer MLP of the paper (Eq. 1): ``f(m, n) = W φ(U e_m + V e_n)``.

Parameters are stored input-major so that the one-hot first layer is a row
gather: ``U[i, k]`` is the paper's ``U_{k i}`` (shape ``(p, N)``), likewise ``V``,
and ``W[k, q]`` is the paper's ``W_{q k}`` (shape ``(N, p)``). No biases.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
ACTIVATIONS = {"quad": jnp.square, "relu": jax.nn.relu}
BN_EPS = 1e-5  # PyTorch BatchNorm1d default


class BNStats(NamedTuple):
    """Per-neuron mean and (biased) variance of the post-activation features."""

    mean: jax.Array
    var: jax.Array


def init_std(width: int) -> float:
    """Paper init scale: σ² = (16N)^(-2/3), i.e. σ = 0.5 / (2N)^(1/3)."""
    return (16.0 * width) ** (-1.0 / 3.0)


def init_params(key: jax.Array, p: int, width: int, batchnorm: bool = False) -> Params:
    """Draws every weight from ``Normal(0, σ²)``; BN scale 1 and shift 0.

    Example:
      >>> params = init_params(jax.random.key(0), p=11, width=32)
      >>> params["U"].shape, params["W"].shape
      ((11, 32), (32, 11))
    """
    ku, kv, kw = jax.random.split(key, 3)
    std = init_std(width)
    params = {
        "U": std * jax.random.normal(ku, (p, width)),
        "V": std * jax.random.normal(kv, (p, width)),
        "W": std * jax.random.normal(kw, (width, p)),
    }
    if batchnorm:
        params["bn_scale"] = jnp.ones(width)
        params["bn_shift"] = jnp.zeros(width)
    return params


def features(
    params: Params,
    m: jax.Array,
    n: jax.Array,
    activation: str,
    dropout_rate: jax.Array | float = 0.0,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Hidden features ``φ(dropout(U e_m + V e_n))``, shape ``(len(m), N)``.

    Dropout (inverted, PyTorch semantics) acts on the pre-activation and only when
    ``noise`` (uniform draws in [0, 1) of that shape) is given: units whose draw is
    below the rate are zeroed, the rest scaled by 1/(1 − rate); a rate of 0 keeps
    every unit.
    """
    pre = params["U"][m] + params["V"][n]
    if noise is not None:
        keep = noise >= dropout_rate
        pre = jnp.where(keep, pre / (1.0 - dropout_rate), 0.0)
    return ACTIVATIONS[activation](pre)


def bn_stats(h: jax.Array, weight: jax.Array) -> BNStats:
    """Batch statistics of ``h`` over the rows with ``weight`` 1 (padding excluded)."""
    w = weight[:, None] / jnp.sum(weight)
    mean = jnp.sum(w * h, axis=0)
    return BNStats(mean, jnp.sum(w * jnp.square(h - mean), axis=0))


def readout(params: Params, h: jax.Array, stats: BNStats | None = None) -> jax.Array:
    """Logits ``W · h`` (after BatchNorm of ``h`` when ``stats`` is given)."""
    if stats is not None:
        h = (h - stats.mean) * jax.lax.rsqrt(stats.var + BN_EPS)
        h = h * params["bn_scale"] + params["bn_shift"]
    return h @ params["W"]


def analytic_solution(key: jax.Array, p: int, width: int) -> Params:
    """The paper's periodic solution (Eq. 2) that computes ``(m + n) mod p``.

    Each neuron gets a random frequency in ``1..(p-1)/2`` and random phases; every
    neuron's IPR is exactly 1 (rfft convention), and for ``width ≫ p`` the network
    classifies every pair correctly.
    """
    kf, ku, kv = jax.random.split(key, 3)
    freq = jax.random.randint(kf, (width,), 1, (p - 1) // 2 + 1)
    phi_u = jax.random.uniform(ku, (width,), minval=-jnp.pi, maxval=jnp.pi)
    phi_v = jax.random.uniform(kv, (width,), minval=-jnp.pi, maxval=jnp.pi)
    # Amplitude (2/N)^(1/3): the three layers multiply to 2/N, which with ~N/4
    # aligned terms gives unit logits. PAPER.md prints the exponent as -1/3, which
    # would give logits of order N²/4 (same argmax and IPR, but far from one-hot).
    scale = (2.0 / width) ** (1.0 / 3.0)
    angle = 2 * jnp.pi * jnp.outer(jnp.arange(p), freq) / p  # (p, N)
    return {
        "U": scale * jnp.cos(angle + phi_u),
        "V": scale * jnp.cos(angle + phi_v),
        "W": scale * jnp.cos(-angle - phi_u - phi_v).T,
    }

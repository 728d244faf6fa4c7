"""Flax pieces shared by the models beyond the hand-written two-layer MLP.

The layers keep a property the sweep relies on: a row's numbers depend only on its own
inputs (and, for BatchNorm in train mode, on the rows marked as the batch), never on
which other rows or how much padding share the array, so a lane gives the same
results alone as inside a padded compile group.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grok_jax.models import Inputs, Variables
from grok_jax.models.mlp2 import BN_EPS, BNStats, bn_stats, running_stats


class RowDropout(nn.Module):
    """Inverted dropout (PyTorch semantics) whose mask for a row is drawn from the
    ``"dropout"`` rng folded with the row's pair index: the same example gets the same
    mask whatever batch it is in. ``rate`` may be a traced per-lane value; 0 keeps
    every unit. Acts only when ``enabled`` and a ``"dropout"`` rng is given."""

    @nn.compact
    def __call__(self, x: jax.Array, pair: jax.Array, rate: jax.Array | float, enabled: bool) -> jax.Array:
        if not enabled or not self.has_rng("dropout"):
            return x
        key = self.make_rng("dropout")
        width = x.shape[-1]
        draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (width,))  # noqa: E731
        noise = jax.vmap(draw)(pair.reshape(-1)).reshape(*pair.shape, width)
        rate = jnp.asarray(rate, x.dtype)
        return jnp.where(noise >= rate, x / (1.0 - rate), 0.0)


class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch ``BatchNorm1d`` semantics in train
    mode (statistics of the rows whose ``weight`` is set, biased variance), learned
    ``scale`` and ``shift``. ``stats`` says what eval mode normalizes with and what
    train mode leaves in ``batch_stats``: ``"running"`` (momentum 0.1, unbiased
    variance) or ``"full_batch"`` (the batch's own statistics, for a refresh over all
    training rows)."""

    stats: str = "running"

    @nn.compact
    def __call__(self, h: jax.Array, weight: jax.Array, train: bool) -> jax.Array:
        width = h.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (width,))
        shift = self.param("shift", nn.initializers.zeros, (width,))
        mean = self.variable("batch_stats", "mean", jnp.zeros, (width,))
        var = self.variable("batch_stats", "var", jnp.ones, (width,))
        if train:
            flat_h, flat_w = h.reshape(-1, width), weight.reshape(-1)
            batch = bn_stats(flat_h, flat_w)
            if not self.is_initializing():
                new = (running_stats(BNStats(mean.value, var.value), batch, jnp.sum(flat_w))
                       if self.stats == "running" else batch)
                mean.value, var.value = new.mean, new.var
            use = batch
        else:
            use = BNStats(mean.value, var.value)
        return (h - use.mean) * jax.lax.rsqrt(use.var + BN_EPS) * scale + shift


def init_module(module: nn.Module, key: jax.Array) -> Variables:
    """A flax module's variables for :meth:`grok_jax.models.Model.init` (shapes from two dummy rows)."""
    dummy = Inputs(*(jnp.zeros(2, jnp.int32) for _ in range(3)), jnp.ones(2, bool))
    return dict(module.init({"params": key}, dummy, train=False))


def apply_module(module: nn.Module, variables: Variables, inputs: Inputs, train: bool, rate: Any,
                 dropout_key: jax.Array | None, mask: dict | None) -> tuple[jax.Array, Variables]:
    """A flax module behind :meth:`grok_jax.models.Model.apply`: ``rngs={"dropout": key}``
    in train mode, ``batch_stats`` updated through ``mutable`` when it has them."""
    rngs = {"dropout": dropout_key} if train and dropout_key is not None else {}
    state = {k: v for k, v in variables.items() if k != "params"}
    if train and state:
        logits, updates = module.apply(variables, inputs, train=True, rate=rate, mask=mask, rngs=rngs,
                                       mutable=list(state))
        return logits, {**state, **updates}
    return module.apply(variables, inputs, train=train, rate=rate, mask=mask, rngs=rngs), state

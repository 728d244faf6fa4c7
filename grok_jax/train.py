"""One training run as a pure function; a sweep ``vmap``s it over lanes.

``make_train(config, n_max)`` closes over the static settings (p, width, steps,
activation, loss, ...) and returns ``train(lane) -> (log, final)``, where ``lane``
holds the per-run values that a sweep may vary (seed, sizes of the training and
corrupted sets, wd, lr, dropout) as traced arrays. The step loop is a fixed-length
``lax.scan``; metrics are logged every ``log_every`` steps by an outer scan, so the
log is part of the compiled program's output with no host round trips.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grok_jax import metrics
from grok_jax.data import Dataset, make_dataset, pair_labels
from grok_jax.models import Params, bn_stats, features, init_params, readout

# Each random stream gets its own key, ``fold_in(key(seed), stream)``, so changing
# one setting (e.g. dropout) never changes another stream (e.g. the split).
STREAMS = {"init": 0, "split": 1, "corrupt": 2, "dropout": 3}


class Lane(NamedTuple):
    """Per-run values, traced so that lanes differing in them share one program."""

    seed: jax.Array  # int32
    n_train: jax.Array  # int32, ⌊α·P⌋
    n_corrupt: jax.Array  # int32, ⌊ξ·n_train⌋
    wd: jax.Array  # decoupled weight decay (multiplied by lr, PyTorch AdamW)
    lr: jax.Array
    dropout: jax.Array  # dropout probability on the hidden pre-activation


Log = dict[str, jax.Array]


def stream_key(seed: jax.Array, stream: str) -> jax.Array:
    """The key of one random stream of a run."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[stream])


def make_optimizer(lr: jax.Array, wd: jax.Array, config: Any) -> optax.GradientTransformation:
    """AdamW with PyTorch semantics: ``w ← w − lr·(adam_update + wd·w)``."""
    return optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=wd)


def make_train(
    config: Any,
    n_max: int,
    on_log: Callable[[jax.Array], None] | None = None,
    transposed_logits: bool = False,
) -> Callable[[Lane], tuple[Log, Log]]:
    """Returns the pure ``train(lane) -> (log, final)`` for static ``config``.

    ``config`` holds the static settings of :func:`grok_jax.config.static_config`.
    ``transposed_logits`` computes the training loss from ``(p, rows)`` logits (same
    numbers up to rounding): faster when a device trains one lane at a time, slower
    when ``vmap`` batches several lanes per device (see :func:`grok_jax.models.readout`).

    ``n_max`` is the padded training-set size of the compile group. ``on_log``, if
    given, is called on the host with the index of a finished logging block about
    25 times per run (for progress bars; once per block even under ``vmap``). ``log`` maps
    each name of :data:`grok_jax.metrics.METRICS` to an array over the
    ``steps // log_every + 1`` logged steps (step 0 first); ``final`` holds
    ``ipr_k`` (per-neuron IPR at the end) and, with BatchNorm, ``bn_scale``.

    Example:
      >>> train = make_train(config, n_max=60)
      >>> lanes = Lane(seed=jnp.arange(4), ...)            # one entry per run
      >>> log, final = jax.jit(jax.vmap(train))(lanes)     # log["test_acc"]: (4, n_log)
    """
    p, act, bn = config.p, config.activation, config.batchnorm
    n_logs, rem = divmod(config.steps, config.log_every)
    if rem:
        raise ValueError(f"steps={config.steps} is not a multiple of log_every={config.log_every}")
    all_m, all_n = jnp.divmod(jnp.arange(p * p, dtype=jnp.int32), p)
    all_labels = pair_labels(config.task, p)

    def dropout_noise(key: jax.Array, ds: Dataset) -> jax.Array:
        # One key per example (its pair index), so the masks do not depend on n_max.
        draw = lambda pair: jax.random.uniform(jax.random.fold_in(key, pair), (config.width,))  # noqa: E731
        return jax.vmap(draw)(ds.order[:n_max])

    def loss_fn(params: Params, ds: Dataset, rate: jax.Array, noise: jax.Array | None) -> jax.Array:
        h = features(params, ds.m, ds.n, act, rate, noise)
        logits = readout(params, h, bn_stats(h, ds.train) if bn else None, transposed=transposed_logits)
        terms = metrics.loss_terms(logits, ds.label, config.loss, axis=0 if transposed_logits else -1)
        return metrics.masked_mean(terms, ds.train)

    def log_metrics(params: Params, ds: Dataset) -> Log:
        # Eval mode: no dropout; BatchNorm uses the statistics of the training pairs.
        h = features(params, all_m, all_n, act)
        logits = readout(params, h, bn_stats(h, ds.train_pair) if bn else None)
        out = metrics.evaluate(logits, ds, all_labels, config.loss)
        out.update(metrics.weight_norms(params))
        out["ipr"] = jnp.nanmean(metrics.neuron_ipr(params))
        return out

    def train(lane: Lane) -> tuple[Log, Log]:
        ds = make_dataset(
            stream_key(lane.seed, "split"), stream_key(lane.seed, "corrupt"),
            lane.n_train, lane.n_corrupt, task=config.task, p=p, n_max=n_max,
        )
        params = init_params(stream_key(lane.seed, "init"), p, config.width, bn)
        opt = make_optimizer(lane.lr, lane.wd, config)
        dropout_key = stream_key(lane.seed, "dropout")

        def step(carry: tuple, t: jax.Array) -> tuple[tuple, None]:
            params, opt_state = carry
            noise = dropout_noise(jax.random.fold_in(dropout_key, t), ds) if config.use_dropout else None
            grads = jax.grad(loss_fn)(params, ds, lane.dropout, noise)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def logged_block(carry: tuple, block: jax.Array) -> tuple[tuple, Log]:
            steps = block * config.log_every + jnp.arange(config.log_every)
            carry, _ = jax.lax.scan(step, carry, steps)
            if on_log is not None:  # ~25 reports per run: a host callback is not free
                report = (block + 1) % max(1, n_logs // 25) == 0
                jax.lax.cond(report, lambda: jax.debug.callback(on_log, block), lambda: None)
            return carry, log_metrics(carry[0], ds)

        first = log_metrics(params, ds)
        (params, _), log = jax.lax.scan(logged_block, (params, opt.init(params)), jnp.arange(n_logs))
        log = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, log)
        final = {"ipr_k": metrics.neuron_ipr(params)}
        if bn:
            final["bn_scale"] = params["bn_scale"]
        return log, final

    return train

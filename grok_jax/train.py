"""One training run as a pure function; a sweep ``vmap``s it over lanes.

``make_train(config, n_max)`` closes over the static settings (p, width, steps,
activation, loss, ...) and returns ``train(lane) -> (log, final)``, where ``lane``
holds the per-run values that a sweep may vary (seed, sizes of the training and
corrupted sets, wd, lr, dropout) as traced arrays. The step loop is a fixed-length
``lax.scan``; metrics are logged every ``log_every`` steps by an outer scan, so the
log is part of the compiled program's output with no host round trips. A logged
state's metrics on the training rows come from the forward pass of the step that
starts from it; only the pairs past the training rows need a forward of their own.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grok_jax import metrics
from grok_jax.data import Rows, held_out_rows, make_dataset, num_pairs, training_rows
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
Sums = dict[str, jax.Array]  # see grok_jax.metrics.row_sums


def stream_key(seed: jax.Array, stream: str) -> jax.Array:
    """The key of one random stream of a run."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[stream])


def make_optimizer(lr: jax.Array, wd: jax.Array, config: Any) -> optax.GradientTransformation:
    """AdamW with PyTorch semantics: ``w ← w − lr·(adam_update + wd·w)``."""
    return optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=wd)


def make_gradient(config: Any, row_blocks: int = 1, columns: int | None = None) -> Callable[..., tuple[Params, Sums]]:
    """Returns ``gradient(params, rows, n_train, dropout, key) -> (grads, sums)``:
    the gradient of the mean training loss over ``rows`` (from
    :func:`grok_jax.data.training_rows` with the same ``row_blocks``), ``n_train``
    the number of real training rows, ``key`` the step's dropout key; and the
    :func:`grok_jax.metrics.row_sums` of the logits it computed on the way (XLA
    drops them where they are not used).

    With ``row_blocks > 1`` a ``lax.scan`` computes the gradient block by block and
    sums the blocks' gradients (the same numbers up to rounding): a block's
    activations then stay in a CPU core's cache between the forward and backward
    passes (20-25% faster per step at p 97, N 500, one lane per core). BatchNorm
    couples all rows, so it needs ``row_blocks == 1``. ``columns`` is passed to
    :func:`grok_jax.models.readout`.

    Example:
      >>> gradient = make_gradient(config, row_blocks=4)
      >>> rows = training_rows(ds, n_max, row_blocks=4)
      >>> grads, sums = gradient(params, rows, jnp.sum(ds.train), 0.0, key)   # grads like params
    """
    if row_blocks < 1 or (config.batchnorm and row_blocks > 1):
        raise ValueError(f"row_blocks={row_blocks}: must be >= 1, and 1 with BatchNorm")

    def dropout_noise(key: jax.Array, pair: jax.Array) -> jax.Array:
        # One key per example (its pair index), so the masks depend neither on n_max
        # nor on the row blocks.
        draw = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (config.width,))  # noqa: E731
        return jax.vmap(draw)(pair)

    def rows_loss(params: Params, rows: Rows, n_train: jax.Array, rate: jax.Array,
                  key: jax.Array) -> tuple[jax.Array, Sums]:
        # These rows' share of the mean training loss (all of it when rows are all rows).
        noise = dropout_noise(key, rows.pair) if config.use_dropout else None
        h = features(params, rows.m, rows.n, config.activation, rate, noise)
        logits = readout(params, h, bn_stats(h, rows.train) if config.batchnorm else None, columns)
        sums = metrics.row_sums(logits, rows, config.loss)
        return sums["train_loss"] / n_train, sums

    grad = jax.grad(rows_loss, has_aux=True)
    if row_blocks == 1:
        return grad

    def gradient(params: Params, rows: Rows, n_train: jax.Array, rate: jax.Array,
                 key: jax.Array) -> tuple[Params, Sums]:
        def add_block(total: tuple, block: Rows) -> tuple[tuple, None]:
            return jax.tree.map(jnp.add, total, grad(params, block, n_train, rate, key)), None

        one_block = jax.tree.map(lambda r: r[0], rows)  # for the shapes of the totals
        shapes = jax.eval_shape(grad, params, one_block, n_train, rate, key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.scan(add_block, zeros, rows)[0]

    return gradient


def make_train(
    config: Any,
    n_max: int,
    on_log: Callable[[jax.Array], None] | None = None,
    row_blocks: int = 1,
    reports: int = 25,
    columns: int | None = None,
) -> Callable[[Lane], tuple[Log, Log]]:
    """Returns the pure ``train(lane) -> (log, final)`` for static ``config``.

    ``config`` holds the static settings of :func:`grok_jax.config.static_config`.
    ``row_blocks`` is passed to :func:`make_gradient`, ``columns`` to it and to
    every :func:`grok_jax.models.readout`.

    ``n_max`` is the padded training-set size of the compile group. ``on_log``, if
    given, is called on the host with the index of a finished logging block after
    every ``max(1, n_logs // reports)`` of them: ``reports`` to ``2·reports − 1``
    times per run, or once per logged block when there are fewer (for progress
    bars; once per report, not per lane, under ``vmap``; once per device under
    ``shard_map``). ``log`` maps each name of :data:`grok_jax.metrics.METRICS` to
    an array over the ``steps // log_every + 1`` logged steps (step 0 first; entry
    ``i`` is the state after ``i·log_every`` steps, in eval mode); ``final`` holds
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
    gradient = make_gradient(config, row_blocks, columns)
    if on_log is None or reports < 1:
        on_log, reports = None, 1
    per_report = max(1, n_logs // reports)  # logged blocks per progress report
    n_reports = n_logs // per_report
    # Without dropout a training step's forward pass is the evaluation's on the training
    # rows: a logged state then needs a forward over the other test pairs only. (With
    # BatchNorm those need the rows' statistics, which the evaluation's own forward has.)
    step_evaluates = not (config.use_dropout or bn)

    def train(lane: Lane) -> tuple[Log, Log]:
        ds = make_dataset(
            stream_key(lane.seed, "split"), stream_key(lane.seed, "corrupt"),
            lane.n_train, lane.n_corrupt, task=config.task, p=p, n_max=n_max,
        )
        params = init_params(stream_key(lane.seed, "init"), p, config.width, bn)
        opt = make_optimizer(lane.lr, lane.wd, config)
        dropout_key = stream_key(lane.seed, "dropout")
        rows, n_train = training_rows(ds, n_max, row_blocks), jnp.sum(ds.train)
        tests = held_out_rows(ds, n_max, config.task, p)

        def evaluate(params: Params, sums: Sums | None = None) -> Log:
            # Eval mode (no dropout; BatchNorm with the training rows' statistics) over
            # every pair; `sums`: the training rows' sums from a step's forward pass.
            stats = None
            if sums is None:
                h = features(params, rows.m, rows.n, act)
                stats = bn_stats(h, rows.train) if bn else None
                sums = metrics.row_sums(readout(params, h, stats, columns), rows, config.loss)
            logits = readout(params, features(params, tests.m, tests.n, act), stats, columns)
            sums = jax.tree.map(jnp.add, sums, metrics.row_sums(logits, tests, config.loss))
            out = metrics.means(sums, n_train, lane.n_corrupt, num_pairs(config.task, p) - n_train)
            out.update(metrics.weight_norms(params))
            out["ipr"] = jnp.nanmean(metrics.neuron_ipr(params))
            return out

        def step(carry: tuple, t: jax.Array) -> tuple[tuple, Sums]:
            params, opt_state = carry
            grads, sums = gradient(params, rows, n_train, lane.dropout, jax.random.fold_in(dropout_key, t))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), sums

        def logged_block(carry: tuple, block: jax.Array) -> tuple[tuple, Log]:
            # Logs the state the block starts from, with its first step's forward pass.
            first = block * config.log_every
            after_first, sums = step(carry, first)
            entry = evaluate(carry[0], sums if step_evaluates else None)
            rest = first + 1 + jnp.arange(config.log_every - 1)
            carry, _ = jax.lax.scan(lambda c, t: (step(c, t)[0], None), after_first, rest)
            return carry, entry

        def reported_blocks(carry: tuple, first_block: jax.Array) -> tuple[tuple, Log]:
            # A progress report after every `per_report` logged blocks, by nesting scans
            # rather than with a `cond` in every block: at p 31 the `cond` alone cost 5%.
            carry, log = jax.lax.scan(logged_block, carry, first_block + jnp.arange(per_report))
            if on_log is not None:
                jax.debug.callback(on_log, first_block + per_report - 1)
            return carry, log

        carry = (params, opt.init(params))
        carry, log = jax.lax.scan(reported_blocks, carry, jnp.arange(0, n_reports * per_report, per_report))
        log = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), log)
        if n_logs > n_reports * per_report:  # the last few blocks, unreported
            carry, rest = jax.lax.scan(logged_block, carry, jnp.arange(n_reports * per_report, n_logs))
            log = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), log, rest)
        params = carry[0]
        log = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), log, evaluate(params))
        final = {"ipr_k": metrics.neuron_ipr(params)}
        if bn:
            final["bn_scale"] = params["bn_scale"]
        return log, final

    return train

"""One training run as a pure function; a sweep ``vmap``s it over lanes.

``make_train(config, n_max)`` closes over the static settings (model, p, width,
steps, batch size, ...) and returns ``train(lane) -> (log, final)``, where ``lane``
holds the per-run values that a sweep may vary (seed, sizes of the training and
corrupted sets, wd, lr, dropout) as traced arrays. The step loop is a fixed-length
``lax.scan``; metrics are logged every ``log_every`` steps by an outer scan, so the
log is part of the compiled program's output with no host round trips. A logged
state's metrics on the training rows come from the forward pass of the step that
starts from it; only the pairs past the training rows need a forward of their own.

``make_run`` gives the same run in pieces (``start``, ``advance`` over a segment of
logged blocks, ``finish``), so that a long run can be checkpointed between program
calls; its random draws depend on the step index only, so the pieces compute the
whole run's numbers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grok_jax import metrics
from grok_jax.data import (Rows, batch_rows, batches_per_epoch, epoch_order, held_out_rows, make_dataset,
                           num_pairs, training_rows)
from grok_jax.models import Inputs, Model, Variables, get_model, optimizer_groups

# Each random stream gets its own key, ``fold_in(key(seed), stream)``, so changing
# one setting (e.g. dropout) never changes another stream (e.g. the split).
STREAMS = {"init": 0, "split": 1, "corrupt": 2, "dropout": 3, "batch": 4, "prune": 5}


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


def inputs(rows: Rows) -> Inputs:
    """What a model sees of ``rows``: operands, pair indices, and which rows count
    in batch statistics (the real training rows)."""
    return Inputs(rows.m, rows.n, rows.pair, rows.train)


def make_optimizer(lr: jax.Array, wd: jax.Array, config: Any, model: Model | None = None
                   ) -> optax.GradientTransformation:
    """AdamW with PyTorch semantics: ``w ← w − lr·(adam_update + wd·w)``. With a
    ``model`` that has parameter groups (:func:`grok_jax.models.optimizer_groups`),
    PyTorch's AdamW with those groups: leaf ``w`` at ``lr_g = lr·lr_scale`` (a static
    factor per leaf times the traced ``lr``), ``w ← w − lr_g·(adam_update + wd_g·w)``,
    ``wd_g`` ``wd`` where the group decays, else 0."""
    groups = None
    if getattr(model, "optimizer_groups", None) is not None:
        shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
        groups = optimizer_groups(model, shapes)
    if groups is None:
        return optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=wd)
    scale = lambda updates: jax.tree.map(lambda u, f: u * f, updates, groups.lr_scale)  # noqa: E731
    return optax.chain(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=wd,
                                   mask=groups.decay),
                       optax.stateless(lambda updates, params: scale(updates)))


def make_gradient(config: Any, model: Model, row_blocks: int = 1
                  ) -> Callable[..., tuple[Any, tuple[Sums, Variables]]]:
    """Returns ``gradient(variables, rows, count, dropout, key) -> (grads, (sums,
    state))``: the gradient with respect to ``variables["params"]`` of the mean
    training loss over ``rows`` (from :func:`grok_jax.data.training_rows` with the
    same ``row_blocks``, or a mini-batch), ``count`` the number of real training
    rows in them, ``key`` the step's dropout key; the
    :func:`grok_jax.metrics.row_sums` of the logits it computed on the way (XLA
    drops them where they are not used) and the model state after the step.

    With ``row_blocks > 1`` a ``lax.scan`` computes the gradient block by block and
    sums the blocks' gradients (the same numbers up to rounding): a block's
    activations then stay in a CPU core's cache between the forward and backward
    passes (20-25% faster per step at p 97, N 500, one lane per core). A model whose
    rows are coupled in train mode (BatchNorm) needs ``row_blocks == 1``.

    Example:
      >>> from grok_jax.config import load_config, static_config
      >>> config = static_config(load_config("tiny"))
      >>> model = get_model(config)
      >>> variables = model.init(jax.random.key(0))
      >>> ds = make_dataset(jax.random.key(1), jax.random.key(2), 72, 0, task="add", p=11, n_max=72)
      >>> gradient = make_gradient(config, model, row_blocks=4)
      >>> rows = training_rows(ds, 72, row_blocks=4)      # 4 blocks of 18 rows
      >>> grads, (sums, state) = gradient(variables, rows, 72, 0.0, jax.random.key(3))
      >>> jax.tree.map(jnp.shape, grads)
      {'U': (11, 32), 'V': (11, 32), 'W': (32, 11)}
    """
    if row_blocks < 1 or (model.batch_coupled and row_blocks > 1):
        raise ValueError(f"row_blocks={row_blocks}: must be >= 1, and 1 for a model with batch statistics")

    def rows_loss(params: Any, state: Variables, rows: Rows, count: jax.Array, rate: jax.Array,
                  key: jax.Array) -> tuple[jax.Array, tuple[Sums, Variables]]:
        # These rows' share of the mean training loss (all of it when rows are all rows).
        logits, state = model.apply({"params": params, **state}, inputs(rows), train=True, dropout_rate=rate,
                                    dropout_key=key if config.use_dropout else None)
        sums = metrics.row_sums(logits, rows, config.loss)
        return sums["train_loss"] / count, (sums, state)

    grad = jax.grad(rows_loss, has_aux=True)

    def gradient(variables: Variables, rows: Rows, count: jax.Array, rate: jax.Array, key: jax.Array):
        params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
        if row_blocks == 1:
            return grad(params, state, rows, count, rate, key)

        def add_block(total: tuple, block: Rows) -> tuple[tuple, None]:
            grads, (sums, _) = grad(params, state, block, count, rate, key)
            return jax.tree.map(jnp.add, total, (grads, sums)), None

        one_block = jax.tree.map(lambda r: r[0], rows)  # for the shapes of the totals
        grads, (sums, _) = jax.eval_shape(grad, params, state, one_block, count, rate, key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads, sums))
        grads, sums = jax.lax.scan(add_block, zeros, rows)[0]
        return grads, (sums, state)  # rows are independent: the model has no batch state

    return gradient


class RunState(NamedTuple):
    """The in-flight state of a run between program calls (what a checkpoint holds)."""

    variables: Variables  # parameters and model state
    opt_state: Any  # AdamW's
    log: Log  # every metric over the logged steps; NaN where not logged yet
    peak_train_acc: jax.Array  # highest training accuracy of the steps so far (see make_run); NaN before any


class Run(NamedTuple):
    """A run in pieces: ``finish(lane, advance(lane, start(lane), 0, n_logs))`` is
    ``train(lane)``; a long run calls ``advance`` once per segment of logged blocks,
    its state kept (and checkpointed) between calls."""

    start: Callable[[Lane], RunState]
    # (lane, state, first logged block, number of blocks: static) -> state after them
    advance: Callable[[Lane, RunState, jax.Array, int], RunState]
    finish: Callable[[Lane, RunState], tuple[Log, Log]]  # -> (log, final)
    n_logs: int  # logged blocks of a whole run (steps // log_every)


def make_train(config: Any, n_max: int, row_blocks: int = 1, columns: int | None = None, n_min: int = 1
               ) -> Callable[[Lane], tuple[Log, Log]]:
    """Returns the pure ``train(lane) -> (log, final)`` for static ``config``: the
    whole run of :func:`make_run` in one function.

    Example:
      >>> from grok_jax.config import load_config, static_config
      >>> from grok_jax.plan import make_plan
      >>> config = load_config("tiny")         # 8 runs: 2 wd × 2 ξ × 2 seeds, 72 training pairs
      >>> lanes = make_plan(config).lanes      # one entry per run
      >>> train = make_train(static_config(config), n_max=72)
      >>> log, final = jax.jit(jax.vmap(train))(lanes)
      >>> log["test_acc"].shape                # runs × logged steps 0, 20, 40, 60
      (8, 4)
    """
    run = make_run(config, n_max, row_blocks, columns, n_min)
    return lambda lane: run.finish(lane, run.advance(lane, run.start(lane), jnp.int32(0), run.n_logs))


def make_run(config: Any, n_max: int, row_blocks: int = 1, columns: int | None = None, n_min: int = 1) -> Run:
    """The :class:`Run` of static ``config``: pure functions of a lane and its state.

    ``config`` holds the static settings of :func:`grok_jax.config.static_config`;
    the model is ``get_model(config, readout_columns=columns)``. ``row_blocks`` is
    passed to :func:`make_gradient` (full batch only).

    Full batch (``config.batch_size == 0``): every step's gradient is over all the
    lane's training rows. Mini-batches: each epoch a fresh order of the real
    training rows (:func:`grok_jax.data.epoch_order`, from the key
    ``fold_in(stream_key(seed, "batch"), epoch)``), cut into ``⌈n_train/B⌉`` batches
    in order, the last one partial (:func:`grok_jax.data.batch_rows`); step ``t`` is
    batch ``t mod ⌈n_train/B⌉`` of epoch ``t div ⌈n_train/B⌉``. The step count is
    fixed whatever the epoch length. Every random draw depends on the step index
    only, never on how the run is cut into ``advance`` calls.

    ``n_max`` is the padded training-set size of the compile group, ``n_min`` a
    lower bound of its lanes' training-set sizes (mini-batches: it bounds the epochs
    a logged block spans, whose orders are drawn together; any bound gives the same
    numbers, a tight one less work). ``log`` maps each name of
    :func:`grok_jax.metrics.metric_names` to an array over the
    ``steps // log_every + 1`` logged steps (step 0 first; entry ``i`` is the state
    after ``i·log_every`` steps, in eval mode); ``final`` holds ``ipr_<group>``
    (per-neuron IPR at the end, per neuron group of the model), the final
    ``variables`` (parameters and model state) and ``peak_train_acc``.

    ``peak_train_acc`` is the highest training accuracy over every step of the run,
    as that step's training forward pass computed it (the same
    :func:`grok_jax.metrics.row_sums` its gradient comes from, before the update):
    full batch, the accuracy on all the training rows; with mini-batches, on the
    step's batch; in train mode (dropout masks applied, BatchNorm with the step's
    batch statistics). The states before steps ``0 … steps − 1`` are covered, not
    the final one (its accuracy is the last logged ``train_acc``). Without dropout,
    BatchNorm or mini-batches this is the eval-mode training accuracy of every
    state the run passed through; with them it is not comparable with the logged
    ``train_acc``. A maximum of exact counts over fixed steps, it is the same
    however the run is cut into ``advance`` calls.

    Example:
      >>> from grok_jax.config import load_config, static_config
      >>> from grok_jax.plan import make_plan
      >>> config = load_config("tiny")         # 8 runs: 2 wd × 2 ξ × 2 seeds, 72 training pairs
      >>> lanes = make_plan(config).lanes      # one entry per run
      >>> lane = jax.tree.map(lambda a: a[0], lanes)
      >>> run = make_run(static_config(config), n_max=72)
      >>> advance = jax.jit(run.advance, static_argnums=3)
      >>> state = advance(lane, run.start(lane), jnp.int32(0), 1)   # logged block 0: steps 1-20
      >>> state = advance(lane, state, jnp.int32(1), run.n_logs - 1)
      >>> log, final = run.finish(lane, state)
      >>> whole, _ = jax.jit(make_train(static_config(config), n_max=72))(lane)
      >>> bool(jnp.array_equal(log["test_acc"], whole["test_acc"]))
      True
    """
    p, batch = config.p, config.batch_size
    n_logs, rem = divmod(config.steps, config.log_every)
    if rem:
        raise ValueError(f"steps={config.steps} is not a multiple of log_every={config.log_every}")
    if batch and row_blocks > 1:
        raise ValueError(f"row_blocks={row_blocks}: mini-batches are computed in one block")
    if not 1 <= n_min <= n_max:
        raise ValueError(f"n_min={n_min} must be in [1, n_max={n_max}]")
    model = get_model(config, readout_columns=columns)
    # Mini-batches: most epochs one logged block of log_every steps touches.
    epochs_per_block = -(-(config.log_every - 1) // -(-n_min // batch)) + 1 if batch else 0
    gradient = make_gradient(config, model, row_blocks)
    first_group = next(iter(model.groups))
    # Without dropout, batch statistics or mini-batches, a training step's forward pass
    # is the evaluation's on the training rows: a logged state then needs a forward
    # over the other test pairs only.
    step_evaluates = not (config.use_dropout or model.batch_coupled or batch)

    class Bound(NamedTuple):
        """The functions of one lane (its data set is rebuilt from its keys: cheap)."""

        opt: optax.GradientTransformation
        evaluate: Callable[..., Log]
        logged_block: Callable[[tuple, jax.Array], tuple[tuple, Log]]
        refreshed: Callable[[Variables], tuple[Variables, jax.Array | None]]

    def bind(lane: Lane) -> Bound:
        ds = make_dataset(
            stream_key(lane.seed, "split"), stream_key(lane.seed, "corrupt"),
            lane.n_train, lane.n_corrupt, task=config.task, p=p, n_max=n_max,
        )
        opt = make_optimizer(lane.lr, lane.wd, config, model)
        dropout_key, batch_key = stream_key(lane.seed, "dropout"), stream_key(lane.seed, "batch")
        rows, n_train = training_rows(ds, n_max), jnp.sum(ds.train)
        blocks = rows if row_blocks == 1 else training_rows(ds, n_max, row_blocks)
        tests = held_out_rows(ds, n_max, config.task, p)
        n_batches = batches_per_epoch(n_train, batch) if batch else None

        def refreshed(variables: Variables) -> tuple[Variables, jax.Array | None]:
            # Full-batch BatchNorm: eval mode uses the training rows' statistics now.
            if model.eval_stats != "training_rows":
                return variables, None
            logits, state = model.apply(variables, inputs(rows), train=True)
            return {**variables, **state}, logits

        def evaluate(variables: Variables, sums: Sums | None = None) -> Log:
            # Eval mode over every pair; `sums`: the training rows' sums from a step's forward.
            variables, logits = refreshed(variables)
            if sums is None:
                if logits is None:
                    logits, _ = model.apply(variables, inputs(rows), train=False)
                sums = metrics.row_sums(logits, rows, config.loss)
            logits, _ = model.apply(variables, inputs(tests), train=False)
            sums = jax.tree.map(jnp.add, sums, metrics.row_sums(logits, tests, config.loss))
            out = metrics.means(sums, n_train, lane.n_corrupt, num_pairs(config.task, p) - n_train)
            out.update(metrics.weight_norms(model.norm_leaves(variables["params"])))
            out["ipr"] = jnp.nanmean(model.neuron_ipr(variables["params"])[first_group])
            return out

        def block_orders(first: jax.Array) -> tuple[jax.Array, jax.Array] | None:
            # The orders of every epoch that the logged block starting at step `first`
            # touches, computed once per block: under vmap a per-step `cond` would run
            # both branches, i.e. draw and sort an order every step. A block spans at
            # most `epochs_per_block` epochs (a lane's epochs are at least as long as
            # those of the group's smallest training set, `n_min`).
            if not batch:
                return None
            e0 = first // n_batches
            draw = lambda e: epoch_order(jax.random.fold_in(batch_key, e), n_train, n_max,  # noqa: E731
                                         num_pairs(config.task, p))
            return jax.vmap(draw)(e0 + jnp.arange(epochs_per_block)), e0

        def step_rows(orders: tuple | None, t: jax.Array) -> tuple[Rows, jax.Array]:
            # The step's training rows and their count: all of them, or its mini-batch.
            if orders is None:
                return blocks, n_train
            epoch_orders, e0 = orders
            rows_t = batch_rows(rows, epoch_orders[t // n_batches - e0], t % n_batches, batch, n_train)
            return rows_t, jnp.sum(rows_t.train)

        def step(carry: tuple, t: jax.Array, orders: tuple | None) -> tuple[tuple, Sums]:
            variables, opt_state, peak = carry
            step_in, count = step_rows(orders, t)
            grads, (sums, state) = gradient(variables, step_in, count, lane.dropout,
                                            jax.random.fold_in(dropout_key, t))
            updates, opt_state = opt.update(grads, opt_state, variables["params"])
            variables = {**variables, **state, "params": optax.apply_updates(variables["params"], updates)}
            accuracy = sums["train_acc"] / count.astype(sums["train_acc"].dtype)  # as metrics.means divides
            return (variables, opt_state, jnp.fmax(peak, accuracy)), sums

        def logged_block(carry: tuple, block: jax.Array) -> tuple[tuple, Log]:
            # Logs the state the block starts from, with its first step's forward pass.
            first = block * config.log_every
            orders = block_orders(first)
            after_first, sums = step(carry, first, orders)
            entry = evaluate(carry[0], sums if step_evaluates else None)
            rest = first + 1 + jnp.arange(config.log_every - 1)
            carry, _ = jax.lax.scan(lambda c, t: (step(c, t, orders)[0], None), after_first, rest)
            return carry, entry

        return Bound(opt, evaluate, logged_block, refreshed)

    def start(lane: Lane) -> RunState:
        bound = bind(lane)
        variables = model.init(stream_key(lane.seed, "init"))
        nan = lambda s: jnp.full((n_logs + 1, *s.shape), jnp.nan, s.dtype)  # noqa: E731
        log = jax.tree.map(nan, jax.eval_shape(bound.evaluate, variables))
        return RunState(variables, bound.opt.init(variables["params"]), log, jnp.float32(jnp.nan))

    def advance(lane: Lane, state: RunState, first: jax.Array, blocks: int) -> RunState:
        carry = (state.variables, state.opt_state, state.peak_train_acc)
        (variables, opt_state, peak), entries = jax.lax.scan(bind(lane).logged_block, carry,
                                                             first + jnp.arange(blocks))
        log = jax.tree.map(lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new, first, 0),
                           state.log, entries)
        return RunState(variables, opt_state, log, peak)

    def finish(lane: Lane, state: RunState) -> tuple[Log, Log]:
        bound, variables = bind(lane), state.variables
        log = jax.tree.map(lambda buf, last: buf.at[n_logs].set(last), state.log, bound.evaluate(variables))
        final = {f"ipr_{group}": v for group, v in model.neuron_ipr(variables["params"]).items()}
        final["variables"] = bound.refreshed(variables)[0]
        final["peak_train_acc"] = state.peak_train_acc
        final["opt_state"] = state.opt_state  # with variables and the peak: what a longer run continues from
        return log, final

    return Run(start, advance, finish, n_logs)


OPT_STATE = "state.opt"  # the store's variable of each lane's optimizer state (see pack_opt_state)


def pack_opt_state(opt_state: Any) -> np.ndarray:
    """The optimizer state of a batch of lanes (every leaf with a leading lane axis)
    as one float32 vector per lane, ``(lanes, opt_state_size)``: its leaves in tree
    order, flattened (the step count is exact in float32 up to 2**24 steps). One
    store variable instead of one per leaf: a chunk's commit writes far fewer arrays.

    Example:
      >>> state = {"count": jnp.array([5, 5], jnp.int32), "mu": jnp.ones((2, 3))}  # 2 lanes
      >>> packed = pack_opt_state(state)
      >>> packed.shape                                    # 1 + 3 floats per lane
      (2, 4)
      >>> like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
      >>> unpack_opt_state(packed, like)["count"]          # state again, leaf by leaf
      array([5, 5], dtype=int32)
    """
    leaves = jax.tree.leaves(opt_state)
    return np.concatenate([np.asarray(x, np.float32).reshape(len(x), -1) for x in leaves], axis=1)


def unpack_opt_state(packed: np.ndarray, like: Any) -> Any:
    """The optimizer state of structure, shapes and dtypes ``like`` (one lane's) for
    each row of ``packed`` (:func:`pack_opt_state`; trailing padding is ignored)."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        size = int(np.prod(leaf.shape, dtype=int))
        out.append(packed[:, start:start + size].reshape(len(packed), *leaf.shape).astype(leaf.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)


def opt_state_like(config: Any, model: Model) -> Any:
    """Shapes and dtypes of one lane's optimizer state (``jax.ShapeDtypeStruct``s)."""
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    return jax.eval_shape(make_optimizer(jnp.float32(0), jnp.float32(0), config, model).init, params)


def opt_state_size(config: Any, model: Model) -> int:
    """Floats per lane of :func:`pack_opt_state`: AdamW's two moments of every
    parameter and its step count."""
    return sum(int(np.prod(leaf.shape, dtype=int)) for leaf in jax.tree.leaves(opt_state_like(config, model)))

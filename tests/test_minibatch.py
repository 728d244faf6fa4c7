"""Mini-batches and BatchNorm's running statistics against independent oracles.

The NumPy reference orders each epoch's training rows itself, by a stable sort of the
raw random words of the documented key (``fold_in(fold_in(key(seed), 4), epoch)``,
``draws.epoch_bits``), cuts the batches, keeps BatchNorm's running statistics
(PyTorch ``BatchNorm1d``) and evaluates with them. Compiling ``make_train`` costs
5-8 s a program on a 2-core CPU, so the tests share their programs (:func:`_program`):
four, and the sweep's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import draws
import numpy_reference as ref
import pytest

from grok_jax.config import base_config, static_config
from grok_jax.data import (batch_rows, batches_per_epoch, epoch_order, make_dataset, num_pairs, split_sizes,
                           training_rows)
from grok_jax.execution import run_sweep
from grok_jax.models import flat_variables
from grok_jax.train import Lane, make_train, stream_key

# Measured over seeds 0-4 (the sweep: seeds 0-5), recorded in tests/README.md; each
# tolerance is 17-50x the largest error measured.
# A float32 run against the float64 reference, every case below: 1.9e-6.
RTOL = 1e-4
# A lane with n_train <= batch_size against the same full-batch run: 5.8e-6 (the final
# BatchNorm shift, whose gradient is a near-cancelling sum; everything else 1.5e-6).
FULL_BATCH_RTOL = 1e-4
# A lane of the sweep against the same run alone: 9.7e-7; any two lanes differ by > 1e-3.
LANE_RTOL = 2e-5


def _config(**overrides):
    """p 11, N 16, 30 steps logged every 5; n_train 72 = 4·16 + 8: the last batch of
    an epoch has 8 rows, an epoch is 5 steps."""
    config = base_config()
    config.update(dict(p=11, width=16, steps=30, log_every=5, alpha=0.6, xi=0.3, wd=2.0, batch_size=16))
    config.update(overrides)
    return config


_PROGRAMS: dict = {}


def _program(config, n_max: int):
    """``jit(make_train)`` for the static settings of ``config`` with dropout masks
    drawn (the rate is a lane value: rate 0 and 0.3 share the program), one per
    (static settings, n_max) for the whole file."""
    static = static_config(config).as_configdict()
    static.use_dropout = True
    static = ml_collections.FrozenConfigDict(static)
    if (static, n_max) not in _PROGRAMS:
        _PROGRAMS[static, n_max] = jax.jit(make_train(static, n_max))
    return _PROGRAMS[static, n_max]


def _run(config, seed: int, rate: float, n_max: int | None = None):
    """One lane of ``config`` alone: ``(log, final)`` as NumPy, final's variables flat."""
    n_train, n_corrupt = split_sizes(config.alpha, config.xi, config.task, config.p)
    lane = Lane(jnp.int32(seed), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(config.wd),
                jnp.float32(config.lr), jnp.float32(rate))
    log, final = jax.tree.map(np.asarray, _program(config, n_max or n_train)(lane))
    final.pop("opt_state")  # (its second moments have no relative precision to compare at)
    variables = flat_variables(final.pop("variables"))
    return log, {**final, **variables}


def _reference(config, seed: int, rate: float, bits=None):
    """The NumPy reference's run: its data, and the params and BatchNorm running
    statistics (None without them) at each logged step. ``bits(epoch)``: the
    epochs' random words (default: ``draws.epoch_bits``, the documented ones)."""
    p, width = config.p, config.width
    n_train, n_corrupt = split_sizes(config.alpha, config.xi, config.task, p)
    data = ref.make_data(*draws.data(seed, p), n_train, n_corrupt, config.task, p)
    pairs = data["order"][:n_train]
    batches = None
    if config.batch_size:
        bits = bits or (lambda e: draws.epoch_bits(seed, e, data["usable"]))
        batches = ref.batch_schedule(bits, n_train, config.batch_size)
    history, running = [], ([] if config.batchnorm and config.bn_stats == "running" else None)
    train_counts = []
    ref.train_reference(ref.init_params(draws.normals(seed, p, width), width, config.batchnorm),
                        data["m"][:n_train], data["n"][:n_train], data["label"][:n_train], config.steps, config.lr,
                        config.wd, activation=config.mlp2.activation, loss=config.loss, history=history, rate=rate,
                        noise=(lambda t: draws.dropout(seed, t, pairs, width)) if rate > 0 else None,
                        batches=batches, running_history=running, train_counts=train_counts)
    # the highest accuracy of a step's training forward: on its batch, in train mode
    data["peak_train_acc"] = max(np.float32(hits) / np.float32(rows) for hits, rows in train_counts)
    every = config.log_every
    states = history[::every]
    return data, states, running[::every] if running is not None else [None] * len(states)


def _rel(got, want) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))


def _gaps(got: tuple[dict, dict], want: tuple[dict, dict]) -> dict[str, float]:
    """Relative differences of two runs' ``(log, final)``, by name: of each value, but
    of each parameter matrix's largest entry (single entries near 0 have no
    relative precision)."""
    gaps = {}
    for got_part, want_part in zip(got, want):
        assert set(got_part) == set(want_part)
        for name, values in want_part.items():
            values, other = np.asarray(values, np.float64), np.asarray(got_part[name], np.float64)
            if name.startswith("params."):
                gaps[name] = float(np.max(np.abs(other - values)) / np.max(np.abs(values)))
            else:
                gaps[name] = _rel(other, values)
    return gaps


def _errors(log, final, data, states, stats, config) -> dict[str, float]:
    """Relative error of every logged metric against the reference (accuracies:
    asserted to be the same counts exactly), of the final IPR_k and BatchNorm
    statistics, and of the final parameters (of the largest entry of each: single
    entries near 0 have no relative precision). The peak training accuracy over every
    step (each on its batch, in train mode): exactly the reference's."""
    assert final["peak_train_acc"] == data["peak_train_acc"], (final["peak_train_acc"], data["peak_train_acc"])
    errors = {}
    for i, (params, bn) in enumerate(zip(states, stats)):
        for name, (total, size) in ref.counts(params, data, config.mlp2.activation, config.loss, bn).items():
            if size == 0:
                assert np.isnan(log[name][i]), (name, i)
            elif name.endswith("_acc"):  # counts of examples: exactly the reference's
                assert log[name][i] == np.float32(total) / np.float32(size), (name, i, log[name][i] * size, total)
            else:
                errors[name] = max(errors.get(name, 0.0), _rel(log[name][i], total / size))
        expected = ref.metrics(params, data, config.mlp2.activation, config.loss, bn)
        for name in ("weight_norm", "norm_U", "norm_V", "norm_W", "ipr"):
            errors[name] = max(errors.get(name, 0.0), _rel(log[name][i], expected[name]))
    last, last_stats = states[-1], stats[-1]
    errors["ipr_hidden"] = _rel(final["ipr_hidden"], ref.neuron_ipr(last["U"], last["V"], last["W"]))
    assert {k for k in final if k.startswith("params.")} == {f"params.{k}" for k in last}
    for name, want in last.items():
        errors[f"params.{name}"] = float(np.max(np.abs(final[f"params.{name}"] - want)) / np.max(np.abs(want)))
    if config.batchnorm:
        if last_stats is None:  # full-batch statistics: those of all training rows at the final weights
            rows = slice(0, data["n_train"])
            last_stats = ref.feature_stats(last, data["m"][rows], data["n"][rows], config.mlp2.activation)
        for name in ("mean", "var"):
            errors[f"batch_stats.{name}"] = _rel(final[f"batch_stats.{name}"], last_stats[name])
    else:
        assert not any(k.startswith("batch_stats") for k in final)
    return errors


def _epoch_batches(seed: int, n_train: int, n_max: int, batch: int, epochs: int = 4):
    """A lane's shuffle of the pairs (p 11, a quarter of the rows corrupted); for each
    of its first ``epochs`` epochs the order of its ``n_max`` training rows and, per
    batch that grok_jax cuts, the pair indices of its real rows (in batch order) and
    the numbers of its real and its corrupted rows. (Eager: cheaper here than
    compiling.)"""
    ds = make_dataset(stream_key(seed, "split"), stream_key(seed, "corrupt"), n_train, n_train // 4,
                      task="add", p=11, n_max=n_max)
    rows, shuffle, label = training_rows(ds, n_max), np.asarray(ds.order), np.asarray(ds.label)
    row_of_pair = np.argsort(shuffle)
    orders, out = [], []
    for epoch in range(epochs):
        order = epoch_order(jax.random.fold_in(stream_key(seed, "batch"), epoch), n_train, n_max, num_pairs("add", 11))
        batches = []
        for j in range(int(batches_per_epoch(jnp.int32(n_train), batch))):
            b = jax.tree.map(np.asarray, batch_rows(rows, order, jnp.int32(j), batch, jnp.int32(n_train)))
            assert b.train.shape == (batch,) and not b.test.any()
            # each slot's operands and labels are those of its pair's row
            row = row_of_pair[b.pair]
            np.testing.assert_array_equal(b.m * 11 + b.n, b.pair)
            np.testing.assert_array_equal(b.label[b.train], label[row[b.train]])
            np.testing.assert_array_equal(b.true_label, (b.m + b.n) % 11)
            np.testing.assert_array_equal(b.corrupt, b.train & (row < n_train // 4))
            batches.append((b.pair[b.train], int(b.train.sum()), int(b.corrupt.sum())))
        orders.append(np.asarray(order))
        out.append(batches)
    return shuffle, orders, out


@pytest.mark.parametrize("n_train,batch", [(72, 16), (48, 16), (72, 72), (72, 100), (5, 2)])
def test_every_training_row_once_per_epoch(n_train, batch):
    """Over each of four epochs: every real training row exactly once, padding rows
    never, batches of B rows but the last (n_train mod B, or B), the corrupted rows
    all there; the order is the NumPy reference's from the raw random words."""
    seed, n_max = 3, 81
    n_batches = -(-n_train // batch)
    shuffle, orders, epochs = _epoch_batches(seed, n_train, n_max, batch)
    previous = None
    for epoch, (order, batches) in enumerate(zip(orders, epochs)):
        assert len(batches) == n_batches
        sizes = [size for _, size, _ in batches]
        assert sizes == [batch] * (n_batches - 1) + [n_train - batch * (n_batches - 1)]
        assert sizes[-1] == ((n_train % batch or batch) if batch <= n_train else n_train)
        pairs = np.concatenate([pair for pair, _, _ in batches])
        assert sorted(pairs.tolist()) == sorted(shuffle[:n_train].tolist())  # each training pair once
        assert sum(c for _, _, c in batches) == n_train // 4  # every corrupted row once
        # The reference's order: a stable sort of the words' top 31 bits, rows by index.
        rows = ref.epoch_order(draws.epoch_bits(seed, epoch, 121), n_train)
        np.testing.assert_array_equal(order[:n_train], rows)
        np.testing.assert_array_equal(pairs, shuffle[rows])
        np.testing.assert_array_equal(order[n_train:], np.arange(n_train, n_max))  # padding last, in place
        if previous is not None:
            assert not np.array_equal(pairs, previous)  # a fresh order each epoch
        previous = pairs


def test_order_depends_on_the_seed_and_not_on_the_padding():
    """The same lane padded to 81 rows and unpadded gets the same batches; another
    seed another order."""
    n_train = 48
    _, orders_5, padded = _epoch_batches(5, n_train, 81, 16, epochs=2)
    _, _, unpadded = _epoch_batches(5, n_train, n_train, 16, epochs=2)
    for epoch_padded, epoch_unpadded in zip(padded, unpadded):
        for a, b in zip(epoch_padded, epoch_unpadded):
            np.testing.assert_array_equal(a[0], b[0])
    _, orders_6, _ = _epoch_batches(6, n_train, 81, 16, epochs=2)
    for a, b in zip(orders_5, orders_6):
        assert not np.array_equal(a[:n_train], b[:n_train])


CASES = {  # name: (config overrides, padding rows, dropout rate)
    "mini-batch": (dict(), 0, 0.0),
    "mini-batch, dropout 0.3": (dict(), 0, 0.3),
    "mini-batch, BatchNorm running statistics": (dict(batchnorm=True), 9, 0.0),
    "mini-batch, BatchNorm running statistics, dropout 0.3": (dict(batchnorm=True), 9, 0.3),
    "full batch, BatchNorm running statistics": (dict(batchnorm=True, batch_size=0), 9, 0.0),
    # eval mode: the statistics of all training rows at the logged weights
    "mini-batch, BatchNorm full-batch statistics, dropout 0.3": (dict(batchnorm=True, bn_stats="full_batch"), 9, 0.3),
}


@pytest.mark.parametrize("case", CASES)
def test_trajectory_matches_numpy(case):
    """Every metric at every logged step (eval mode: running statistics), the final
    IPR_k, parameters and running statistics against the NumPy reference, which
    cuts its own batches and keeps its own statistics."""
    overrides, padding, rate = CASES[case]
    config = _config(**overrides)
    n_train, _ = split_sizes(config.alpha, config.xi, config.task, config.p)
    log, final = _run(config, 2, rate, n_train + padding)
    data, states, stats = _reference(config, 2, rate)
    assert len(log["train_loss"]) == len(states) == config.steps // config.log_every + 1
    errors = _errors(log, final, data, states, stats, config)
    assert max(errors.values()) < RTOL, errors
    assert log["train_loss"][-1] < 0.9 * log["train_loss"][0]  # it trained: the check is not vacuous
    if config.batchnorm:  # the statistics are far from the initial running ones (mean 0, var 1)
        assert np.abs(final["batch_stats.mean"]).min() > 1e-2


def test_the_reference_tells_the_batch_orders_apart():
    """The trajectory test's tolerance against the differences that a wrong order of
    batches makes (all in the reference): full batch, every epoch one epoch late, the
    first epoch's order every epoch."""
    config = _config()
    _, right, _ = _reference(config, 2, 0.0)
    _, full, _ = _reference(_config(batch_size=0), 2, 0.0)
    _, late, _ = _reference(config, 2, 0.0, lambda e: draws.epoch_bits(2, e + 1, 121))
    _, same, _ = _reference(config, 2, 0.0, lambda e: draws.epoch_bits(2, 0, 121))
    for other in (full, late, same):  # the final parameters, as _errors measures them
        gap = max(np.max(np.abs(other[-1][k] - right[-1][k])) / np.max(np.abs(right[-1][k])) for k in "UVW")
        assert gap > 100 * RTOL, gap


def test_a_batch_of_all_rows_is_full_batch():
    """batch_size >= n_train (16 rows of 16; 12 rows): one batch per epoch, a new order
    every step, the same rows; the same run as full batch up to rounding, with
    BatchNorm running statistics, and dropout 0.3 (masks follow the pair, not the
    slot). The mini-batch program is the trajectory test's, 81 rows, B 16."""
    for alpha, n_train in ((0.133, 16), (0.1, 12)):
        full_config = _config(batchnorm=True, batch_size=0, alpha=alpha)
        batch_config = _config(batchnorm=True, alpha=alpha)
        assert split_sizes(alpha, 0.3, "add", 11)[0] == n_train <= batch_config.batch_size
        for rate in (0.0, 0.3):
            gaps = _gaps(_run(batch_config, 2, rate, 81), _run(full_config, 2, rate, 81))
            assert max(gaps.values()) < FULL_BATCH_RTOL, (alpha, rate, gaps)


def test_a_mini_batch_lane_in_the_sweep_equals_the_same_run_alone():
    """Seeds × two α (48 rows, a multiple of B, padded to 72 in the sweep; 72) ×
    dropout 0 and 0.3, two lanes per device (vmapped), two chunks: every lane equals
    the same run alone and the NumPy reference's."""
    config = _config()
    config.sweep.seed = (0, 1)
    config.sweep.alpha = (0.4, 0.6)
    config.sweep.dropout = (0.0, 0.3)
    assert len(jax.devices()) == 2  # conftest: 8 lanes are 2 chunks of 2 lanes per device
    ds = run_sweep(config, progress=False, log=lambda s: None, lanes_per_device=2)
    runs = []
    for seed in (0, 1):
        for alpha in (0.4, 0.6):
            for rate in (0.0, 0.3):
                cell = ds.sel(seed=seed, alpha=alpha, dropout=rate)
                lane_config = _config(alpha=alpha, seed=seed, dropout=rate)
                alone = _run(lane_config, seed, rate, 72)  # α 0.6: unpadded; 0.4: padded like its group
                log, final = ({name: cell[name].values for name in part} for part in alone)
                gaps = _gaps((log, final), alone)
                assert max(gaps.values()) < LANE_RTOL, (seed, alpha, rate, gaps)
                data, states, stats = _reference(lane_config, seed, rate)
                errors = _errors(log, final, data, states, stats, lane_config)
                assert max(errors.values()) < RTOL, (seed, alpha, rate, errors)
                runs.append(alone)
    for i, a in enumerate(runs):  # any two lanes differ by far more than the tolerance
        for b in runs[:i]:
            assert max(_rel(a[0][k], b[0][k]) for k in ("train_loss", "weight_norm")) > 50 * LANE_RTOL

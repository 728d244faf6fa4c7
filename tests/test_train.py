"""Training: AdamW and whole trajectories against NumPy; lanes alone vs in a sweep."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import draws
import numpy_reference as ref
import optax
import pytest

from grok_jax import layouts, metrics, programs
from grok_jax.config import base_config, static_config
from grok_jax.data import make_dataset, split_sizes, training_rows
from grok_jax.models import flat_variables, get_model
from grok_jax.models.mlp2 import init_params
from grok_jax.execution import run_sweep
from grok_jax.plan import PADDING_TOLERANCE, Resources, compile_groups, lane_bytes, make_plan
from grok_jax.train import (OPT_STATE, Lane, make_gradient, make_optimizer, make_run, make_train, pack_opt_state,
                            stream_key)


def _adamw_numpy(w: dict, grads, steps: int, lr: float, wd: float, b1: float, b2: float, eps: float) -> dict:
    """torch.optim.AdamW written out, float64; ``grads(t)`` is step t's gradient."""
    w = {k: np.asarray(x, np.float64) for k, x in w.items()}
    m = {k: np.zeros_like(x) for k, x in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for t in range(1, steps + 1):
        for k, g in grads(t).items():
            g = np.asarray(g, np.float64)
            w[k] = w[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            w[k] = w[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    return w


def test_three_adamw_steps_are_pytorchs():
    """Gradients of order 1 that change from step to step: both moments and both
    bias corrections matter (with a constant gradient the corrected moments would
    be g and g² whatever β1 and β2)."""
    config = base_config()
    w = {"a": jax.random.normal(jax.random.key(0), (5, 3)), "b": jax.random.normal(jax.random.key(1), (4,))}
    grads = lambda t: jax.tree.map(lambda x: jnp.sin(3 * x * t) + 0.1 * t, w)  # noqa: E731
    lr, wd = 0.01, 5.0
    opt = make_optimizer(jnp.float32(lr), jnp.float32(wd), config)
    state, new = opt.init(w), w
    for t in range(1, 4):
        updates, state = opt.update(grads(t), state, new)
        new = optax.apply_updates(new, updates)
    expected = _adamw_numpy(w, grads, 3, lr, wd, 0.9, 0.98, 1e-8)
    other = _adamw_numpy(w, grads, 3, lr, wd, 0.9, 0.99, 1e-8)
    # float32 against float64: 5.5e-7 relative at most, measured; 5e-6 allowed
    assert max(np.abs(other[k] - expected[k]).max() for k in w) > 1e-5  # β2 0.99: 4e-5 away
    for k in w:
        np.testing.assert_allclose(new[k], expected[k], rtol=5e-6, atol=1e-7)


def test_adamw_where_eps_matters():
    """Gradients of order 1e-9, below eps = 1e-8, for 200 steps: the update then
    depends on eps (with 1e-7 the weights move ~10x less), on β2 and on the bias
    corrections."""
    config = base_config()
    w0 = {"a": jax.random.normal(jax.random.key(0), (6, 4))}
    grads = lambda t: {"a": 1e-9 * jnp.cos(w0["a"] * t)}  # noqa: E731  (varies with t)
    lr, wd = 0.01, 0.5
    opt = make_optimizer(jnp.float32(lr), jnp.float32(wd), config)
    w, state = w0, opt.init(w0)
    for t in range(1, 201):
        updates, state = opt.update(grads(t), state, w)
        w = optax.apply_updates(w, updates)
    want = _adamw_numpy(w0, grads, 200, lr, wd, 0.9, 0.98, 1e-8)  # the paper's constants, not the config's
    moved = want["a"] - _adamw_numpy(w0, lambda t: {"a": 0 * grads(t)["a"]}, 200, lr, wd, 0.9, 0.98, 1e-8)["a"]
    # float32 against float64: 1.5e-5 of the gradient's share of the move, measured; 1e-3 allowed.
    np.testing.assert_allclose(w["a"] - want["a"], 0, atol=1e-3 * np.abs(moved).max())
    other = _adamw_numpy(w0, grads, 200, lr, wd, 0.9, 0.98, 1e-7)["a"]
    assert np.abs(other - want["a"]).max() > 0.5 * np.abs(moved).max()  # eps is visible at this tolerance


def _small(**overrides):
    config = base_config()
    config.update(dict(p=11, width=16, steps=30, log_every=5, alpha=0.6, xi=0.3, wd=2.0), **overrides)
    return config


def _against_numpy(config, seed: int, padding: int = 0, row_blocks: int = 1, rate: float = 0.0,
                   dropout_program: bool = False):
    """One run of ``make_train`` and the NumPy reference's states at its logged steps,
    the reference building data, weights and dropout masks from the raw draws."""
    p, width = config.p, config.width
    n_train, n_corrupt = split_sizes(config.alpha, config.xi, config.task, p)
    static = static_config(config).as_configdict()
    static.use_dropout = dropout_program or rate > 0
    lane = Lane(jnp.int32(seed), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(config.wd),
                jnp.float32(config.lr), jnp.float32(rate))
    log, final = jax.jit(make_train(static, n_train + padding, row_blocks=row_blocks))(lane)
    data = ref.make_data(*draws.data(seed, p), n_train, n_corrupt, config.task, p)
    pairs = data["order"][:n_train]
    history, train_counts = [], []
    ref.train_reference(ref.init_params(draws.normals(seed, p, width), width, config.batchnorm),
                        data["m"][:n_train], data["n"][:n_train], data["label"][:n_train], config.steps, config.lr,
                        config.wd, activation=config.mlp2.activation, loss=config.loss, history=history, rate=rate,
                        noise=(lambda t: draws.dropout(seed, t, pairs, width)) if rate > 0 else None,
                        train_counts=train_counts)
    data["peak_train_acc"] = max(np.float32(hits) / np.float32(rows) for hits, rows in train_counts)
    return jax.tree.map(np.asarray, (log, final)), data, history[::config.log_every]


def _errors(log, final, data, states, config) -> dict[str, float]:
    """Relative error of every logged metric against the reference (accuracies:
    asserted to be the same counts exactly), and of the final IPR_k and BN scale;
    the peak training accuracy over every step (train mode) exactly the reference's."""
    assert final["peak_train_acc"] == data["peak_train_acc"], (final["peak_train_acc"], data["peak_train_acc"])
    errors = {}
    rel = lambda got, want: float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))  # noqa: E731
    for i, params in enumerate(states):
        for name, (total, size) in ref.counts(params, data, config.mlp2.activation, config.loss).items():
            if size == 0:  # an empty set (no corrupted rows): NaN
                assert np.isnan(log[name][i]), (name, i)
            elif name.endswith("_acc"):  # counts of examples: exactly the reference's
                assert log[name][i] == np.float32(total) / np.float32(size), (name, i, log[name][i] * size, total)
            else:
                errors[name] = max(errors.get(name, 0.0), rel(log[name][i], total / size))
        expected = ref.metrics(params, data, config.mlp2.activation, config.loss)
        for name in ("weight_norm", "norm_U", "norm_V", "norm_W", "ipr"):
            errors[name] = max(errors.get(name, 0.0), rel(log[name][i], expected[name]))
    last = states[-1]
    errors["ipr_hidden"] = rel(final["ipr_hidden"], ref.neuron_ipr(last["U"], last["V"], last["W"]))
    for name, value in final["variables"]["params"].items():  # relative to the largest entry
        errors[f"params.{name}"] = float(np.max(np.abs(value - last[name])) / np.max(np.abs(last[name])))
    return errors


# Largest relative error of a float32 run against the float64 reference over seeds
# 0-9 of every case below: 1.1e-6 (tests/README.md). The tolerance is ~100x that.
RTOL = 1e-4
CASES = {  # name: (config overrides, padding rows, row blocks, dropout rate, dropout program)
    "quad mse": (dict(), 9, 1, 0.0, False),
    "relu ce, row blocks": (dict(mlp2=dict(activation="relu"), loss="ce"), 9, 4, 0.0, False),
    "dropout program, rate 0": (dict(), 9, 1, 0.0, True),
    "dropout 0.3": (dict(), 9, 1, 0.3, True),
    "relu ce, dropout 0.2, row blocks": (dict(mlp2=dict(activation="relu"), loss="ce"), 9, 4, 0.2, True),
    # the reference's BatchNorm evaluates with the training rows' statistics (running
    # statistics: tests/test_minibatch.py)
    "batchnorm": (dict(batchnorm=True, bn_stats="full_batch"), 9, 1, 0.0, False),
    "batchnorm, dropout 0.3": (dict(batchnorm=True, bn_stats="full_batch"), 0, 1, 0.3, True),
    "div, every step, no corruption": (dict(task="div", log_every=1, xi=0.0), 9, 4, 0.0, False),
}


@pytest.mark.parametrize("case", CASES)
def test_every_logged_metric_matches_numpy(case):
    """Whole trajectories: every metric at every logged step, the final IPR_k (and BN
    scale) against the NumPy reference, which builds its data, weights, dropout
    masks and BatchNorm itself. Padding rows: test pairs sit among the training rows."""
    overrides, padding, row_blocks, rate, dropout_program = CASES[case]
    config = _small(**overrides)
    (log, final), data, states = _against_numpy(config, 2, padding, row_blocks, rate, dropout_program)
    assert len(log["train_loss"]) == len(states) == config.steps // config.log_every + 1
    errors = _errors(log, final, data, states, config)
    assert max(errors.values()) < RTOL, errors
    assert log["train_loss"][-1] < 0.9 * log["train_loss"][0]  # it trained: the check is not vacuous
    assert log["train_acc"][-1] > log["train_acc"][0]


def test_dropout_masks_follow_the_step_index():
    # make_train against a hand-written loop in which step t draws its masks from
    # fold_in(dropout key, t): the other dropout tests compare programs with each other.
    config = _small(steps=12, log_every=4)
    static = static_config(config).as_configdict()
    static.use_dropout = True
    n_train, n_corrupt = split_sizes(config.alpha, config.xi, config.task, config.p)
    seed, rate, wd, lr = jnp.int32(1), jnp.float32(0.3), jnp.float32(config.wd), jnp.float32(config.lr)
    log, _ = jax.jit(make_train(static, n_train))(Lane(seed, jnp.int32(n_train), jnp.int32(n_corrupt), wd, lr, rate))
    ds = make_dataset(stream_key(seed, "split"), stream_key(seed, "corrupt"), n_train, n_corrupt,
                      task=config.task, p=config.p, n_max=n_train)
    params = init_params(stream_key(seed, "init"), config.p, config.width)
    opt = make_optimizer(lr, wd, static)
    state, gradient = opt.init(params), jax.jit(make_gradient(static, get_model(static)))
    rows = training_rows(ds, n_train)
    norms = [metrics.weight_norms({k: params[k] for k in "UVW"})["weight_norm"]]
    for t in range(config.steps):
        grads, _ = gradient({"params": params}, rows, jnp.int32(n_train), rate,
                            jax.random.fold_in(stream_key(seed, "dropout"), t))
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if (t + 1) % config.log_every == 0:
            norms.append(metrics.weight_norms({k: params[k] for k in "UVW"})["weight_norm"])
    np.testing.assert_allclose(log["weight_norm"], norms, rtol=1e-6)


def _padded_rows(n_train=50, n_max=72, seed=4):
    """A training set of ``n_train`` rows padded to ``n_max``, with some corrupted labels."""
    return make_dataset(stream_key(seed, "split"), stream_key(seed, "corrupt"), n_train, 10,
                        task="add", p=11, n_max=n_max)


@pytest.mark.parametrize("row_blocks", [1, 5])  # 5 blocks of 15: 50 real rows, 22 masked, 3 padding
@pytest.mark.parametrize("activation,loss", [("quad", "mse"), ("relu", "ce")])
def test_gradient_over_padded_rows_matches_numpy(activation, loss, row_blocks):
    # AdamW hardly sees the scale of a gradient, so the trajectory tests cannot check it: this does.
    config = static_config(_small(mlp2=dict(activation=activation), loss=loss))
    ds = _padded_rows()
    params = init_params(jax.random.key(0), config.p, config.width)
    grads, (sums, _) = jax.jit(make_gradient(config, get_model(config), row_blocks))(
        {"params": params}, training_rows(ds, 72, row_blocks), jnp.sum(ds.train), 0.0, jax.random.key(1))
    m, n, y = (np.asarray(a)[:50] for a in (ds.m, ds.n, ds.label))
    expected_loss, expected = ref.loss_and_grads(jax.tree.map(np.asarray, params), m, n, y, activation, loss)
    for k in expected:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-4, atol=1e-6 * np.abs(expected[k]).max(), err_msg=k)
    # The sums of the logits computed on the way: the training rows, and the padding rows (test pairs).
    np.testing.assert_allclose(sums["train_loss"] / 50, expected_loss, rtol=1e-5)
    hits = np.argmax(ref.forward(jax.tree.map(np.asarray, params), ds.m, ds.n, activation), -1) == np.asarray(ds.label)
    assert int(sums["train_acc"]) == hits[:50].sum() and int(sums["test_acc"]) == hits[50:].sum()
    assert int(sums["corrupt_acc"]) == hits[:10].sum()


@pytest.mark.parametrize("batchnorm,rate", [(False, 0.3), (True, 0.0), (True, 0.3)])
def test_gradient_with_dropout_and_batchnorm_matches_numpy(batchnorm, rate):
    """The gradient's scale, which AdamW hides from the trajectories: dropout's 1/(1−p)
    and BatchNorm's statistics (differentiated) against the hand-written NumPy ones,
    the masks rebuilt from the step key's uniforms."""
    config = static_config(_small(batchnorm=batchnorm)).as_configdict()
    config.use_dropout = True
    ds = _padded_rows()
    params = init_params(jax.random.key(0), config.p, config.width, batchnorm)
    if batchnorm:  # not the initial ones and zeros, so that every term of the gradient shows
        params["bn_scale"] = 1 + 0.3 * jax.random.normal(jax.random.key(2), (config.width,))
        params["bn_shift"] = 0.1 * jax.random.normal(jax.random.key(3), (config.width,))
    key = jax.random.key(1)
    model = get_model(config)
    variables = {"params": params, **({"batch_stats": model.init(key)["batch_stats"]} if batchnorm else {})}
    grads, _ = jax.jit(make_gradient(config, model))(variables, training_rows(ds, 72), jnp.sum(ds.train),
                                                     jnp.float32(rate), key)
    m, n, y = (np.asarray(a)[:50] for a in (ds.m, ds.n, ds.label))
    noise = draws.dropout_from_key(key, np.asarray(ds.order)[:50], config.width)
    _, expected = ref.loss_and_grads(jax.tree.map(np.asarray, params), m, n, y, rate=rate, noise=noise)
    assert set(grads) == set(expected)
    for k in expected:  # measured: 6.4e-7 of the largest entry at most
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-4, atol=1e-5 * np.abs(expected[k]).max(), err_msg=k)


def test_blocked_gradient_with_dropout_equals_one_block():
    config = static_config(_small()).as_configdict()
    config.use_dropout = True
    ds = _padded_rows()
    params = init_params(jax.random.key(0), config.p, config.width)
    args = (jnp.sum(ds.train), jnp.float32(0.3), jax.random.key(1))
    model, variables = get_model(config), {"params": params}
    one, _ = make_gradient(config, model)(variables, training_rows(ds, 72), *args)
    blocked, _ = make_gradient(config, model, 4)(variables, training_rows(ds, 72, 4), *args)
    no_dropout, _ = make_gradient(config, model)(variables, training_rows(ds, 72), args[0], jnp.float32(0.0), args[2])
    for k in one:
        np.testing.assert_allclose(blocked[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)
        assert not np.allclose(one[k], no_dropout[k])  # the masks are really applied


def _grid():
    config = _small(steps=40, log_every=10)
    config.sweep.alpha = (0.4, 0.6)  # lanes of α = 0.4 are padded to the 0.6 training set
    config.sweep.dropout = (0.0, 0.3)
    config.sweep.wd = (0.0, 3.0)
    config.sweep.seed = (0, 1)
    return config


@pytest.mark.parametrize("batchnorm,blocked", [(False, False), (True, False), (False, True)])
def test_a_lane_in_the_sweep_equals_the_same_run_alone(batchnorm, blocked, monkeypatch):
    config = _grid()
    config.batchnorm = batchnorm
    # blocked: one lane per device, where each device runs train without vmap, the
    # gradient over blocks of rows and the readout product padded to 16 columns; the
    # lane alone is one block, p columns wide
    if blocked:
        monkeypatch.setattr(layouts, "CPU_BLOCK_BYTES", 1024)
        monkeypatch.setattr(layouts, "readout_columns", lambda rules, p, lanes_per_device: 16)
        assert layouts.row_blocks("cpu", 72, config.width, 1, False) == 5
    compiled_before = set(programs._PROGRAMS)
    ds = run_sweep(config, progress=False, log=lambda s: None, lanes_per_device=1 if blocked else None)
    if blocked:  # the sweep really compiled a program with 5 row blocks and 16 columns
        new = set(programs._PROGRAMS) - compiled_before
        assert any(key.layout.row_blocks == 5 and key.layout.columns == 16 for key in new)
    for sel in (dict(alpha=0.4, dropout=0.3, wd=3.0, seed=1), dict(alpha=0.6, dropout=0.0, wd=0.0, seed=0)):
        alone_config = _small(steps=40, log_every=10, batchnorm=batchnorm, **sel)
        n_train, n_corrupt = split_sizes(sel["alpha"], config.xi, config.task, config.p)
        lane = Lane(jnp.int32(sel["seed"]), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(sel["wd"]),
                    jnp.float32(config.lr), jnp.float32(sel["dropout"]))
        alone_static = static_config(alone_config).as_configdict()
        alone_static.use_dropout = True  # a rate of 0 must then keep every unit
        log, final = jax.jit(make_train(alone_static, n_train))(lane)  # unpadded, no vmap
        final.update(flat_variables(final.pop("variables")), **{OPT_STATE: pack_opt_state(jax.tree.map(lambda x: np.asarray(x)[None], final.pop("opt_state")))[0]})
        assert "params.U" in final and ("batch_stats.var" in final) == batchnorm
        cell = ds.sel(sel)
        for name, values in log.items():
            np.testing.assert_allclose(cell[name].values, values, rtol=1e-4, atol=1e-6, err_msg=name)
        for name, values in final.items():
            np.testing.assert_allclose(cell[name].values, values, rtol=1e-4, atol=1e-6, err_msg=name)


def test_row_blocks_only_for_one_lane_per_cpu_device_without_batchnorm():
    assert layouts.row_blocks("cpu", 4704, 500, 1, False) == 9  # 523 rows × 500 × 4 B ≈ 1 MiB a block
    assert layouts.row_blocks("cpu", 480, 128, 1, False) == 1  # the activations fit in cache
    assert layouts.row_blocks("cpu", 4704, 500, 4, False) == 1  # batched lanes gained nothing
    assert layouts.row_blocks("gpu", 4704, 500, 1, False) == 1
    assert layouts.row_blocks("cpu", 4704, 500, 1, True) == 1
    with pytest.raises(ValueError, match="row_blocks=2"):
        make_train(static_config(_small(batchnorm=True)), 72, row_blocks=2)


def test_readout_is_padded_by_a_fixed_rule():
    """No timing: the measured table of benchmarks/README.md as a rule of p alone."""
    padded = {p: layouts.readout_columns("cpu", p, 1) for p in (11, 17, 23, 29, 31, 41, 47, 53, 61, 64, 97)}
    assert padded == {11: 11, 17: 17, 23: 23, 29: 32, 31: 32, 41: 48, 47: 48, 53: 56, 61: 64, 64: 64, 97: 97}
    assert layouts.readout_columns("cpu", 31, 4) == 31  # batched lanes: not measured
    assert layouts.readout_columns("gpu", 31, 1) == layouts.readout_columns("tpu", 31, 1) == 31


@pytest.mark.parametrize("batch_size", [0, 16])
def test_a_run_cut_into_segments_is_the_whole_run(batch_size):
    """start, advance over uneven segments, finish: bit for bit the whole run (dropout
    keys and mini-batch orders follow the step index, not the program call), the
    peak training accuracy included (wd 50: the weights collapse, so it is reached in
    an early segment and must be carried through the later ones)."""
    full = _small(steps=30, log_every=3, dropout=0.1, batch_size=batch_size)  # 10 logged blocks
    config = static_config(full)
    n_train, n_corrupt = split_sizes(full.alpha, full.xi, full.task, full.p)
    run = make_run(config, n_train)
    for wd in (1.0, 50.0):
        lane = Lane(jnp.int32(0), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(wd),
                    jnp.float32(0.01), jnp.float32(0.1))
        state = jax.jit(run.start)(lane)
        assert np.isnan(state.log["train_loss"]).all() and state.log["train_loss"].shape == (11,)
        for first, blocks in [(0, 4), (4, 4), (8, 2)]:
            state = jax.jit(run.advance, static_argnums=3)(lane, state, jnp.int32(first), blocks)
        cut_log, cut_final = jax.jit(run.finish)(lane, state)
        log, final = jax.jit(make_train(config, n_train))(lane)
        for name in log:
            np.testing.assert_array_equal(cut_log[name], log[name], err_msg=name)
        assert set(cut_final) == set(final)
        for a, b in zip(jax.tree.leaves(cut_final), jax.tree.leaves(final)):
            np.testing.assert_array_equal(a, b)


def test_only_long_chunks_run_in_segments(tiny, monkeypatch):
    assert layouts.segment_blocks("cpu", 2e12, 100) == 25 and layouts.segment_blocks("cpu", 1e11, 100) == 100
    assert layouts.segment_blocks("cpu", 1e11, 100, every=4) == 4 and layouts.segment_blocks("gpu", 2e12, 100) == 100
    logged = []
    whole = run_sweep(tiny, progress=False, log=logged.append)  # estimated far below SEGMENT_SECONDS
    assert not any("compiled advance" in line for line in logged)
    monkeypatch.setattr(layouts, "SEGMENT_SECONDS", 1e-12)  # every chunk "long": one call per logged block
    logged.clear()
    cut = run_sweep(tiny, progress=False, log=logged.append)
    assert any("advance of 1 logged blocks" in line for line in logged), logged
    for name in ("train_loss", "test_acc", "weight_norm", "ipr_hidden", "params.U"):
        np.testing.assert_array_equal(cut[name].values, whole[name].values, err_msg=name)


def test_rate_zero_dropout_equals_no_dropout_program():
    config = _small()
    n_train, n_corrupt = split_sizes(config.alpha, config.xi, config.task, config.p)
    lane = Lane(jnp.int32(0), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(1.0),
                jnp.float32(0.01), jnp.float32(0.0))
    plain = static_config(config)
    with_masks = plain.as_configdict()
    with_masks.use_dropout = True
    a, _ = jax.jit(make_train(plain, n_train))(lane)
    b, _ = jax.jit(make_train(with_masks, n_train))(lane)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)


def test_second_sweep_with_other_values_does_not_recompile(tiny):
    run_sweep(tiny, progress=False, log=lambda s: None)
    compiles = []
    listener = lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        tiny.sweep.wd = (1.0, 7.0)
        tiny.sweep.xi = (0.1, 0.2)
        tiny.sweep.seed = (5, 6)
        ds = run_sweep(tiny, progress=False, log=lambda s: None)
        assert compiles == []
        assert list(ds.wd.values) == [1.0, 7.0] and bool(ds.done.all())
        tiny.alpha = 0.5  # a new training-set size is a new shape: the listener must see it
        run_sweep(tiny, progress=False, log=lambda s: None)
        assert compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _layout(plan) -> tuple[int, int]:
    """(lanes per chunk, number of chunks) of a one-group plan."""
    assert len(plan.compile_groups) == 1
    return len(plan.chunks[0].lanes), len(plan.chunks)


def test_chunks_are_balanced_multiples_of_the_device_count(tiny):
    tiny.sweep = {"wd": (0.0, 2.5, 5.0), "xi": (0.0, 0.15, 0.3)}  # 9 lanes
    assert _layout(make_plan(tiny, Resources(lanes_per_device=4, n_devices=2))) == (6, 2)  # 2 chunks of 6 (3 padded), not 2 of 8
    assert _layout(make_plan(tiny, Resources(lanes_per_device=8, n_devices=2))) == (10, 1)
    assert _layout(make_plan(tiny, Resources(lanes_per_device=4, n_devices=1))) == (3, 3)
    budget = 2.5 * lane_bytes(tiny, 72) / 2**30  # 2 lanes per device (n_train = 72)
    plan = make_plan(tiny, Resources(memory_gb=budget, n_devices=2))
    assert _layout(plan) == (4, 3)
    # Every lane is in exactly one chunk; padding repeats a lane of the chunk's group.
    real = np.concatenate([c.lanes[:c.count] for c in plan.chunks])
    assert sorted(real.tolist()) == list(range(9))


def test_chunked_grid_equals_one_chunk(tiny):
    tiny.sweep = {"wd": (0.0, 2.5, 5.0), "xi": (0.0, 0.15, 0.3)}  # 9 lanes: padded chunks
    one = run_sweep(tiny, progress=False, log=lambda s: None, lanes_per_device=9)
    assert len(make_plan(tiny, Resources(1.0, 9, len(jax.devices()))).chunks) == 1
    # A memory budget of 3.5 lanes per device: 3 lanes per device.
    budget = 3.5 * lane_bytes(tiny, 72) / 2**30
    plan = make_plan(tiny, Resources(memory_gb=budget, n_devices=len(jax.devices())))
    size, n_chunks = _layout(plan)
    assert n_chunks > 1
    if len(jax.devices()) == 2:
        assert n_chunks * size > plan.n_lanes  # the last chunk is padded
    chunked = run_sweep(tiny, memory_gb=budget, progress=False, log=lambda s: None, lanes_per_device=9)
    for name in ("train_loss", "test_acc", "ipr_hidden", "phase"):
        np.testing.assert_allclose(chunked[name].values, one[name].values, rtol=1e-5, err_msg=name)


def _brute_force_work(sizes: np.ndarray, counts: np.ndarray, n_groups: int, n_devices: int) -> float:
    """Least padded work over every split of the sorted sizes into n_groups ranges:
    rows padded to a group's largest size, lanes to a multiple of the device count."""
    best = np.inf
    for cuts in itertools.combinations(range(1, len(sizes)), n_groups - 1):
        bounds = zip([0, *cuts], [*cuts, len(sizes)])
        best = min(best, sum(sizes[j - 1] * n_devices * -(-counts[i:j].sum() // n_devices) for i, j in bounds))
    return best


@pytest.mark.parametrize("n_devices", [1, 2, 16])
def test_compile_groups_are_optimal_ranges_of_training_set_sizes(n_devices):
    rng = np.random.default_rng(n_devices)
    for _ in range(20):
        n_train = rng.choice(rng.integers(10, 1000, size=7), size=40)
        sizes, counts = np.unique(n_train, return_counts=True)
        allowed = n_train.sum() * (1 + PADDING_TOLERANCE)
        for max_groups in (1, 2, 3, 4):
            groups = compile_groups(n_train, max_groups, n_devices)
            assert sorted(np.concatenate(groups).tolist()) == list(range(40))  # a partition
            for lo, hi in zip(groups, groups[1:]):
                assert n_train[lo].max() < n_train[hi].min()  # ranges of sizes, smallest first
            n = len(groups)
            work = sum(n_train[g].max() * n_devices * -(-len(g) // n_devices) for g in groups)
            fewer = [_brute_force_work(sizes, counts, m, n_devices) for m in range(1, n)]
            assert work == _brute_force_work(sizes, counts, n, n_devices)  # optimal for its count
            if work <= allowed:  # the fewest groups within the tolerance
                assert all(w > allowed for w in fewer)
            else:  # none within it: the least work of any allowed count
                more = range(n + 1, min(max_groups, len(sizes)) + 1)
                assert all(work <= _brute_force_work(sizes, counts, m, n_devices) for m in more)
                assert all(work < w for w in fewer)
    assert len(compile_groups(np.full(5, 100), 4)) == 1  # one size, one program
    assert [len(g) for g in compile_groups(np.array([100, 104, 108, 200]), 4)] == [3, 1]
    # 17 lanes of different sizes on 32 devices: one chunk beats groups of padded chunks.
    assert len(compile_groups(np.arange(100, 1800, 100), 8, n_devices=32)) == 1


def test_alpha_grid_in_compile_groups_equals_one_group(tiny, tmp_path):
    # α is the fastest axis: a group's lanes are scattered over the store's lane order.
    tiny.sweep = {"xi": (0.0, 0.2), "alpha": (0.3, 0.45, 0.6, 0.75)}
    tiny.compile_groups = 8
    plan = make_plan(tiny, Resources(n_devices=len(jax.devices())))
    assert len(plan.compile_groups) > 1  # padding all to α 0.75 would waste ~40%
    grouped = run_sweep(tiny, out=str(tmp_path), progress=False, log=lambda s: None)
    assert bool(grouped.done.all())
    again = run_sweep(tiny, out=str(tmp_path), progress=False, log=lambda s: None)  # all done: a no-op
    np.testing.assert_array_equal(again.train_loss.values, grouped.train_loss.values)
    tiny.compile_groups = 1
    one = run_sweep(tiny, progress=False, log=lambda s: None)
    for name in ("train_loss", "test_acc", "corrupt_acc", "ipr_hidden"):
        np.testing.assert_allclose(grouped[name].values, one[name].values, rtol=2e-4, atol=1e-6, err_msg=name)
    assert (grouped.phase.values != one.phase.values).sum() <= 1  # rounding may flip a boundary run


def test_diverged_runs_are_marked(tiny):
    tiny.sweep.lr = (0.01, 1e4)  # with wd = 5 each step multiplies w by 1 − lr·wd = −49999
    ds = run_sweep(tiny, progress=False, log=lambda s: None)
    assert not np.isfinite(ds.weight_norm.sel(lr=1e4, wd=5.0).isel(step=-1)).any()
    assert (ds.phase.sel(lr=1e4, wd=5.0) == 6).all()  # Diverged
    assert (ds.phase.sel(lr=0.01) != 6).all()


def test_batchnorm_learns_a_scale_per_neuron(tiny):
    tiny.batchnorm = True
    ds = run_sweep(tiny, progress=False, log=lambda s: None)
    scale = ds["params.bn_scale"]
    assert scale.sizes["hidden"] == tiny.width
    assert np.isfinite(scale.values).all() and np.isfinite(ds.train_loss.values).all()
    assert float(np.abs(scale - 1).max()) > 1e-3  # it moved from its init

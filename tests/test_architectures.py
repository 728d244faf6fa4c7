"""The 3-layer ReLU MLP and the 1-layer Transformer (flax): init statistics, forwards
against plain NumPy, IPR by group against NumPy FFTs, a lane in the sweep against
the run alone, all three models in one store, and learning modular addition."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grok_jax.config import base_config, check_config, static_config
from grok_jax.data import make_dataset, split_sizes, training_rows
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from grok_jax.models import flat_variables, get_model
from grok_jax.train import OPT_STATE, Lane, inputs, make_train, pack_opt_state

QUIET = dict(progress=False, log=lambda s: None)


def _config(model, **fields):
    config = base_config()
    config.update({**dict(model=model, p=11, width=16, steps=40, log_every=10, alpha=0.6, xi=0.2), **fields})
    return config


def _rows(p=11, n_train=40, n_max=50):
    ds = make_dataset(jax.random.key(1), jax.random.key(2), n_train, 5, task="add", p=p, n_max=n_max)
    return inputs(training_rows(ds, n_max))


def _numpy_ipr(x, axis):
    power = np.abs(np.fft.rfft(np.asarray(x, np.float64), axis=axis)) ** 2
    return (power ** 2).sum(axis) / power.sum(axis) ** 2


@pytest.mark.parametrize("parameterization", ["standard", "lazy"])
def test_mlp3_shapes_and_init_statistics(parameterization):
    p, n = 31, 512
    model = get_model(static_config(_config("mlp3", p=p, width=n, mlp3=dict(parameterization=parameterization))))
    params = model.init(jax.random.key(0))["params"]
    assert {k: v.shape for k, v in params.items()} == {"U": (p, n), "V": (p, n), "W2": (n, n), "W3": (n, p)}
    lazy = (2 / n ** (2 / 3)) ** 0.5
    want = {"U": (1 / p) ** 0.5, "V": (1 / p) ** 0.5, "W2": (2 / n) ** 0.5, "W3": (2 / n) ** 0.5}
    for name, w in params.items():
        std = lazy if parameterization == "lazy" else want[name]
        assert abs(float(jnp.mean(w))) < 0.02 * std * 10 and float(jnp.std(w)) == pytest.approx(std, rel=0.03), name


def test_transformer_shapes_and_init_statistics():
    p, d = 31, 128
    model = get_model(static_config(_config("transformer", p=p, width=d)))
    flat = flat_variables(model.init(jax.random.key(0)))
    fan_in = {"params.embed": None, "params.pos": None, "params.query.kernel": d, "params.key.kernel": d,
              "params.value.kernel": d, "params.out.kernel": d, "params.mlp_in.kernel": d,
              "params.mlp_out.kernel": 4 * d, "params.readout.kernel": d}
    assert set(flat) == set(fan_in) == set(model.param_dims)
    for path, w in flat.items():
        assert w.shape == tuple({"operand": p, "embed": d, "attn": d, "mlp": 4 * d, "logit": p, "position": 2}[k]
                                for k in model.param_dims[path])
        std = 1.0 if fan_in[path] is None else fan_in[path] ** -0.5
        assert float(jnp.std(w)) == pytest.approx(std, rel=0.1 if w.size < 1000 else 0.03), path


def _numpy_transformer(flat, m, n, heads, layernorm=False, tied=False):
    """The authors' block over both positions, in float64, read at the last one."""
    f = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    embed, pos = f["params.embed"], f["params.pos"]
    d = embed.shape[1]
    dh = d // heads
    x = np.stack([embed[m], embed[n]], axis=1) + pos  # (rows, 2, d)

    def norm(y, scale):
        mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        return (y - mu) / np.sqrt(var + 1e-5) * scale

    a = norm(x, f["params.ln1.scale"]) if layernorm else x
    q, k, v = (a @ f[f"params.{name}.kernel"] for name in ("query", "key", "value"))
    q, k, v = (t.reshape(len(m), 2, heads, dh) for t in (q, k, v))
    scores = np.einsum("bshc,bthc->bhst", q, k) / dh
    att = np.exp(scores - scores.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("bhst,bthc->bshc", att, v).reshape(len(m), 2, d) @ f["params.out.kernel"]
    x = x + o
    b = norm(x, f["params.ln2.scale"]) if layernorm else x
    x = x + np.maximum(b @ f["params.mlp_in.kernel"], 0) @ f["params.mlp_out.kernel"]
    readout = embed.T if tied else f["params.readout.kernel"]
    return (x @ readout / d)[:, -1]


@pytest.mark.parametrize("heads,layernorm,tied", [(4, False, False), (2, True, False), (1, False, True)])
def test_transformer_forward_equals_numpy(heads, layernorm, tied):
    model = get_model(static_config(_config("transformer", width=32, transformer=dict(
        heads=heads, layernorm=layernorm, tie_embeddings=tied))))
    variables = model.init(jax.random.key(3))
    if layernorm:  # random scales, so that they matter
        variables["params"]["ln1"]["scale"] = jax.random.normal(jax.random.key(4), (32,))
        variables["params"]["ln2"]["scale"] = jax.random.normal(jax.random.key(5), (32,))
    x = _rows()
    logits, state = model.apply(variables, x, train=False)
    want = _numpy_transformer(flat_variables(variables), np.asarray(x.m), np.asarray(x.n), heads, layernorm, tied)
    np.testing.assert_allclose(logits, want, rtol=2e-4, atol=2e-6)
    assert state == {}


def test_mlp3_forward_equals_numpy_with_batchnorm_and_a_mask():
    model = get_model(static_config(_config("mlp3", batchnorm=True)))
    variables = model.init(jax.random.key(3))
    f = {k: np.asarray(v, np.float64) for k, v in flat_variables(variables).items()}
    x = _rows()
    w = np.asarray(x.weight)
    mask = {"hidden": jnp.arange(16) % 3 != 0, "hidden2": jnp.ones(16)}
    logits, state = model.apply(variables, x, train=True, neuron_mask=jax.tree.map(jnp.float32, mask))
    h = np.maximum(f["params.U"][np.asarray(x.m)] + f["params.V"][np.asarray(x.n)], 0)
    new_stats = {}
    for i in (1, 2):
        mean = h[w].mean(0)
        var = h[w].var(0)
        new_stats[i] = (0.9 * f[f"batch_stats.bn{i}.mean"] + 0.1 * mean,
                        0.9 * f[f"batch_stats.bn{i}.var"] + 0.1 * var * w.sum() / (w.sum() - 1))
        h = (h - mean) / np.sqrt(var + 1e-5) * f[f"params.bn{i}.scale"] + f[f"params.bn{i}.shift"]
        h = h * np.asarray(mask["hidden" if i == 1 else "hidden2"], np.float64)
        h = np.maximum(h @ f["params.W2"], 0) if i == 1 else h
    np.testing.assert_allclose(logits, h @ f["params.W3"], rtol=2e-4, atol=2e-6)
    for i in (1, 2):
        np.testing.assert_allclose(state["batch_stats"][f"bn{i}"]["mean"], new_stats[i][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(state["batch_stats"][f"bn{i}"]["var"], new_stats[i][1], rtol=1e-4, atol=1e-6)


def test_ipr_by_group_equals_numpy():
    mlp3 = get_model(static_config(_config("mlp3")))
    params = mlp3.init(jax.random.key(0))["params"]
    got = mlp3.neuron_ipr(params)
    np.testing.assert_allclose(got["hidden"], (_numpy_ipr(params["U"], 0) + _numpy_ipr(params["V"], 0)) / 2,
                               rtol=1e-4)
    np.testing.assert_allclose(got["hidden2"], _numpy_ipr(params["W3"], 1), rtol=1e-4)
    tf = get_model(static_config(_config("transformer")))
    params = tf.init(jax.random.key(0))["params"]
    got = tf.neuron_ipr(params)
    embed = np.asarray(params["embed"], np.float64)
    np.testing.assert_allclose(got["embed"], _numpy_ipr(embed, 0), rtol=1e-4)
    seen_in = embed @ np.asarray(params["mlp_in"]["kernel"], np.float64)
    seen_out = np.asarray(params["mlp_out"]["kernel"], np.float64) @ np.asarray(params["readout"]["kernel"])
    np.testing.assert_allclose(got["mlp"], (_numpy_ipr(seen_in, 0) + _numpy_ipr(seen_out, 1)) / 2, rtol=1e-4)


@pytest.mark.parametrize("model,fields", [("mlp3", {"batchnorm": True}), ("transformer", {})])
def test_a_lane_in_the_sweep_equals_the_same_run_alone(model, fields):
    config = _config(model, **fields)
    config.sweep.alpha = (0.4, 0.6)  # α 0.4 lanes are padded to the 0.6 training set
    config.sweep.dropout = (0.0, 0.3)
    config.sweep.seed = (0, 1)
    ds = run_sweep(config, **QUIET)
    sel = dict(alpha=0.4, dropout=0.3, seed=1)
    n_train, n_corrupt = split_sizes(0.4, config.xi, config.task, config.p)
    alone = _config(model, **fields)
    alone.update(dict(alpha=0.4, dropout=0.3, seed=1))
    static = static_config(alone).as_configdict()
    lane = Lane(jnp.int32(1), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(config.wd),
                jnp.float32(config.lr), jnp.float32(0.3))
    log, final = jax.jit(make_train(static, n_train))(lane)  # unpadded, no vmap
    final.update(flat_variables(final.pop("variables")), **{OPT_STATE: pack_opt_state(jax.tree.map(lambda x: np.asarray(x)[None], final.pop("opt_state")))[0]})
    cell = ds.sel(sel)
    for name, values in {**log, **final}.items():
        np.testing.assert_allclose(cell[name].values, values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.allclose(ds.sel(alpha=0.4, dropout=0.0, seed=1).train_loss, cell.train_loss)  # dropout acts


def test_three_models_in_one_store(tmp_path):
    config = _config("mlp2", steps=20)
    config.sweep.model = ("mlp2", "mlp3", "transformer")
    config.sweep.wd = (0.0, 1.0)
    ds = run_sweep(config, out=str(tmp_path), **QUIET)
    assert list(ds.model.values) == ["mlp2", "mlp3", "transformer"] and bool(ds.done.all())
    assert np.isnan(ds.ipr_embed.sel(model="mlp2")).all() and np.isfinite(ds.ipr_embed.sel(model="transformer")).all()
    assert np.isnan(ds.norm_W2.sel(model="transformer")).all() and np.isfinite(ds.norm_W2.sel(model="mlp3")).all()
    assert np.isfinite(ds.ipr.sel(model="transformer")).all()


def test_model_options_are_checked():
    for fields, needle in [({"model": "transformer", "batchnorm": True}, "has no BatchNorm option"),
                           ({"model": "transformer", "transformer": {"heads": 3}},
                            "transformer.heads=3 does not divide width=16"),
                           ({"model": "transformer", "transformer": {"heads": 0}}, "transformer.heads=0 must be >= 1"),
                           ({"mlp3": {"parameterization": "wide"}}, "mlp3.parameterization='wide' is not valid"),
                           ({"transformer": {"head": 2}}, "unknown config field 'transformer.head' (did you mean "
                            "transformer.heads?)"),
                           ({"heads": 2}, "unknown config field 'heads' (did you mean transformer.heads?)")]:
        config = _config("mlp2")
        config.update(fields)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check_config(config)
    config = _config("mlp3")
    config.sweep.activation = ("quad", "relu")
    with pytest.raises(ConfigError, match="does nothing for model 'mlp3'"):
        check_config(config)
    config = _config("transformer", width=32)  # the heads checked in each static group: width 30 fails
    config.sweep.width = (32, 30)
    with pytest.raises(ConfigError, match="transformer.heads=4 does not divide width=30"):
        check_config(config)


def test_the_transformer_learns_modular_addition():
    """p 23, d 32, α 0.9, no corruption, full-batch AdamW lr 0.002, wd 3: test accuracy
    ≥ 95% within 1500 steps (measured: 96% at step 750, 100% from 1250). A CPU-sized
    stand-in for the paper's p 97, d 128, 3000 steps at lr 0.001."""
    config = _config("transformer", p=23, width=32, xi=0.0, alpha=0.9, lr=0.002, wd=3.0, steps=1500,
                     log_every=250)
    ds = run_sweep(config, **QUIET)
    assert float(ds.test_acc.isel(step=-1)) >= 0.95, ds.test_acc.values
    assert float(ds.test_acc.isel(step=0)) < 0.2


def test_each_model_starts_from_its_papers_settings():
    """base_config(scale, model) and the command line's --config.model: the model's own
    lr, steps and width, except where the grid or the user set them."""
    from grok_jax.config import load_config, switch_model
    from grok_jax.sweep import given_fields

    paper = base_config("paper", model="transformer")
    assert (paper.model, paper.width, paper.lr, paper.steps, paper.p) == ("transformer", 128, 0.001, 3000, 97)
    assert (base_config("paper", model="mlp3").steps, base_config("paper").steps, base_config().lr) == (5000, 2000, 0.01)
    argv = ["--grid=wd_xi", "--config.steps=500", "-config.sweep.xi=(0.0,)", "--config.model", "transformer"]
    assert given_fields(argv) == {"steps", "sweep.xi", "model"}
    config = load_config("wd_xi")
    config.model, config.steps = "transformer", 500
    assert switch_model(config, load_config("wd_xi"), "small", given_fields(argv)) == {"width": 32, "lr": 0.002}
    assert (config.width, config.lr, config.steps) == (32, 0.002, 500)
    tiny = load_config("tiny")  # sets its own width and steps: only lr is the model's
    tiny.model = "transformer"
    assert switch_model(tiny, load_config("tiny"), "small", set()) == {"lr": 0.002}
    tiny.model, tiny.sweep.lr = "transformer", (0.01, 0.02)  # a swept lr stays swept
    assert switch_model(tiny, load_config("tiny"), "small", set()) == {}
    with pytest.raises(ConfigError, match="model='cnn' is not valid; valid: mlp2, mlp3, transformer"):
        base_config(model="cnn")

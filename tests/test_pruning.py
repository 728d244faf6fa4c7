"""Pruning by IPR from a results store, against the stored metrics and NumPy."""

import draws
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
import xarray as xr
import zarr

from grok_jax import pruning
from grok_jax.config import load_config, static_config
from grok_jax.data import split_sizes
from grok_jax.errors import ConfigError
from grok_jax.execution import run_sweep
from grok_jax.results import load_results
from grok_jax.models.mlp2 import analytic_solution, neuron_ipr
from grok_jax.train import Lane


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny grid (2 wd × 2 ξ × 2 seeds, p 11, N 32), trained longer so that it learns."""
    config = load_config("tiny")
    config.steps = 200
    out = tmp_path_factory.mktemp("pruning")
    return run_sweep(config, out=str(out), progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def curves(store):
    return pruning.prune(store, random=3)


def test_pruning_nothing_is_the_stored_network_and_pruning_all_leaves_zero_logits(store, curves):
    last = store.isel(step=-1)
    for name in pruning.PRUNED_METRICS:
        kept = curves[name].isel(fraction=0)  # every order alike
        np.testing.assert_allclose(kept, kept.isel(order=0).broadcast_like(kept), rtol=0, atol=0)
        np.testing.assert_allclose(kept.isel(order=0), last[name], rtol=1e-5, err_msg=name)
    gone = curves.isel(fraction=-1)
    for name in ("train_acc", "test_acc", "clean_acc"):  # all-zero logits: every prediction a tie, wrong
        assert (gone[name] == 0).all(), name
    np.testing.assert_allclose(gone.train_loss, 1 / 11, rtol=1e-6)  # MSE of zero logits: 1/p
    assert curves.sizes["fraction"] == 33 and list(curves.order.values) == [
        "low", "high", "random 0", "random 1", "random 2"]


def test_each_pruned_network_equals_numpy_with_those_neurons_zeroed(store, curves):
    """The oracle zeroes the neurons' U and V columns and W rows (the paper's
    pruning), ranks by its own IPR, and rebuilds the lane's data from the raw draws."""
    config = load_config("tiny")
    for sel in (dict(seed=1, wd=5.0, xi=0.3), dict(seed=0, wd=0.0, xi=0.0)):
        cell = store.sel(sel)
        params = {k: np.asarray(cell[f"params.{k}"].values, np.float64) for k in "UVW"}
        ipr = ref.neuron_ipr(params["U"], params["V"], params["W"])
        n_train, n_corrupt = split_sizes(config.alpha, sel["xi"], config.task, config.p)
        data = ref.make_data(*draws.data(sel["seed"], config.p), n_train, n_corrupt, config.task, config.p)
        for order_name, order in (("low", np.argsort(ipr, kind="stable")), ("high", np.argsort(-ipr, kind="stable"))):
            for count in (4, 16, 28):
                zeroed = {k: v.copy() for k, v in params.items()}
                gone = order[:count]
                zeroed["U"][:, gone] = zeroed["V"][:, gone] = 0.0
                zeroed["W"][gone, :] = 0.0
                want = ref.counts(zeroed, data)
                got = curves.sel(sel).sel(order=order_name).isel(fraction=count)
                for name, (total, size) in want.items():
                    if size == 0:
                        assert np.isnan(got[name]), name
                    elif name.endswith("_acc"):  # exact counts
                        assert int(round(float(got[name]) * size)) == total, (sel, order_name, count, name)
                    else:
                        np.testing.assert_allclose(got[name], total / size, rtol=1e-4, err_msg=name)


def test_orders_rank_by_ipr_and_random_orders_are_permutations():
    ipr = jnp.array([0.3, jnp.nan, 0.9, 0.1, 0.5])
    orders = np.asarray(pruning.pruning_orders(ipr, jax.random.key(0), random=2))
    assert orders[0].tolist() == [1, 3, 0, 4, 2]  # no IPR (all-zero weights) counts as the lowest
    assert orders[1].tolist() == [2, 4, 0, 3, 1]
    assert all(sorted(o) == list(range(5)) for o in orders[2:]) and orders[2].tolist() != orders[3].tolist()
    masks = np.asarray(pruning.pruning_masks(jnp.asarray(orders[0]), jnp.array([0, 2, 5])))
    assert masks.tolist() == [[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]]


def test_pruning_the_analytic_solutions_zeroed_neurons_keeps_it_perfect():
    """The periodic solution with half its neurons' weights zero: those have no IPR,
    go first in low-IPR-first order, and pruning them changes nothing."""
    config = static_config(load_config("tiny"))
    p, width = config.p, 512
    config = config.as_configdict()
    config.width = width
    params = analytic_solution(jax.random.key(0), p, width)
    dead = jnp.arange(width) % 2 == 0
    params = {k: jnp.where(dead[None, :] if k != "W" else dead[:, None], 0.0, v) for k, v in params.items()}
    ipr = neuron_ipr(params)
    assert bool(jnp.isnan(ipr[dead]).all()) and bool((ipr[~dead] > 0.99).all())
    order = pruning.pruning_orders(ipr, jax.random.key(1))[0]
    counts = jnp.array([0, width // 2, width // 2 + 64])
    n_train, _ = split_sizes(0.5, 0.0, "add", p)
    lane = Lane(jnp.int32(0), jnp.int32(n_train), jnp.int32(0), jnp.float32(0), jnp.float32(0.01), jnp.float32(0))
    out = pruning.make_evaluate(config, n_train)(lane, {"params": params}, order[None], counts)
    out = {name: v[0] for name, v in out.items()}
    np.testing.assert_allclose(np.stack([out["train_acc"][:2], out["test_acc"][:2]]), 1.0, rtol=1e-6)  # all right
    assert float(out["test_loss"][2]) > float(out["test_loss"][1])  # pruning live neurons shows


def test_bad_pruning_requests_are_named(store):
    with pytest.raises(ConfigError, match=r"fractions=\[1.5\]"):
        pruning.prune(store, fractions=[1.5])
    with pytest.raises(ConfigError, match="random=-1"):
        pruning.prune(store, random=-1)


def test_a_selection_of_cells_gives_their_curves(store, curves):
    """Only the selected cells are evaluated, in any order of their values; lanes are
    evaluated in chunks (here of one lane, the last chunk padded) with the same numbers."""
    some = pruning.prune(store.sel(xi=[0.3, 0.0], wd=5.0), random=3, memory_gb=1e-4)
    assert dict(some.sizes) == {"seed": 2, "xi": 2, "order": 5, "fraction": 33}
    xr.testing.assert_allclose(some, curves.sel(xi=[0.3, 0.0], wd=5.0), rtol=1e-6)
    one = pruning.prune(store.sel(xi=0.3, wd=5.0, seed=1), fractions=[0.0, 0.5])
    xr.testing.assert_allclose(one, curves.sel(xi=0.3, wd=5.0, seed=1, order=["low", "high"]).isel(
        fraction=[0, 16]), rtol=1e-6)


def test_static_groups_and_unfinished_lanes(tmp_path):
    config = load_config("tiny")
    config.sweep = {"width": (16, 32), "xi": (0.0, 0.3)}
    config.batchnorm = True  # the mask acts after BatchNorm: a pruned neuron is gone
    ds = run_sweep(config, out=str(tmp_path), progress=False, log=lambda s: None)
    zarr.open_group(str(tmp_path / "results.zarr"), mode="r+")["done"][3] = False  # width 32, ξ 0.3
    ds = load_results(tmp_path)
    curves = pruning.prune(ds, fractions=[0.0, 0.25, 1.0])
    np.testing.assert_allclose(curves.test_acc.isel(fraction=0, order=0).sel(width=16),
                               ds.test_acc.isel(step=-1).sel(width=16), rtol=1e-5)
    assert np.isnan(curves.test_acc.sel(width=32, xi=0.3)).all()
    assert (curves.test_acc.isel(fraction=-1).sel(width=16) == 0).all()  # every neuron gone
    with pytest.raises(ConfigError, match="needs the stored parameters"):
        pruning.prune(load_results(tmp_path, parameters=False))

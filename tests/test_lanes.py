"""Lane bookkeeping: every lane of a sweep, in every layout, holds its own run.

A sweep pads, groups, chunks, shards and vmaps lanes and writes them back by grid
index; a lane swapped anywhere on the way (inside a chunk, across devices, across
compile groups, in the store) would hold another run's numbers. Each lane here is
compared with the same run alone, ``jit(make_train)`` on one unpadded lane; lanes
differ from each other by far more than rounding (another seed moves the step-0
weight norm by ~1%), so any permutation fails.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grok_jax.execution import run_sweep
from grok_jax.plan import Resources, make_plan
import numpy_reference as ref

from grok_jax import phases, runner
from grok_jax.models import flat_variables
from grok_jax.config import base_config, static_config
from grok_jax.data import split_sizes
from grok_jax.train import OPT_STATE, Lane, make_train, pack_opt_state

AXES = {"seed": (0, 1), "alpha": (0.4, 0.6), "xi": (0.0, 0.3), "dropout": (0.0, 0.3)}  # α groups interleave
# Measured: a lane in a sweep (vmapped, padded, row-blocked) differs from the same
# run alone by at most 3.1e-7 relative; any two lanes' runs differ by 7.5e-3 and more.
RTOL = 2e-5


def _config():
    config = base_config()
    config.update(p=11, width=16, steps=20, log_every=10, compile_groups=2, wd=1.0)
    for name, values in AXES.items():
        config.sweep[name] = values
    return config


@pytest.fixture(scope="module")
def alone():
    """Every lane's run alone, by grid index."""
    config, runs, programs = _config(), {}, {}
    static = static_config(config)
    for i, combo in enumerate(itertools.product(*AXES.values())):
        v = dict(zip(AXES, combo))
        n_train, n_corrupt = split_sizes(v["alpha"], v["xi"], config.task, config.p)
        lane = Lane(jnp.int32(v["seed"]), jnp.int32(n_train), jnp.int32(n_corrupt), jnp.float32(config.wd),
                    jnp.float32(config.lr), jnp.float32(v["dropout"]))
        if n_train not in programs:  # one program per training-set size
            programs[n_train] = jax.jit(make_train(static, n_train))
        runs[i] = jax.tree.map(np.asarray, programs[n_train](lane))
    return runs


@pytest.mark.parametrize("lanes_per_device", [1, 2, 3])
def test_every_lane_of_every_chunk_is_its_own_run(alone, lanes_per_device, tmp_path, monkeypatch):
    config = _config()
    assert len(jax.devices()) == 2  # conftest
    plan = make_plan(config, Resources(lanes_per_device=lanes_per_device, n_devices=2))
    assert len(plan.chunks) >= 3 and len(plan.compile_groups) == 2
    classified = []  # (ξ the sweep classified each lane with, that lane's train loss)
    classify = phases.classify_log

    def classify_log(log, xi):
        classified.extend(zip(xi, log["train_loss"]))
        return classify(log, xi)

    monkeypatch.setattr(runner.phases, "classify_log", classify_log)
    ds = run_sweep(config, out=str(tmp_path), lanes_per_device=lanes_per_device, progress=False,
                   log=lambda s: None)
    flat = ds.stack(lane=list(AXES)).transpose("lane", ...)  # C order of the grid
    for i, (log, final) in alone.items():
        packed = pack_opt_state(jax.tree.map(lambda x: np.asarray(x)[None], final["opt_state"]))[0]
        final = {**final, **flat_variables(final["variables"]), OPT_STATE: packed}
        del final["variables"], final["opt_state"]
        for name, values in {**log, **final}.items():
            got = flat[name].values[i]
            np.testing.assert_allclose(got, values, rtol=RTOL, atol=1e-7, err_msg=f"lane {i}: {name}")
        xi = float(flat.xi[i])
        assert phases.PHASES[int(flat.phase[i])] == ref.phase(log, xi), i  # the NumPy reference's Table 2
        (with_xi,) = [x for x, loss in classified if np.allclose(loss, log["train_loss"], rtol=RTOL)]
        assert with_xi == xi, i


def test_lanes_differ_by_far_more_than_the_tolerance(alone):
    """The comparison above can tell any two lanes apart."""
    for i, j in itertools.combinations(alone, 2):
        a, b = alone[i][0], alone[j][0]
        gap = max(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-7)) for k in ("train_loss", "weight_norm"))
        assert gap > 50 * RTOL, (i, j, gap)

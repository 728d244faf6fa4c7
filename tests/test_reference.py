"""The reference grid (tests/reference.py): grok_jax's sweep against numbers the
NumPy reference computed, on 12 lanes in four phases."""

import numpy as np
import reference

from grok_jax import phases
from grok_jax.sweep import run_sweep

# 1000 steps in float32 against float64 drift apart (measured: final train loss 2.3e-6,
# test loss 7e-3, weight norm 1% (0.1 of 10), IPR 0.03, test accuracy 0.06); the
# tolerances are 2-5x that, far below the spread between lanes. Where weight decay
# drove the weights to ~1e-42 (float64; exactly 0 in float32) the logits tie and the
# accuracies say nothing: those lanes are compared by phase and collapse only.
ATOL = {"train_loss": 1e-5, "test_loss": 2e-2, "test_acc": 0.15, "ipr": 0.1}
NORM_RTOL = 0.03


def test_reference_is_what_the_numpy_reference_computes():
    assert not reference.differences(reference.load(), reference.compute())


def test_reference_grid_discriminates():
    assert len({lane["phase"] for lane in reference.load()}) >= 4


def test_sweep_matches_the_reference():
    ds = run_sweep(reference.config(), progress=False, log=lambda s: None)
    flat = ds.stack(lane=list(reference.AXES)).transpose("lane", ...).isel(step=-1)
    for i, want in enumerate(reference.load()):
        where = {k: want[k] for k in reference.AXES}
        assert phases.PHASES[int(flat.phase[i])] == want["phase"], where
        norm = float(flat.weight_norm[i])
        if want["final"]["weight_norm"] < 1e-6:  # collapsed, in both
            assert norm < 1e-6, where
            continue
        np.testing.assert_allclose(norm, want["final"]["weight_norm"], rtol=NORM_RTOL, err_msg=str(where))
        for name, atol in ATOL.items():
            np.testing.assert_allclose(float(flat[name][i]), want["final"][name], atol=atol, err_msg=f"{where} {name}")

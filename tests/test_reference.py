"""Regression: the tiny grid's final numbers against stored reference values.

The reference is ``tests/reference_tiny.json``. A deliberate change of the
numerics (init, data order, optimizer) changes it; regenerate it with

    UPDATE_REFERENCE=1 pytest tests/test_reference.py

and say why in the commit message.
"""

import json
import os

import numpy as np

from grok_jax.sweep import run_sweep

PATH = os.path.join(os.path.dirname(__file__), "reference_tiny.json")
FIELDS = ("train_loss", "test_loss", "train_acc", "test_acc", "corrupt_acc", "weight_norm", "ipr")


def test_tiny_grid_matches_reference(tiny):
    ds = run_sweep(tiny, progress=False, log=lambda s: None).isel(step=-1)
    got = {name: np.nan_to_num(ds[name].values, nan=-1.0).ravel().tolist() for name in FIELDS}
    got["phase"] = ds.phase.values.ravel().tolist()
    if os.environ.get("UPDATE_REFERENCE"):
        with open(PATH, "w") as f:
            json.dump(got, f, indent=1)
    with open(PATH) as f:
        want = json.load(f)
    for name in FIELDS:  # CPUs differ in vectorization, so not bit-exact
        np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-3, err_msg=name)
    assert got["phase"] == want["phase"]

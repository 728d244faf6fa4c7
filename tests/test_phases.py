"""Phase classification (PAPER.md §5) on hand-made accuracy tables."""

import numpy as np
import pytest

from grok_jax import phases
from grok_jax.phases import (COEXISTENCE, CONFUSION, DIVERGED, FORGETTING, FULL, MEMORIZATION,
                             PARTIAL, classify, classify_log, majority)

# (train, test, xi, peak, norm_ratio, finite) -> phase
CASES = [
    (1.00, 1.00, 0.35, 1.0, 1.2, True, COEXISTENCE),
    (0.90, 0.90, 0.35, 1.0, 1.2, True, COEXISTENCE),  # both boundaries count as high
    (np.float32(9) / np.float32(10), 0.95, 0.2, 1.0, 1.0, True, COEXISTENCE),  # float32 0.9
    (0.8999, 0.95, 0.35, 1.0, 1.0, True, PARTIAL),
    (0.70, 0.95, 0.35, 1.0, 1.0, True, PARTIAL),  # exactly 1.05 − ξ is partial
    (0.6999, 0.95, 0.35, 1.0, 1.0, True, FULL),
    (0.65, 0.99, 0.35, 1.0, 1.0, True, FULL),  # ≈ 1 − ξ: fits none of the wrong labels
    (0.85, 0.99, 0.10, 1.0, 1.0, True, FULL),  # ξ < 0.15: no room for partial
    (1.00, 0.8999, 0.35, 1.0, 1.5, True, MEMORIZATION),
    (0.05, 0.03, 0.35, 1.0, 0.9, True, FORGETTING),  # reached 100%, then lost it
    (0.05, 0.03, 0.35, 0.2, 0.1, True, FORGETTING),  # never learned, weights collapsed
    (0.05, 0.03, 0.35, 0.2, 0.8, True, CONFUSION),  # never learned, weights intact
    (0.30, 0.20, 0.35, 0.8999, 0.5, True, CONFUSION),  # norm ratio 0.5 is not < 0.5
    (1.00, 1.00, 0.35, 1.0, 1.0, False, DIVERGED),
]


@pytest.mark.parametrize("train,test,xi,peak,ratio,finite,expected", CASES)
def test_table(train, test, xi, peak, ratio, finite, expected):
    got = int(classify(train, test, xi, peak, ratio, finite))
    assert got == expected, f"{phases.PHASES[got]} != {phases.PHASES[expected]}"


def test_vectorized_matches_elementwise():
    cols = [np.array(c) for c in zip(*CASES)]
    np.testing.assert_array_equal(classify(*cols[:6]), cols[6])


def test_classify_log_uses_trajectory():
    log = {
        "train_loss": np.array([[1.0, 0.1, 0.2], [1.0, np.nan, 0.1]]),
        "test_loss": np.ones((2, 3)),
        "train_acc": np.array([[0.0, 1.0, 0.1], [0.0, 1.0, 1.0]]),
        "test_acc": np.array([[0.0, 0.5, 0.05], [0.0, 1.0, 1.0]]),
        "weight_norm": np.array([[10.0, 12.0, 9.0], [10.0, 10.0, 10.0]]),
    }
    np.testing.assert_array_equal(classify_log(log, np.array([0.2, 0.2])), [FORGETTING, DIVERGED])


def test_majority_and_ties():
    phase = np.array([[0, 0, 3], [3, 0, 3], [4, 5, 6]], np.int8)
    top, frac = majority(phase, axis=1)
    np.testing.assert_array_equal(top, [0, 3, 4])  # the 3-way tie goes to the lowest code
    np.testing.assert_allclose(frac, [2 / 3, 2 / 3, 1 / 3])


STEPS = np.arange(0, 60, 10)


@pytest.mark.parametrize("curve,step", [
    ([0.1, 0.2, 0.3, 0.3, 0.4, 0.5], np.nan),  # never
    ([0.95, 0.97, 1.0, 1.0, 1.0, 1.0], 0.0),  # immediately
    ([0.0, 0.0, 0.1, 0.2, 0.5, 0.9], 50.0),  # late: exactly 90% counts
    ([0.1, 0.92, 0.6, 0.95, 0.3, 0.99], 10.0),  # noisy: the first time
    ([0.1, np.nan, np.nan, np.nan, np.nan, np.nan], np.nan),  # diverged
])
def test_grokking_step_on_synthetic_curves(curve, step):
    np.testing.assert_equal(phases.grokking_step(np.asarray(curve, np.float32), STEPS), step)


@pytest.mark.parametrize("corrupt,clean,step", [
    ([0.0, 0.5, 1.0, 1.0, 0.4, 0.05], [0.1, 0.9, 1.0, 1.0, 1.0, 1.0], 50.0),  # memorized, then unlearned
    ([0.0, 0.5, 1.0, 1.0, 0.4, 0.15], [0.1, 0.9, 1.0, 1.0, 1.0, 1.0], np.nan),  # not far enough
    ([0.0, 0.1, 0.5, 0.8, 0.1, 0.0], [0.1, 0.9, 1.0, 1.0, 1.0, 1.0], np.nan),  # never memorized
    ([1.0, 0.1, 0.1, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 10.0),  # right after step 0, the first time
    ([0.0, 1.0, 1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 1.0, 0.3, 0.0, 0.0], np.nan),  # forgot everything: no unlearning
    ([np.nan] * 6, [0.1, 0.9, 1.0, 1.0, 1.0, 1.0], np.nan),  # no corrupted examples (ξ = 0)
    ([0.0, 1.0, 1.0, 0.1, 0.1, 0.1], [0.1, 1.0, 0.95, 0.9, 0.9, 0.9], 30.0),  # exactly 10% and 90% count
])
def test_unlearning_step_on_synthetic_curves(corrupt, clean, step):
    got = phases.unlearning_step(np.asarray(corrupt, np.float32), np.asarray(clean, np.float32), STEPS)
    np.testing.assert_equal(got, step)


def test_transition_steps_are_per_lane():
    corrupt = np.array([[0.0, 1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    clean = np.ones_like(corrupt)
    np.testing.assert_equal(phases.unlearning_step(corrupt, clean, STEPS), [40.0, 20.0])
    test = np.array([[0.0, 0.95, 1, 1, 1, 1], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_equal(phases.grokking_step(test, STEPS), [10.0, np.nan])


def _log(train_loss, weight_norm, train_acc=0.05, test_acc=0.03):
    n = len(train_loss)
    return {"train_loss": np.asarray(train_loss, float), "test_loss": np.ones(n), "weight_norm": np.asarray(weight_norm, float),
            "train_acc": np.full(n, train_acc), "test_acc": np.full(n, test_acc)}


@pytest.mark.parametrize("train_loss,weight_norm,expected", [
    ([1.0, 3e8, 4.5e27], [10.0, 11.0, 12.0], DIVERGED),  # exploding loss, still finite
    ([1.0, 1.01e6, 0.5], [10.0, 11.0, 12.0], DIVERGED),  # just over 1e6× at one logged step
    ([1.0, 9.9e5, 2.0], [10.0, 11.0, 12.0], CONFUSION),  # under the ratio: its accuracies decide
    ([1.0, 1e3, 1e5], [10.0, 11.0, 12.0], CONFUSION),  # grew 1e5×, finite: not Diverged
    ([1.0, 1.0, 1.0], [10.0, 5e5, 1.1e7], DIVERGED),  # exploding weights
    ([1.0, 0.5, 0.1], [10.0, 40.0, 60.0], CONFUSION),  # weights grow a few-fold: normal
])
def test_a_loss_or_norm_that_explodes_without_inf_is_diverged(train_loss, weight_norm, expected):
    assert classify_log(_log(train_loss, weight_norm), np.array(0.3)) == expected


def test_below_the_ratio_the_accuracies_decide():
    log = _log([1.0, 1e3, 1e5], [10.0, 11.0, 12.0], train_acc=1.0, test_acc=0.5)  # 1e5×: no divergence
    assert classify_log(log, np.array(0.0)) == MEMORIZATION


def test_lr_1e4_without_weight_decay_is_diverged():
    """At the tiny grid's scale lr 1e4 takes the train loss from 0.09 to 4.5e27 by
    step 20 and keeps it there, finite: only the ratio rule calls it Diverged."""
    from grok_jax.config import load_config
    from grok_jax.execution import run_sweep

    config = load_config("tiny")
    config.lr, config.sweep = 1e4, {"seed": (0, 1)}
    ds = run_sweep(config, progress=False, log=lambda s: None)
    loss = ds.train_loss.values
    assert np.isfinite(loss).all() and np.isfinite(ds.weight_norm.values).all()  # not the NaN/inf rule
    assert (loss[:, -1] > phases.DIVERGE_RATIO * loss[:, 0]).all()
    assert (ds.phase.values == DIVERGED).all()

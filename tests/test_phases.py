"""Phase classification (Doshi et al., arXiv:2310.13061, App. C, Table 2) on hand-made accuracy tables."""

import contextlib
import io

import numpy as np
import pytest

import grok_jax
from grok_jax import phases, plotting
from grok_jax.phases import (COEXISTENCE, CONFUSION, DIVERGED, FORGETTING, FULL, MEMORIZATION,
                             PARTIAL, classify, classify_log, majority)

# (train, test, xi, peak test accuracy over the logged steps, finite) -> phase
CASES = [
    (1.00, 1.00, 0.35, 1.0, True, COEXISTENCE),
    (0.90, 0.90, 0.35, 1.0, True, COEXISTENCE),  # both boundaries count as high
    (np.float32(9) / np.float32(10), 0.95, 0.2, 1.0, True, COEXISTENCE),  # float32 0.9
    (0.8999, 0.95, 0.35, 1.0, True, PARTIAL),
    (0.70, 0.95, 0.35, 1.0, True, PARTIAL),  # exactly 1.05 − ξ is partial
    (0.6999, 0.95, 0.35, 1.0, True, FULL),
    (0.65, 0.99, 0.35, 1.0, True, FULL),  # ≈ 1 − ξ: fits none of the wrong labels
    (0.85, 0.99, 0.10, 1.0, True, FULL),  # ξ < 0.15: no room for partial
    (1.00, 0.8999, 0.35, 0.8999, True, MEMORIZATION),
    (0.05, 0.03, 0.35, 1.0, True, FORGETTING),  # generalized, then lost it
    (0.05, 0.03, 0.35, np.float32(9) / np.float32(10), True, FORGETTING),  # a peak of exactly 90% counts
    (0.05, 0.03, 0.35, 0.8999, True, CONFUSION),  # never generalized
    (0.30, 0.20, 0.35, 0.2, True, CONFUSION),
    (0.05, 0.03, 0.35, np.nan, True, CONFUSION),  # no test accuracy logged: not generalized
    (1.00, 1.00, 0.35, 1.0, False, DIVERGED),
    (0.05, 0.03, 0.35, 1.0, False, DIVERGED),
]


@pytest.mark.parametrize("train,test,xi,peak,finite,expected", CASES)
def test_table(train, test, xi, peak, finite, expected):
    got = int(classify(train, test, xi, peak, finite))
    assert got == expected, f"{phases.PHASES[got]} != {phases.PHASES[expected]}"


def test_vectorized_matches_elementwise():
    cols = [np.array(c) for c in zip(*CASES)]
    np.testing.assert_array_equal(classify(*cols[:5]), cols[5])


def test_classify_log_uses_trajectory():
    log = {
        "train_loss": np.array([[1.0, 0.1, 0.2], [1.0, np.nan, 0.1], [1.0, 0.1, 0.2]]),
        "test_loss": np.ones((3, 3)),
        "train_acc": np.array([[0.0, 1.0, 0.1], [0.0, 1.0, 1.0], [0.0, 1.0, 0.1]]),
        "test_acc": np.array([[0.0, 0.95, 0.05], [0.0, 1.0, 1.0], [0.0, 0.5, 0.05]]),
        "weight_norm": np.array([[10.0, 12.0, 9.0], [10.0, 10.0, 10.0], [10.0, 12.0, 9.0]]),
    }
    np.testing.assert_array_equal(classify_log(log, np.array([0.2, 0.2, 0.2])), [FORGETTING, DIVERGED, CONFUSION])


def _history(steps, train_acc, test_acc, weight_norm, train_loss, corrupt_acc=None, clean_acc=None):
    """``(steps, log)`` of one run: every metric that :func:`phases.summarize` reads."""
    f = lambda x: np.asarray(x, np.float32)  # noqa: E731  (as the sweep logs them)
    return np.asarray(steps), {
        "train_loss": f(train_loss), "test_loss": np.ones(len(steps), np.float32), "train_acc": f(train_acc),
        "test_acc": f(test_acc), "weight_norm": f(weight_norm),
        "corrupt_acc": f(corrupt_acc if corrupt_acc is not None else train_acc),
        "clean_acc": f(clean_acc if clean_acc is not None else train_acc)}


# Synthetic trajectories that end below 90% on train and test. The old rule (a peak of
# train or test accuracy ≥ 90%, or a final weight norm under half the initial one) called
# all three Forgetting; the paper calls only the first one that.
HISTORIES = {
    # The authors' own Forgetting run (MSE, wd 20, α 0.5, ξ 0.35, epochs): test 99.85% at
    # epoch 200, 70% at 1000, 7% at 2000; from 2700 the output is zero (loss exactly
    # 1/97, every logit tied: nothing is predicted). Its train accuracy is not reported:
    # these are guesses (memorized at 200, then lost), which do not decide the phase.
    "generalized, then collapsed (the authors' wd 20 run)": (
        _history([0, 200, 1000, 2000, 2700, 3000], [0.01, 1.0, 0.66, 0.07, 0.0, 0.0],
                 [0.01, 0.9985, 0.70, 0.07, 0.0, 0.0], [30.0, 35.0, 20.0, 4.0, 0.0, 0.0],
                 [0.0104, 0.002, 0.006, 0.0102, 1 / 97, 1 / 97], [0.01, 1.0, 0.05, 0.0, 0.0, 0.0],
                 [0.01, 1.0, 1.0, 0.1, 0.0, 0.0]),
        0.35, FORGETTING, 200.0),
    # The tiny grid with cross-entropy at wd 50 (see the sweep below): the weights fall
    # 4.0 -> 0.0008 while the accuracies stay at chance.
    "collapsed without learning (cross-entropy, wd 50)": (
        _history([0, 20, 40, 60], [0.15, 0.33, 0.29, 0.21], [0.08, 0.18, 0.08, 0.08], [3.97, 0.4, 0.01, 0.0008],
                 [2.4, 2.39, 2.397, 2.398]),
        0.3, CONFUSION, np.nan),
    "memorized, then collapsed": (
        _history([0, 100, 200, 300, 400], [0.03, 1.0, 1.0, 0.5, 0.07], [0.08, 0.3, 0.45, 0.1, 0.08],
                 [4.0, 9.0, 6.0, 1.0, 1e-8], [0.09, 0.01, 0.02, 0.07, 1 / 11]),
        0.0, CONFUSION, np.nan),
}


@pytest.mark.parametrize("name", HISTORIES)
def test_forgetting_is_a_network_that_generalized_then_lost_it(name):
    (steps, log), xi, expected, grok = HISTORIES[name]
    phase, extra = phases.summarize({k: v[None] for k, v in log.items()}, np.array([xi]), steps)
    assert phases.PHASES[int(phase[0])] == phases.PHASES[expected]
    assert set(extra) == set(phases.SUMMARY) and all(v.dtype == np.float32 and v.shape == (1,) for v in extra.values())
    assert extra["peak_test_acc"][0] == log["test_acc"].max()
    np.testing.assert_equal(extra["grok_step"][0], grok)


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


@pytest.fixture(scope="module")
def ce_high_wd(tmp_path_factory):
    """``python -m grok_jax.sweep --grid=tiny --config.loss=ce
    --config.sweep.wd="(50.0,100.0)"`` (2 wd × 2 ξ × 2 seeds), run through the command
    line in this process: (its store, what it printed)."""
    from grok_jax import sweep

    out = tmp_path_factory.mktemp("ce_high_wd")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sweep.main(["--grid=tiny", "--config.loss=ce", "--config.sweep.wd=(50.0,100.0)", f"--out={out}",
                    "--compilation_cache="])
    return grok_jax.load_results(str(out)), printed.getvalue()


def test_weights_that_collapse_without_learning_are_confusion(ce_high_wd):
    """Weight decay drives every lane's weights to a few ten-thousandths of their
    initial norm, the accuracies never leaving chance (test ≤ 18%, train ≤ 33% at the
    logged steps): Confusion, as the paper finds with cross-entropy beyond the
    Inversion band (App. M). The weight-norm clause of the old rule called all four
    cells Forgetting."""
    ds, printed = ce_high_wd
    norm = ds.weight_norm.values
    assert (norm[..., -1] < 0.5 * norm[..., 0]).all()
    assert float(ds.test_acc.max()) < 0.2 and float(ds.train_acc.max()) < 0.35
    assert float(ds.peak_train_acc.max()) < 0.9  # at no step either
    assert (ds.phase == CONFUSION).all() and (ds.phase_majority == CONFUSION).all()
    assert plotting.phase_table(ds) in printed  # what the command prints


def test_the_sweep_stores_the_peaks(ce_high_wd):
    ds, _ = ce_high_wd
    for name in phases.SUMMARY:
        assert ds[name].dims == ds.phase.dims and ds[name].dtype == np.float32, name
    np.testing.assert_array_equal(ds.peak_test_acc, ds.test_acc.max("step"))
    # Full batch without dropout: each step's forward is the evaluation's on the training
    # rows, so the peak covers every logged state but the last (after the last step).
    assert (ds.peak_train_acc >= ds.train_acc.isel(step=slice(None, -1)).max("step")).all()
    assert (ds.peak_train_acc > ds.train_acc.max("step")).any()  # it sees steps between the logged ones


def test_the_phase_at_every_step_is_that_of_the_log_cut_there():
    """classify_steps against classify_log of every prefix, on random logs with
    NaN, inf and exploding values, rising and falling accuracies, several ξ."""
    rng = np.random.default_rng(0)
    shape = (400, 9)
    accuracy = lambda: rng.choice([0.0, 0.3, 0.8, 0.8999, 0.9, 0.95, 1.0], shape)  # noqa: E731
    spikes = rng.choice([1.0, 1e7, np.inf, np.nan], shape, p=[0.97, 0.01, 0.01, 0.01])
    log = {"train_loss": rng.uniform(0.1, 2, shape) * spikes, "test_loss": rng.uniform(0.1, 2, shape),
           "weight_norm": rng.uniform(5, 20, shape) * rng.choice([1.0, 1e7], shape, p=[0.99, 0.01]),
           "train_acc": accuracy(), "test_acc": np.where(rng.random(shape) < 0.1, np.nan, accuracy())}
    xi = rng.choice([0.0, 0.1, 0.35], shape[0])
    steps = phases.classify_steps(log, xi)
    cut = np.stack([classify_log({k: v[:, :i + 1] for k, v in log.items()}, xi) for i in range(shape[1])], -1)
    np.testing.assert_array_equal(steps, cut)
    assert len(np.unique(cut)) == len(phases.PHASES)  # every phase occurs

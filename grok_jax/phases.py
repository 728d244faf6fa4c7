"""Phase of each run from its final accuracies and its history (arXiv:2310.13061, App. C,
Table 2; App. E; App. M), and the steps at which a run grokked and unlearned its
corrupted labels (:func:`grokking_step`, :func:`unlearning_step`). The sweep's runner
calls :func:`summarize` once per finished chunk for all of it.

| phase             | test acc | train acc                                         |
| ----------------- | -------- | ------------------------------------------------- |
| Coexistence       | ≥ 90%    | ≥ 90%                                             |
| Partial Inversion | ≥ 90%    | < 90% and ≥ 100(1.05 − ξ)%                        |
| Full Inversion    | ≥ 90%    | < 100(1.05 − ξ)%                                  |
| Memorization      | < 90%    | ≥ 90%                                             |
| Forgetting        | < 90%    | < 90%, and test acc was ≥ 90% at some logged step |
| Confusion         | < 90%    | < 90%, and test acc never reached 90%             |

Forgetting vs Confusion (both end below 90% on train and test) is a matter of
history, as in the paper: **Forgetting** is a network that generalized (its peak
test accuracy over the logged steps, ``peak_test_acc``, is ≥ 90%) and then lost it,
as weight decay shrank its weights towards zero ("Forgetting exclusively occurs in
grokked networks", App. E). **Confusion** is one that never generalized: it never
learned anything, or it only memorized its training set (train ≥ 90%, test < 90%)
and then lost that too. A collapse of the weights is not the criterion: with
cross-entropy (App. M) weight decay beyond the Inversion band drives the weights
down without the network ever learning, and the paper calls that Confusion ("We do
not observe a Forgetting phase in this case"). Every comparison allows ``TOL``
(1e-6) of rounding, so exactly 90% counts as high. A run is **Diverged**, whatever
its accuracies, if at any logged step its loss or weight norm became NaN/inf, or its
train loss or weight norm exceeded ``DIVERGE_RATIO`` (10⁶) times its value at step
0: a loss that explodes without reaching inf (lr 1e4, wd 0 on the tiny grid: 0.09 →
4.5e27) has diverged as surely. A training run that learns never comes near: its
loss falls from step 0, and its weight norm grows a few-fold at most.
"""

from __future__ import annotations

import warnings

import numpy as np

PHASES = (
    "Coexistence",
    "Partial Inversion",
    "Full Inversion",
    "Memorization",
    "Forgetting",
    "Confusion",
    "Diverged",
)
SHORT = ("C", "PI", "FI", "M", "F", "Cf", "D")  # for text tables
THRESHOLD = 0.9  # accuracy that counts as "high"
# Slack on every comparison: accuracies are float32 ratios (9/10 is 0.8999999762)
# and 1.05 − 0.35 is 0.7000000000000001 in float64; neither may flip a phase.
TOL = 1e-6
DIVERGE_RATIO = 1e6  # train loss or weight norm over this many times its step-0 value: Diverged
# The per-lane scalars that :func:`summarize` adds to a chunk's finals (float32; NaN
# where there is none). ``peak_train_acc`` comes with the run (grok_jax.train).
SUMMARY = ("peak_test_acc", "grok_step", "unlearn_step")
(COEXISTENCE, PARTIAL, FULL, MEMORIZATION, FORGETTING, CONFUSION, DIVERGED) = range(7)


def classify(
    train_acc: np.ndarray,
    test_acc: np.ndarray,
    xi: np.ndarray,
    peak_test: np.ndarray,
    finite: np.ndarray,
) -> np.ndarray:
    """Phase codes (indices into :data:`PHASES`), elementwise over broadcast inputs.

    Args:
      train_acc, test_acc: final accuracies in [0, 1].
      xi: corruption fraction of each run.
      peak_test: the highest test accuracy at any logged step (≥ 90%: the run
        generalized, so one that ends low on both is Forgetting, else Confusion).
      finite: whether the run stayed stable: every logged loss and weight norm is
        finite, and no logged train loss or weight norm exceeds ``DIVERGE_RATIO``
        times its step-0 value (see :func:`classify_log`); False gives Diverged.

    Example:
      >>> int(classify(0.7, 0.99, 0.35, 1.0, True))  # 0.70 ≥ 1.05 − 0.35
      1
      >>> int(classify(0.07, 0.07, 0.35, 0.9985, True))  # generalized, then lost it
      4
    """
    train_acc, test_acc = np.asarray(train_acc), np.asarray(test_acc)
    train_hi, test_hi = train_acc >= THRESHOLD - TOL, test_acc >= THRESHOLD - TOL
    generalized = np.asarray(peak_test) >= THRESHOLD - TOL  # NaN (never logged): no
    inverted = np.where(train_acc >= 1.05 - np.asarray(xi) - TOL, PARTIAL, FULL)
    phase = np.where(
        test_hi,
        np.where(train_hi, COEXISTENCE, inverted),
        np.where(train_hi, MEMORIZATION, np.where(generalized, FORGETTING, CONFUSION)),
    )
    return np.where(np.asarray(finite, bool), phase, DIVERGED).astype(np.int8)


def classify_log(log: dict[str, np.ndarray], xi: np.ndarray) -> np.ndarray:
    """Phase codes from logged trajectories (arrays ``(..., n_log)``, step 0 first):
    :func:`classify` of the last logged accuracies, with the peak test accuracy over
    the logged steps. Diverged: a NaN/inf loss or weight norm at a logged step, or a
    train loss or weight norm above :data:`DIVERGE_RATIO` times its step-0 value."""
    finite = _stable(log).all(axis=-1)
    peak = peak_test_acc(log["test_acc"])
    return classify(log["train_acc"][..., -1], log["test_acc"][..., -1], xi, peak, finite)


def classify_steps(log: dict[str, np.ndarray], xi: np.ndarray) -> np.ndarray:
    """Phase codes at every logged step, as if training had stopped there
    (:func:`classify_log` of each prefix of the log, in one pass of running
    maxima): arrays ``(..., n_log)`` in, codes ``(..., n_log)`` out.

    Example:
      >>> log = {"train_acc": np.array([0.1, 1.0, 1.0]), "test_acc": np.array([0.0, 0.2, 0.95]),
      ...        "train_loss": np.ones(3), "test_loss": np.ones(3), "weight_norm": np.ones(3)}
      >>> classify_steps(log, 0.0).tolist()          # Confusion, Memorization, Coexistence
      [5, 3, 0]
    """
    finite = np.logical_and.accumulate(_stable(log), axis=-1)
    peak = np.fmax.accumulate(np.asarray(log["test_acc"]), axis=-1)  # NaN steps skipped
    return classify(log["train_acc"], log["test_acc"], np.asarray(xi)[..., None], peak, finite)


def _stable(log: dict[str, np.ndarray]) -> np.ndarray:
    """At each logged step: the losses and weight norm finite, and the train loss and
    weight norm within :data:`DIVERGE_RATIO` times their step-0 values."""
    stable = np.isfinite(log["train_loss"]) & np.isfinite(log["test_loss"]) & np.isfinite(log["weight_norm"])
    with np.errstate(invalid="ignore", over="ignore"):
        for name in ("train_loss", "weight_norm"):
            stable &= ~(log[name] > DIVERGE_RATIO * log[name][..., :1])
    return stable


def peak_test_acc(test_acc: np.ndarray) -> np.ndarray:
    """The highest test accuracy over the logged steps (last axis), NaN steps
    skipped; NaN where none is logged."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN slice
        return np.nanmax(np.asarray(test_acc), axis=-1)


def summarize(log: dict[str, np.ndarray], xi: np.ndarray, steps: np.ndarray
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Everything the host derives from a finished chunk's logs: the phase codes of
    :func:`classify_log` (int8) and the per-lane scalars :data:`SUMMARY`, as float32:
    ``peak_test_acc`` (:func:`peak_test_acc`), ``grok_step``
    (:func:`grokking_step`) and ``unlearn_step`` (:func:`unlearning_step`).

    Args:
      log: the logged metrics, arrays ``(lanes, n_log)`` (step 0 first).
      xi: the corruption fraction of each lane, ``(lanes,)``.
      steps: the logged steps, ``(n_log,)``.

    Example:
      >>> steps = np.array([0, 1000, 2000])
      >>> log = {"train_acc": np.array([[0.01, 1.0, 1.0]]), "test_acc": np.array([[0.01, 0.95, 0.99]]),
      ...        "corrupt_acc": np.array([[0.0, 1.0, 1.0]]), "clean_acc": np.array([[0.01, 1.0, 1.0]]),
      ...        "train_loss": np.ones((1, 3)), "test_loss": np.ones((1, 3)), "weight_norm": np.ones((1, 3))}
      >>> phase, extra = summarize(log, np.array([0.2]), steps)  # one lane at ξ 0.2
      >>> PHASES[phase[0]], extra["grok_step"].tolist()
      ('Coexistence', [1000.0])
    """
    phase = classify_log(log, xi)
    extra = {
        "peak_test_acc": peak_test_acc(log["test_acc"]),
        "grok_step": grokking_step(log["test_acc"], steps),
        "unlearn_step": unlearning_step(log["corrupt_acc"], log["clean_acc"], steps),
    }
    return phase, {name: np.asarray(v, np.float32) for name, v in extra.items()}


def grokking_step(test_acc: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The first logged step whose test accuracy is high (≥ 90%), over the last
    axis of ``test_acc`` (logged at ``steps``); NaN for a run that never got there.

    Example:
      >>> grokking_step(np.array([0.1, 0.5, 0.95, 0.8]), np.array([0, 10, 20, 30]))
      array(20.)
    """
    return _first(np.asarray(test_acc) >= THRESHOLD - TOL, steps)


def unlearning_step(corrupt_acc: np.ndarray, clean_acc: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The first logged step at which a run that had memorized its corrupted labels
    (``corrupt_acc`` ≥ 90% at an earlier logged step) has unlearned them: at most
    ``1 − THRESHOLD`` (10%) of the corrupted examples still fit their labels while
    the clean ones do (``clean_acc`` ≥ 90%). Then the train accuracy is within 0.1·ξ
    of 100(1 − ξ)% (Doshi et al., arXiv:2310.13061, Fig. 1). NaN if it never did, and without
    corrupted examples (``corrupt_acc`` NaN). Over the last axis (logged at ``steps``).

    Example:
      >>> unlearning_step(np.array([0.0, 1.0, 0.5, 0.05]), np.array([0.1, 1.0, 1.0, 1.0]), np.arange(4) * 10)
      array(30.)
    """
    corrupt, clean = np.asarray(corrupt_acc), np.asarray(clean_acc)
    memorized = corrupt >= THRESHOLD - TOL
    before = np.zeros_like(memorized)
    before[..., 1:] = np.logical_or.accumulate(memorized, axis=-1)[..., :-1]  # at an earlier step
    unlearned = (corrupt <= 1 - THRESHOLD + TOL) & (clean >= THRESHOLD - TOL)
    return _first(before & unlearned, steps)


def _first(hit: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The step of the first True along the last axis; NaN where there is none."""
    return np.where(hit.any(axis=-1), np.asarray(steps, np.float64)[np.argmax(hit, axis=-1)], np.nan)


def majority(phase: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent phase along ``axis`` (ties go to the lower code, i.e. the
    earlier row of the table) and the fraction of finished runs in it. Runs not
    finished yet (code -1) are not counted; a cell with none finished gets -1 and
    fraction NaN."""
    counts = phase_counts(phase, axis)
    finished = counts.sum(axis=-1)
    top = np.where(finished > 0, np.argmax(counts, axis=-1), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return top.astype(np.int8), np.max(counts, axis=-1) / finished


def phase_counts(phase: np.ndarray, axis: int) -> np.ndarray:
    """How many runs along ``axis`` are in each phase: a new last axis, one entry
    per code of :data:`PHASES` (runs not finished, code -1, are not counted).

    Example:
      >>> phase_counts(np.array([3, 3, 0, -1]), axis=0).tolist()
      [1, 0, 0, 2, 0, 0, 0]
    """
    return np.stack([np.sum(phase == k, axis=axis) for k in range(len(PHASES))], axis=-1)

"""Figure 6: pruning a Coexistence network by IPR, no retraining, with a random-order control.

α 0.5, ξ 0.35, wd 0 at paper scale; the quick network is in Coexistence at ξ 0.15.
Neurons are zeroed cumulatively lowest-IPR first, highest-IPR first, and in random
orders (the control the paper lacks; its spread over orders and seeds is drawn).
"""

from grok_jax.presets import Claim, figure_config, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = pick(scale, 0.3, 0.15, 0.35)  # corruption fraction
    run.wd = 0.0  # no regularization: Coexistence
    run.sweep.seed = pick(scale, (0, 1), (0, 1, 2), (0, 1, 2))  # networks pruned
    config = figure_config("accuracies and losses after pruning the lowest-IPR, highest-IPR or random neurons, "
                           "against the fraction pruned", "pruning", coexistence=run)
    config.options.random = pick(scale, 2, 5, 5)  # random orders per network
    config.options.fractions = ()  # fractions pruned; () = every count from 0 to all
    config.options.report = (0.1, 0.25, 0.5)  # fractions whose numbers go into the summary
    config.claims = CLAIMS
    return config


def _at(summary, order: str, fraction: str) -> dict:
    """The mean accuracies after pruning ``fraction`` (the summary's key nearest to it)."""
    part = summary["pruned"][order]
    return part[min(part, key=lambda k: abs(float(k) - float(fraction)))]


def _low_first(summary):
    at = _at(summary, "low", "0.5")
    return at["corrupt_acc"] <= 0.2 and at["test_acc"] >= 0.9, (
        f"half pruned: corrupted {at['corrupt_acc']:.3f}, test {at['test_acc']:.3f}")


def _high_first(summary):
    at = _at(summary, "high", "0.25")
    return at["test_acc"] < 0.5 and at["corrupt_acc"] >= 0.8, (
        f"a quarter pruned: test {at['test_acc']:.3f}, corrupted {at['corrupt_acc']:.3f}")


def _random_between(summary):
    words, holds = [], True
    for fraction in summary["pruned"]["low"]:
        low, rand, high = (_at(summary, o, fraction) for o in ("low", "random (mean)", "high"))
        holds &= low["test_acc"] > rand["test_acc"] > high["test_acc"]
        holds &= low["corrupt_acc"] < rand["corrupt_acc"] < high["corrupt_acc"]
        words.append(f"{float(fraction):.0%}: test {low['test_acc']:.2f} > {rand['test_acc']:.2f} > "
                     f"{high['test_acc']:.2f}, corrupted {low['corrupt_acc']:.2f} < {rand['corrupt_acc']:.2f} < "
                     f"{high['corrupt_acc']:.2f}")
    return holds, "; ".join(words)


CLAIMS = (
    Claim("Fig. 6: pruning lowest-IPR neurons first lowers the corrupted accuracy while the test accuracy stays "
          "high", _low_first,
          why="after pruning half the neurons (mean over networks): corrupted accuracy ≤ 20% (from ≥ 90% "
              "memorized; the paper's curve falls towards 0) and test accuracy ≥ 90% (the phase rule's 'high')"),
    Claim("Fig. 6: pruning highest-IPR neurons first collapses the test accuracy while memorization survives",
          _high_first, why="after pruning a quarter: test accuracy < 50% (more than half the generalization "
                           "lost) and corrupted accuracy ≥ 80% (most memorized labels kept)"),
    Claim("Fig. 6: random pruning falls in between", _random_between,
          why="at every reported fraction (10, 25, 50%), the mean over random orders lies strictly between "
              "lowest-first and highest-first, for both the test and the corrupted accuracy"),
)

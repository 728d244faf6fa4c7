"""Figure 6: pruning a Coexistence network by IPR, no retraining, with a random-order control.

α 0.5, ξ 0.35, wd 0 at paper scale; the quick network is in Coexistence at ξ 0.15.
Neurons are zeroed cumulatively lowest-IPR first, highest-IPR first, and in random
orders (the control the paper lacks; its spread over orders and seeds is drawn).
"""

from grok_jax.presets import figure_config, pick, run_config


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
    return config

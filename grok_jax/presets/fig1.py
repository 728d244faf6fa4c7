"""Figure 1: accuracies over steps in Coexistence, Partial and Full Inversion.

α 0.5, ξ 0.35, wd 0, 5, 15 at paper scale. The quick network (p 41, N 128)
memorizes at ξ 0.35 without weight decay; its three phases sit at ξ 0.2 and wd 2, 6,
10 (see the ``wd_xi`` grid's phase table).
"""

from grok_jax.presets import figure_config, pick, run_config


def noisy_run(scale: str):
    """The run of Figures 1 and 4: one weight decay per phase, in one vmapped pass."""
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = pick(scale, 0.3, 0.2, 0.35)  # corruption fraction
    run.sweep.wd = pick(scale, (0.0, 10.0), (2.0, 6.0, 10.0), (0.0, 5.0, 15.0))  # one panel each
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    return run


def get_config(scale: str = "quick"):
    config = figure_config("train/test/corrupted accuracy, mean IPR and weight norms over steps in Coexistence, "
                           "Partial and Full Inversion, grokking and unlearning steps marked", "dynamics",
                           noisy=noisy_run(scale))
    config.options.rows = ("accuracy", "ipr", "norms")  # panels per lane, top to bottom
    return config

"""Figure 2: grokking without label noise, accuracy and mean IPR over steps (α 0.5, ξ 0, wd 5)."""

from grok_jax.presets import figure_config, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = 0.0  # no corrupted labels
    run.wd = 5.0  # weight decay
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    config = figure_config("accuracy and mean IPR over steps without label noise: the IPR rises as the network "
                           "groks", "dynamics", clean=run)
    config.options.rows = ("accuracy", "ipr")  # panels, top to bottom
    return config

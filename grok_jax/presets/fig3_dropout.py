"""Figure 3 (middle): phase diagrams over α × ξ without weight decay, one panel per dropout rate."""

from grok_jax.presets import alpha_axis, figure_config, pick, run_config, xi_axis


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.wd = 0.0  # dropout is the only regularizer
    run.sweep.alpha = alpha_axis(scale)  # data fraction (y axis)
    run.sweep.xi = xi_axis(scale)  # corruption fraction (x axis)
    run.sweep.dropout = pick(scale, (0.0, 0.6), (0.0, 0.3, 0.6, 0.9), (0.0, 0.3, 0.6, 0.9))  # panels
    run.plot.x, run.plot.y = "xi", "alpha"
    return figure_config("phase diagrams α × ξ, one panel per dropout rate (wd 0)", "phases", alpha_dropout=run)

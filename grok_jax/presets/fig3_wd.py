"""Figure 3 (left): phase diagrams over α × ξ, one panel per weight decay (0, 5, 15, 20).

The quick network (p 41, N 128) forgets from wd 14 on (see the ``wd_xi`` grid): its
panels are wd 0, 4, 8, 12, where its Coexistence and Inversion phases are.
"""

from grok_jax.presets import alpha_axis, figure_config, pick, run_config, xi_axis


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.sweep.alpha = alpha_axis(scale)  # data fraction (y axis)
    run.sweep.xi = pick(scale, xi_axis(scale), (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
                        xi_axis(scale))  # corruption fraction (x axis)
    run.sweep.wd = pick(scale, (0.0, 15.0), (0.0, 4.0, 8.0, 12.0), (0.0, 5.0, 15.0, 20.0))  # panels
    run.plot.x, run.plot.y = "xi", "alpha"
    return figure_config("phase diagrams α × ξ, one panel per weight decay", "phases", alpha_wd=run)

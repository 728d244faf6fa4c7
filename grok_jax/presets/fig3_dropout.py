"""Figure 3 (middle): phase diagrams over α × ξ without weight decay, one panel per dropout rate."""

from grok_jax.presets import INVERSION, Claim, alpha_axis, count, figure_config, pick, run_config, xi_axis


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.wd = 0.0  # dropout is the only regularizer
    run.sweep.alpha = alpha_axis(scale)  # data fraction (y axis)
    run.sweep.xi = xi_axis(scale)  # corruption fraction (x axis)
    run.sweep.dropout = pick(scale, (0.0, 0.6), (0.0, 0.3, 0.6, 0.9), (0.0, 0.3, 0.6, 0.9))  # panels
    run.plot.x, run.plot.y = "xi", "alpha"
    config = figure_config("phase diagrams α × ξ, one panel per dropout rate (wd 0)", "phases", alpha_dropout=run)
    rate = pick(scale, 0.6, 0.3, 0.3)

    def inversion(summary):
        at0, at = (count(summary, INVERSION, dropout=d) for d in (0.0, rate))
        return at0 == 0 and at > 0, f"{at0} Inversion cells at dropout 0, {at} at dropout {rate:g}"

    config.claims = (Claim(f"Fig. 3: dropout, like weight decay, gives Inversion (none at dropout 0, some at "
                           f"{rate:g})", inversion, why="Partial or Full Inversion cells counted on the same "
                                                         "α × ξ grid: none without dropout (as in the paper's "
                                                         "panel), at least one with it (the paper gives no count)"),)
    return config

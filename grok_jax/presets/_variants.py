"""The weight decay × ξ grid that the appendix variants (M, N, O, P) compare on."""

from grok_jax.presets import pick, run_config


def wd_xi_run(scale: str):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction, fixed
    run.sweep.wd = pick(scale, (0.0, 10.0), (0.0, 4.0, 8.0, 12.0, 16.0, 20.0),
                        (0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0))  # weight decay (y axis)
    run.sweep.xi = pick(scale, (0.0, 0.4), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                        tuple(round(0.05 * i, 2) for i in range(19)))  # corruption fraction (x axis)
    run.plot.x, run.plot.y = "xi", "wd"
    return run

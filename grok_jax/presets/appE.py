"""Appendix E: weight norms in the Forgetting phase (wd 20) against a smaller weight decay.

Forgetting: strong weight decay shrinks the weights until the network loses what it
had learned (quadratic activation, adaptive optimizer). Same α and ξ as Figure 1.
"""

from grok_jax.presets import figure_config, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = pick(scale, 0.3, 0.2, 0.35)  # corruption fraction (Figure 1's)
    run.sweep.wd = pick(scale, (0.0, 20.0), (10.0, 20.0), (15.0, 20.0))  # Inversion vs Forgetting
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    config = figure_config("weight norms and accuracies over steps in the Forgetting phase (wd 20)", "dynamics",
                           forgetting=run)
    config.options.rows = ("accuracy", "norms")  # panels per lane, top to bottom
    return config

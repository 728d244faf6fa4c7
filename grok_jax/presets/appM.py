"""Appendix M: cross-entropy loss. It needs far more regularization than MSE, and has
no Forgetting phase; the weight decay axis reaches further."""

from grok_jax.presets import figure_config, pick
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.loss = "ce"  # cross-entropy on the logits
    run.sweep.wd = pick(scale, (0.0, 40.0), (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0),
                        (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0))  # weight decay (y axis)
    return figure_config("phase diagram wd × ξ with cross-entropy loss", "phases", ce=run)

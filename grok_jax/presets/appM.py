"""Appendix M: cross-entropy loss. It needs far more regularization than MSE, and has
no Forgetting phase; the weight decay axis reaches further."""

from grok_jax.presets import Claim, count, figure_config, pick
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.loss = "ce"  # cross-entropy on the logits
    run.sweep.wd = pick(scale, (0.0, 40.0), (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0),
                        (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 80.0))  # weight decay (y axis)
    config = figure_config("phase diagram wd × ξ with cross-entropy loss", "phases", ce=run)

    def no_forgetting(summary):
        n = count(summary, ("Forgetting",))
        return n == 0, f"{n} Forgetting cells"

    config.claims = (Claim("App. M: cross-entropy has no Forgetting phase", no_forgetting, scales=("paper",),
                           why="no Forgetting cell on the grid ('We do not observe a Forgetting phase'); the "
                               "quick grid (lr 0.01, wd ≤ 10) collapses into Confusion from wd 6 "
                               "and does not span the appendix's range: expected at paper scale only"),)
    return config

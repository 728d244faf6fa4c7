"""Appendix P: modular multiplication beside addition (almost identical phase diagrams)."""

from grok_jax.presets import Claim, agreement, figure_config
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.sweep.task = ("add", "mul")  # one panel each (a static axis: two programs, one store)
    config = figure_config("phase diagrams wd × ξ for modular addition and multiplication", "phases", task=run)

    def nearly_equal(summary):
        share, n = agreement(summary, "task", "task", "add", "mul")
        return share >= 0.9, f"{share:.0%} of {n} cells in the same phase"

    config.claims = (Claim("App. P: addition and multiplication give nearly equal phase diagrams", nearly_equal,
                           why="≥ 90% of the (wd, ξ) cells in the same phase: 'almost identical'; boundary "
                               "cells flip between neighbouring phases with the seed alone (quick: 34 of 36)"),)
    return config

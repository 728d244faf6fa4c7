"""Appendix E: weight norms in the Forgetting phase (wd 20) against a smaller weight decay.

Forgetting: strong weight decay shrinks the weights until the network loses what it
had learned (quadratic activation, adaptive optimizer). Same α and ξ as Figure 1.
"""

from grok_jax.presets import Claim, figure_config, lane, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = pick(scale, 0.3, 0.2, 0.35)  # corruption fraction (Figure 1's)
    run.sweep.wd = pick(scale, (0.0, 20.0), (10.0, 20.0), (15.0, 20.0))  # Inversion vs Forgetting
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    config = figure_config("weight norms and accuracies over steps in the Forgetting phase (wd 20)", "dynamics",
                           forgetting=run)
    config.options.rows = ("accuracy", "norms")  # panels per lane, top to bottom
    smaller = min(run.sweep.wd)

    def forgets(summary):
        strong, weak = lane(summary, wd=20.0), lane(summary, wd=smaller)
        ratio = strong["final_weight_norm"] / weak["final_weight_norm"]
        return strong["phase"] == "Forgetting" and ratio < 0.25, (
            f"wd 20: {strong['phase']}, weight norm {strong['final_weight_norm']:.2f} = {ratio:.2f} × wd "
            f"{smaller:g}'s")

    config.claims = (Claim("App. E: at wd 20 the network forgets, its weights decaying towards zero", forgets,
                           why="the phase rule's Forgetting (both accuracies < 90% at the end, test ≥ 90% at "
                               "some logged step) and a final weight norm under a quarter of the smaller "
                               "weight decay's (quick: 1.2 vs 12)"),)
    return config

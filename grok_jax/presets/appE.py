"""Appendix E: weight norms in the Forgetting phase (wd 20) against a smaller weight decay.

Forgetting: strong weight decay shrinks the weights until the network loses what it
had learned (quadratic activation, adaptive optimizer). At paper scale Figure 1's α
and ξ. The quick network (p 41, N 128, 1000 steps) forgets only where it groks
before its weights shrink: at ξ 0.05, wd 17 it groks (test 97%), then ends at test
3%, train 9%. At ξ 0.2 every wd that collapses it does so before grokking (wd 20:
test never above 12%, Confusion by the paper's rule); see figures/README.md.
"""

from grok_jax.presets import Claim, figure_config, lane, pick, run_config


def get_config(scale: str = "quick"):
    run = run_config(scale)
    run.alpha = 0.5  # data fraction
    run.xi = pick(scale, 0.3, 0.05, 0.35)  # corruption fraction (paper: Figure 1's)
    run.sweep.wd = pick(scale, (0.0, 20.0), (10.0, 17.0), (15.0, 20.0))  # Inversion/Coexistence vs Forgetting
    run.log_every = pick(scale, 20, 10, 20)  # dense curves
    config = figure_config("weight norms and accuracies over steps in the Forgetting phase", "dynamics",
                           forgetting=run)
    config.options.rows = ("accuracy", "norms")  # panels per lane, top to bottom
    smaller, strong_wd = min(run.sweep.wd), max(run.sweep.wd)

    def forgets(summary):
        strong, weak = lane(summary, wd=strong_wd), lane(summary, wd=smaller)
        ratio = strong["final_weight_norm"] / weak["final_weight_norm"]
        return strong["phase"] == "Forgetting" and ratio < 0.25, (
            f"wd {strong_wd:g}: {strong['phase']}, weight norm {strong['final_weight_norm']:.2f} = {ratio:.2f} × "
            f"wd {smaller:g}'s")

    config.claims = (Claim(f"App. E: at wd {strong_wd:g} (the paper's 20) the network forgets, its weights "
                           "decaying towards zero", forgets,
                           why="the phase rule's Forgetting (both accuracies < 90% at the end, test ≥ 90% at "
                               "some logged step) and a final weight norm under a quarter of the smaller "
                               "weight decay's; the quick network forgets at wd 17, ξ 0.05 (at ξ 0.2 it "
                               "collapses before grokking)"),)
    return config

"""Figure 7 (IPR): the Transformer's embedding IPR, init vs final, at Figure 7a's two
weight decays (the paper: 10 and 50; paper scale here: 3 and 10 with the standard
parameterization, quick: 1 and 3; see ``fig7_transformer``), α 0.5 (quick: 0.9) and
ξ 0.2, from Figure 7a's run (the same store). The paper: much lower
values than the MLP's (0-0.4), rising with weight decay."""

from grok_jax.presets import Claim, figure_config, pick
from grok_jax.presets.fig7_transformer import transformer_wd_run


def get_config(scale: str = "quick"):
    config = figure_config("Transformer embedding IPR histograms, init vs final, per weight decay",
                           "ipr_histograms", transformer=transformer_wd_run(scale))
    config.options.bins = 25  # histogram bins over [0, 1]
    config.options.select = {"alpha": pick(scale, 0.5, 0.9, 0.5), "xi": pick(scale, 0.0, 0.2, 0.2)}  # cells drawn
    config.claims = (Claim("Fig. 7: the Transformer's embedding IPR is low (≤ 0.4) and rises with weight decay",
                           _rises, why="mean final embedding IPR ≤ 0.4 at every wd (the paper's range, 0-0.4) "
                                       "and higher at the largest wd than at the smallest"),)
    return config


def _rises(summary):
    by_wd = {}  # wd -> its lanes' mean final IPRs (one per seed at paper scale): averaged
    for lane in summary["lanes"]:
        by_wd.setdefault(lane["wd"], []).append(lane["mean_ipr_final"])
    wds = sorted(by_wd)
    means = [sum(by_wd[wd]) / len(by_wd[wd]) for wd in wds]
    return max(means) <= 0.4 and means[-1] > means[0], ", ".join(
        f"{m:.3f} at wd {wd:g}" for m, wd in zip(means, wds))

"""Figure 4: per-neuron IPR histograms, init vs final, in Coexistence, Partial and Full Inversion.

The run is Figure 1's (the same store serves both).
"""

from grok_jax.presets import Claim, figure_config, lane, pick
from grok_jax.presets.fig1 import noisy_run


def get_config(scale: str = "quick"):
    config = figure_config("per-neuron IPR histograms at init and after training, one panel per weight decay",
                           "ipr_histograms", noisy=noisy_run(scale))
    config.options.bins = 25  # histogram bins over [0, 1]
    config.claims = claims(scale)
    return config


def claims(scale: str):
    """Bimodal IPR in Coexistence; weight decay moves neurons to high IPR."""
    coexistence = pick(scale, 0.0, 2.0, 0.0)  # Fig. 1's Coexistence lane (quick: wd 2)

    def bimodal(summary):
        run = lane(summary, wd=coexistence)
        low, high = run["share_low_final"], run["share_high_final"]
        return low >= 0.2 and high >= 0.2, f"{low:.0%} of neurons below IPR 0.25, {high:.0%} at 0.75 or above"

    def by_wd(summary):
        return sorted(summary["lanes"], key=lambda r: r["wd"])

    def mean_rises(summary):
        lanes = by_wd(summary)
        first, last = lanes[0], lanes[-1]
        return last["mean_ipr_final"] > first["mean_ipr_final"], "mean IPR " + ", ".join(
            f"{r['mean_ipr_final']:.3f} at wd {r['wd']:g}" for r in lanes)

    def share_rises(summary):
        shares = [r["share_above_half_final"] for r in by_wd(summary)]
        return all(b >= a for a, b in zip(shares, shares[1:])) and shares[-1] > shares[0], (
            "share above 0.5: " + ", ".join(f"{s:.0%}" for s in shares))

    return (
        Claim(f"Fig. 4: the IPR histogram is bimodal in Coexistence (wd {coexistence:g})", bimodal,
              why="≥ 20% of neurons at each end (IPR < 0.25 and ≥ 0.75; the paper's modes: the floor and "
                  "0.85-0.95); a unimodal histogram (at init, or a Full Inversion) leaves one end nearly empty"),
        Claim("Fig. 4: the mean IPR rises with weight decay (largest wd above smallest)", mean_rises,
              why="mean final IPR at the largest wd strictly above that at the smallest; between neighbouring "
                  "Inversion lanes it may stall (quick: 0.63 at wd 6, 0.62 at wd 10)"),
        Claim("Fig. 4: weight decay moves neurons to high IPR (share above 0.5 never falls with wd)", share_rises,
              why="the share of neurons with IPR > 0.5 non-decreasing from lane to lane, and higher at the "
                  "largest wd than at the smallest"),
    )

"""Appendix N: ReLU instead of the quadratic activation, beside the quadratic one."""

from grok_jax.presets import Claim, count, figure_config
from grok_jax.presets._variants import wd_xi_run


def get_config(scale: str = "quick"):
    run = wd_xi_run(scale)
    run.sweep.activation = ("quad", "relu")  # one panel each (a static axis: two programs, one store)
    config = figure_config("phase diagrams wd × ξ, quadratic and ReLU activation", "phases", activation=run)

    def relu(summary):
        forgetting = count(summary, ("Forgetting",), activation="relu")
        coexistence = count(summary, ("Coexistence",), activation="relu")
        return forgetting == 0 and coexistence > 0, f"ReLU: {forgetting} Forgetting, {coexistence} Coexistence cells"

    config.claims = (Claim("App. N: ReLU shows Coexistence with weight decay and no Forgetting phase", relu,
                           why="no Forgetting cell in the ReLU panel (the paper ties Forgetting to activations "
                               "of degree > 1) and at least one Coexistence cell"),)
    return config

"""grok_jax: phase diagrams of memorization vs generalization, one jitted pass per grid.

    >>> import grok_jax
    >>> ds = grok_jax.load_results("results/wd_xi")      # an xarray.Dataset
    >>> ds = grok_jax.run_sweep(grok_jax.load_config("wd_xi"))
"""

from grok_jax.config import load_config
from grok_jax.results import load_results

__all__ = ["load_config", "load_results", "run_sweep"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily so that ``python -m grok_jax.sweep`` does not import the
    # module it is about to run.
    if name == "run_sweep":
        from grok_jax.sweep import run_sweep

        return run_sweep
    raise AttributeError(f"module 'grok_jax' has no attribute {name!r}")

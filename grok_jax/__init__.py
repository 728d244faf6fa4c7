"""grok_jax: phase diagrams of memorization vs generalization, one jitted pass per grid.

    >>> import grok_jax
    >>> grok_jax.use_cpu_cores()  # doctest: +SKIP
    True
    >>> ds = grok_jax.run_sweep(grok_jax.load_config("tiny"), out="results/tiny", progress=False)
    grid seed[2] × wd[2] × xi[2] = 8 lanes; p=11 width=32 steps=60; ...
    >>> ds = grok_jax.load_results("results/tiny")       # an xarray.Dataset
    >>> dict(ds.test_acc.sizes)
    {'seed': 2, 'wd': 2, 'xi': 2, 'step': 4}

Importing grok_jax does not configure JAX; the command line splits a CPU into one
device per core (:func:`use_cpu_cores`: optional, and before any other JAX work) and
turns on the persistent compilation cache (:func:`grok_jax.programs.use_compilation_cache`).
"""

from grok_jax.config import load_config
from grok_jax.layouts import use_cpu_cores
from grok_jax.results import load_results

__all__ = ["load_config", "load_results", "run_sweep", "use_cpu_cores"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily so that ``python -m grok_jax.sweep`` does not import the
    # module it is about to run.
    if name == "run_sweep":
        from grok_jax.execution import run_sweep

        return run_sweep
    if name == "pruning":  # grok_jax.pruning.prune(...) after a plain `import grok_jax`
        import importlib

        return importlib.import_module("grok_jax.pruning")
    raise AttributeError(f"module 'grok_jax' has no attribute {name!r}")

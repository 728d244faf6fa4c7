"""grok_jax: phase diagrams of memorization vs generalization, one jitted pass per grid.

    >>> import grok_jax
    >>> ds = grok_jax.load_results("results/wd_xi")      # an xarray.Dataset
    >>> ds = grok_jax.run_sweep(grok_jax.load_config("wd_xi"))
"""

import os


def _one_cpu_device_per_core() -> None:
    """Splits the host into one XLA CPU device per core, unless XLA_FLAGS says
    otherwise. Sweeps shard lanes over devices, so on a CPU the cores then work on
    different lanes, as GPUs would; one CPU device runs the small batched matmuls
    of a sweep several times slower. Only the CPU backend is affected, and only if
    JAX has not started its backends yet."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count or 1}".strip()


_one_cpu_device_per_core()

from grok_jax.config import load_config  # noqa: E402
from grok_jax.results import load_results  # noqa: E402

__all__ = ["load_config", "load_results", "run_sweep"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily so that ``python -m grok_jax.sweep`` does not import the
    # module it is about to run.
    if name == "run_sweep":
        from grok_jax.sweep import run_sweep

        return run_sweep
    raise AttributeError(f"module 'grok_jax' has no attribute {name!r}")

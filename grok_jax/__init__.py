"""grok_jax: phase diagrams of memorization vs generalization, one jitted pass per grid.

    >>> import grok_jax
    >>> ds = grok_jax.load_results("results/wd_xi")      # an xarray.Dataset
    >>> ds = grok_jax.run_sweep(grok_jax.load_config("wd_xi"))
"""

import math
import os

import jax


def _usable_cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _one_cpu_device_per_core() -> None:
    """Splits the host into one XLA CPU device per usable core, unless the user
    chose a device count (XLA_FLAGS or jax_num_cpu_devices). Sweeps shard lanes over
    devices, so on a CPU the cores then work on different lanes, as GPUs would; one
    CPU device runs the small matmuls of a sweep about half as fast. Only the CPU
    backend is affected, and only if JAX has not started its backends yet."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    if jax.config.jax_num_cpu_devices != -1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", _usable_cores())
    except RuntimeError:  # JAX already ran something: keep the devices it has
        pass


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

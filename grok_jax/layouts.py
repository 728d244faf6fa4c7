"""Per-platform layout choices: how a chunk program lays out its work on a device.

Every choice here is a fixed function of the platform and the shapes, never of a
timing taken during a run, so the same command gives the same numbers every time;
the choices are recorded in the results store and reused when a sweep resumes.
Models do not import this module: it changes speed, and results at most by rounding.
The measurements behind the numbers are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax

# On a CPU, a step's gradient is computed over blocks of training rows with about
# this many bytes of activations (rows × width float32); with the pre-activations
# and their gradients a block's working set is a few times that, about a core's L2.
CPU_BLOCK_BYTES = 2**20
# On a CPU, the readout product for p in this range is padded by zero columns to the
# next multiple of 8: faster for most p there, slower for p 17 and 97 (the product
# alone, timed per p in benchmarks/README.md).
CPU_PADDED_COLUMNS = range(25, 65)
# A chunk whose estimated work exceeds this many seconds runs as a series of program
# calls of about this much work each (segments of logged blocks): its progress is
# reported and its state may be checkpointed between them. The estimate assumes the
# platform's NOMINAL_RATE, a fixed figure rather than a measured one, so that the
# programs never depend on a timing. A 2-core CPU VM does 0.5-1.5e11 FLOP/s.
SEGMENT_SECONDS = 5.0
NOMINAL_RATE = {"cpu": 1e11, "gpu": 1e14, "tpu": 1e14}


class Layout(NamedTuple):
    """How a chunk program of one compile group lays out its work on a device."""

    lanes_per_device: int  # lanes each device trains at once (vmap over them when > 1)
    row_blocks: int  # see row_blocks
    columns: int  # of the readout product (see readout_columns)
    segment: int  # logged blocks per program call (see segment_blocks)


def default_lanes_per_device(rules: str, n_max: int, width: int) -> int | None:
    """Most lanes per device in a chunk; ``None``: as many as memory allows.

    Accelerators want wide batches. A CPU core is fastest on one lane at a time
    (plain matmuls, activations in cache), except for tiny problems, where a few
    lanes share each chunk's fixed costs (1 vs 4 lanes per device on the small grid,
    timed per p and N in benchmarks/README.md).
    """
    if rules != "cpu":
        return None
    return 4 if n_max * width <= 16384 else 1


def row_blocks(rules: str, n_max: int, width: int, lanes_per_device: int, batchnorm: bool,
               batch_size: int = 0) -> int:
    """Row blocks of a step's gradient (see :func:`grok_jax.train.make_gradient`).

    A CPU device training one lane at a time computes the gradient over blocks of
    about :data:`CPU_BLOCK_BYTES` of activations, which stay in cache between the
    forward and backward passes (p 97, N 500: 9 blocks, 20-25% faster per step).
    Accelerators want the largest products, batched lanes gained nothing,
    BatchNorm couples all rows, and a mini-batch (``batch_size`` > 0) is small: one
    block there.

    Example:
      >>> row_blocks("cpu", n_max=4704, width=500, lanes_per_device=1, batchnorm=False)
      9
    """
    if rules != "cpu" or lanes_per_device != 1 or batchnorm or batch_size:
        return 1
    return min(n_max, max(1, -(-n_max * width * 4 // CPU_BLOCK_BYTES)))


def readout_columns(rules: str, p: int, lanes_per_device: int) -> int:
    """Columns of the readout product ``h·W`` (see :func:`grok_jax.models.mlp2.readout`):
    on a CPU device with one lane, p in :data:`CPU_PADDED_COLUMNS` is rounded up to a
    multiple of 8; elsewhere ``p``. The padded logits equal the plain ones (zero
    columns, sliced off).

    Example:
      >>> readout_columns("cpu", 31, 1), readout_columns("cpu", 97, 1), readout_columns("gpu", 31, 1)
      (32, 97, 31)
    """
    if rules != "cpu" or lanes_per_device != 1 or p not in CPU_PADDED_COLUMNS:
        return p
    return -(-p // 8) * 8


def segment_blocks(platform: str, flops: float, n_logs: int, every: int = 0) -> int:
    """Logged blocks per program call of a chunk whose devices each do ``flops``
    (estimated) over its ``n_logs`` logged blocks: ``every`` when given (a
    checkpoint interval), else all of them for a chunk of at most
    :data:`SEGMENT_SECONDS` at the platform's :data:`NOMINAL_RATE`, else about that
    much work per call. The numbers do not depend on it: every step is the same
    computation however the run is cut (it is recorded and reused on resume all the
    same, so that a resumed run runs the very same programs).

    Example:
      >>> segment_blocks("cpu", 2e12, 100), segment_blocks("cpu", 1e11, 100), segment_blocks("cpu", 1e11, 100, 4)
      (25, 100, 4)
    """
    if every:
        return min(every, n_logs)
    calls = math.ceil(flops / NOMINAL_RATE.get(platform, 1e14) / SEGMENT_SECONDS)
    return max(1, math.ceil(n_logs / max(1, calls)))


def layout_rules(platform: str, accelerator_layout: bool = False) -> str:
    """Whose layout rules a sweep follows: ``"cpu"`` on a CPU, else (or when forced,
    to test that path on a CPU) ``"accelerator"``. The rules choose the layout; the
    platform only the nominal rate that sizes segments.

    Example:
      >>> layout_rules("cpu"), layout_rules("cpu", accelerator_layout=True), layout_rules("gpu")
      ('cpu', 'accelerator', 'accelerator')
    """
    return "cpu" if platform == "cpu" and not accelerator_layout else "accelerator"


def layout(rules: str, n_max: int, width: int, p: int, lanes_per_device: int, batchnorm: bool,
           batch_size: int, segment: int) -> Layout:
    """The :class:`Layout` of a group's chunks with ``lanes_per_device`` lanes each,
    run in calls of ``segment`` logged blocks (:func:`segment_blocks`), by the layout
    ``rules`` (:func:`layout_rules`)."""
    return Layout(lanes_per_device, row_blocks(rules, n_max, width, lanes_per_device, batchnorm, batch_size),
                  readout_columns(rules, p, lanes_per_device), segment)


def usable_cores() -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def use_cpu_cores() -> bool:
    """Splits the host into one XLA CPU device per usable core, so that a sweep's
    cores train different lanes, as GPUs would (one CPU device runs a sweep's small
    matmuls about half as fast). The command line calls it first thing; call it
    yourself before anything else runs JAX in your process. It does nothing when you
    chose a device count (``XLA_FLAGS=--xla_force_host_platform_device_count`` or
    ``jax_num_cpu_devices``) or JAX has started its backends already; returns whether
    it set the count. Only the CPU backend is affected.

    Example:
      >>> import grok_jax
      >>> grok_jax.use_cpu_cores()  # doctest: +SKIP
      True
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    if jax.config.jax_num_cpu_devices != -1:
        return False
    try:
        jax.config.update("jax_num_cpu_devices", usable_cores())
    except RuntimeError:  # JAX already ran something: keep the devices it has
        return False
    return True

"""What the command lines share: one-line errors with an exit status, and the
start-up of JAX (CPU devices, hosts, the compilation cache)."""

from __future__ import annotations

import logging as std_logging
import re
import sys
from typing import NamedTuple

import jax

from grok_jax import layouts
from grok_jax.errors import ConfigError
from grok_jax.programs import use_compilation_cache


class Hosts(NamedTuple):
    """The multi-host flags (all ``None``/False: one process)."""

    auto: bool = False  # --distributed: the cluster's own settings
    address: str | None = None  # --coordinator_address
    count: int | None = None  # --num_processes
    index: int | None = None  # --process_id


def fail(error: Exception | str, status: int = 2) -> None:
    """One line on stderr, no traceback: bad input exits with status 2, a store or
    figure that could not be written with 1."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(status)


def check_hosts(hosts: Hosts) -> None:
    """``ConfigError`` for multi-host flags no cluster can have (before anything runs)."""
    given = [hosts.address is not None, hosts.count is not None, hosts.index is not None]
    if any(given) and not all(given):
        raise ConfigError("--coordinator_address, --num_processes and --process_id go together (or use "
                          "--distributed on a TPU VM or under SLURM)")
    if not all(given):
        return
    match = re.fullmatch(r"(.+):(\d+)", hosts.address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"--coordinator_address={hosts.address!r} must be HOST:PORT with a port in 1-65535, "
                          "e.g. node0:12345")
    if hosts.count < 1:
        raise ConfigError(f"--num_processes={hosts.count} must be >= 1")
    if not 0 <= hosts.index < hosts.count:
        raise ConfigError(f"--process_id={hosts.index} must be in [0, --num_processes={hosts.count})")


def start(cache: str, cache_given: bool, hosts: Hosts = Hosts()) -> None:
    """Starts JAX for a command line, after its input is checked: one CPU device per
    core, ``jax.distributed`` for several hosts, the persistent compilation cache
    (``cache``; '' for none; a directory the user named must work)."""
    std_logging.getLogger("jax").setLevel(std_logging.WARNING)  # no INFO about absent TPUs
    layouts.use_cpu_cores()  # before anything runs JAX
    if hosts.auto or hosts.address is not None:
        # Processes coordinate (the store's setup, the end) through collectives; CPUs have them with gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            if hosts.auto:
                jax.distributed.initialize()
            else:
                jax.distributed.initialize(hosts.address, num_processes=hosts.count, process_id=hosts.index)
        except (RuntimeError, ValueError) as e:
            fail(ConfigError(f"jax.distributed.initialize failed: {e}"))
    if cache:
        try:
            use_compilation_cache(cache)
        except OSError as e:
            if cache_given:
                fail(ConfigError(f"--compilation_cache={cache} is not usable ({e.strerror or e}); choose another "
                                 "directory, or '' to compile every time"))
            print(f"warning: no compilation cache ({cache}: {e.strerror or e})", file=sys.stderr)

"""Errors the command line reports in one line: bad input (status 2), a store it
could not write or another process that failed (status 1), a run stopped by SIGTERM
(status 75). A :class:`RunError` carries its exit status, so each command line maps
them with one ``except RunError as e: fail(e, e.status)``."""

PREEMPTED_STATUS = 75  # EX_TEMPFAIL of sysexits.h: "try again later"


class ConfigError(ValueError):
    """Bad input; its message is one line naming the bad value and the valid ones.

    The command line prints it without a traceback and exits with status 2.
    """


class RunError(RuntimeError):
    """A run that could not go on although its input was fine; ``status`` is the
    command line's exit status."""

    status = 1


class StoreWriteError(RunError):
    """The results store could not be written (no space left, permission lost, an
    I/O error); its message is one line naming the path and the cause.

    The input was fine: the command line prints it without a traceback and exits
    with status 1. What was committed before stays in the store, resumable.
    """


class StoreDamaged(RunError):
    """A chunk of the results store cannot be read (bytes overwritten, a file
    truncated); its message is one line naming the variable, the lanes and what to
    do. The command line exits with status 1."""


class Preempted(RunError):
    """The run got SIGTERM (a preemptible VM or SLURM stopping it), or another process
    of a multi-host sweep did, and stopped at the next safe point, its in-flight
    chunk checkpointed; running the same command again resumes it. The command line
    exits with :data:`PREEMPTED_STATUS`."""

    status = PREEMPTED_STATUS


class PeerFailed(RunError):
    """Another process of a multi-host sweep failed (its own message says why); this
    process's lanes are committed. The command line exits with status 1."""

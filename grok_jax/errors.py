"""Errors the command line reports in one line: bad input (status 2), a store it
could not write or another process that failed (status 1), a run stopped by SIGTERM
(status 75)."""


class ConfigError(ValueError):
    """Bad input; its message is one line naming the bad value and the valid ones.

    The command line prints it without a traceback and exits with status 2.
    """


class StoreWriteError(RuntimeError):
    """The results store could not be written (no space left, permission lost, an
    I/O error); its message is one line naming the path and the cause.

    The input was fine: the command line prints it without a traceback and exits
    with status 1. What was committed before stays in the store, resumable.
    """


class StoreDamaged(RuntimeError):
    """A chunk of the results store cannot be read (bytes overwritten, a file
    truncated); its message is one line naming the variable, the lanes and what to
    do. The command line exits with status 1."""


class Preempted(RuntimeError):
    """The run got SIGTERM (a preemptible VM or SLURM stopping it), or another process
    of a multi-host sweep did, and stopped at the next safe point, its in-flight
    chunk checkpointed; running the same command again resumes it. The command line
    exits with :data:`PREEMPTED_STATUS`."""


class PeerFailed(RuntimeError):
    """Another process of a multi-host sweep failed (its own message says why); this
    process's lanes are committed. The command line exits with status 1."""


PREEMPTED_STATUS = 75  # EX_TEMPFAIL of sysexits.h: "try again later"

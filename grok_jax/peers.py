"""How the processes of a sweep stop together.

A SIGTERM (a preempted host, SLURM stopping the job) asks a sweep to stop at its
next safe point (:func:`sigterm_stops`). With several processes
(``jax.distributed``) they tell each other of a stop and of their end through the
key-value store of JAX's coordination service (:class:`Peers`): a SIGTERM or a
failure of any process stops every process, and none returns before all have
ended. JAX has no public API for that store; this module is the only one that
reaches it (as orbax does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from grok_jax.errors import ConfigError, PeerFailed, Preempted


class _Stop:
    """Set by SIGTERM while a sweep runs (see :func:`sigterm_stops`)."""

    requested = False


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While a sweep writes its store, SIGTERM asks it to stop at the next safe point
    (the chunk runner) instead of killing it; elsewhere, and outside the main thread,
    SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Stop.requested = False
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(_Stop, "requested", True))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _Stop.requested = False


class Peers:
    """The processes of a sweep (``jax.distributed``), telling each other of a stop
    and of their end through the key-value store of JAX's coordination service. A
    SIGTERM or a failure of any process stops every process at its next safe point
    (each with its own checkpoint), and none returns before all have ended. Without a
    ``run_id`` (one process), only its own SIGTERM. (JAX has no public API for the
    store; orbax reaches it the same way.)"""

    POLL_SECONDS = 1.0  # how often a process that has ended asks whether the others have

    def __init__(self, run_id: int | None = None, log: Callable[[str], None] = print) -> None:
        self.count = jax.process_count() if run_id is not None else 1
        self.me, self.log = jax.process_index(), log
        self.prefix = f"grok_jax/{run_id}/"  # a run's own keys: run_id is process 0's, broadcast
        self.stopped_by: int | None = None  # the process whose stop stops this one
        self.reason = ""  # what stopped it: "SIGTERM", "a failure", "Ctrl-C"
        if self.count > 1 and self._client() is None:
            raise ConfigError("several JAX processes but no jax.distributed client: start them with "
                              "--coordinator_address, --num_processes and --process_id, or --distributed")

    @staticmethod
    def _client() -> Any:
        return jax._src.distributed.global_state.client

    def _entries(self, kind: str) -> dict[int, str]:
        found = self._client().key_value_dir_get(self.prefix + kind + "/")
        return {int(key.rsplit("/", 1)[1]): value for key, value in found}

    def _announce(self, reason: str) -> None:
        self.stopped_by, self.reason = self.me, reason
        if self.count > 1:
            self._client().key_value_set(f"{self.prefix}stop/{self.me}", reason)

    def stop_requested(self) -> bool:
        """Whether this process got SIGTERM or another process stopped (one RPC with
        several processes: asked once per segment boundary and chunk)."""
        if self.stopped_by is None and _Stop.requested:
            self._announce("SIGTERM")
        elif self.stopped_by is None and self.count > 1:
            stops = self._entries("stop")
            if stops:
                self.stopped_by = min(stops)
                self.reason = stops[self.stopped_by]
        return self.stopped_by is not None

    def why(self) -> str:
        """What stopped this process, for its message: ``SIGTERM``, or e.g.
        ``SIGTERM of process 1``."""
        return self.reason + ("" if self.stopped_by == self.me else f" of process {self.stopped_by}")

    def _wait(self, status: str) -> dict[int, str]:
        """Marks this process's end (done, stopped or failed) and waits for every
        other's: ``{process: status}``. A SIGTERM while waiting stops the others."""
        if self.count == 1:
            return {self.me: status}
        self._client().key_value_set(f"{self.prefix}end/{self.me}", status)
        ends = self._entries("end")
        if len(ends) < self.count:
            waiting = sorted(set(range(self.count)) - set(ends))
            self.log(f"process {self.me}: waiting for process(es) {', '.join(map(str, waiting))} to end")
        while len(ends) < self.count:
            time.sleep(self.POLL_SECONDS)
            self.stop_requested()
            ends = self._entries("end")
        return ends

    def finished(self, path: str) -> None:
        """This process's share is committed; returns once every process's is.
        :class:`Preempted` when another stopped, :class:`PeerFailed` when one failed."""
        try:
            ends = self._wait("done")
        except KeyboardInterrupt:  # the others are told, and stop
            with contextlib.suppress(Exception):
                self._announce("Ctrl-C")
            raise
        raise_if_failed(ends, f"the lanes of this process are committed to {path}: run the same command again "
                               "to resume")
        if "stopped" in ends.values():
            self.stop_requested()
            raise Preempted(f"stopped by {self.why()} after the lanes of this process were committed to {path}: "
                            "run the same command again to resume")

    def stopped(self, error: BaseException) -> None:
        """This process ends with ``error``: the others are told (a failure stops them
        too) and waited for, at best effort; :class:`PeerFailed` (from ``error``)
        when this one was stopped (:class:`Preempted`) and another failed."""
        preempted, ends = isinstance(error, Preempted), {}
        # Each call on its own: the coordination service may be gone, and the real error must stay.
        if self.stopped_by is None:
            with contextlib.suppress(Exception):
                self._announce("Ctrl-C" if isinstance(error, KeyboardInterrupt) else "a failure")
        with contextlib.suppress(Exception):
            ends = self._wait("stopped" if preempted else "failed")
        if preempted:
            raise_if_failed(ends, str(error), error)


def raise_if_failed(ends: dict[int, str], then: str, cause: BaseException | None = None) -> None:
    """:class:`PeerFailed` naming the first process whose end (``{process: status}``)
    is a failure, followed by ``then``."""
    failed = sorted(k for k, v in ends.items() if v == "failed")
    if failed:
        raise PeerFailed(f"process {failed[0]} failed (see its error); {then}") from cause



def open_store_first(setup: Callable[[], Any], path: str) -> int:
    """Several processes (``jax.distributed``): process 0 creates or resumes the store
    (``setup``) while the others wait. Returns the run's id, process 0's
    (the keys of :class:`Peers`); raises on every process if process 0 failed."""
    error, run_id = None, 0
    if jax.process_index() == 0:
        try:
            setup()
            run_id = 1 + int.from_bytes(os.urandom(3), "little")  # 0: the store could not be opened
        except BaseException as e:  # (anything: the others are waiting for the broadcast)
            error = e
    run_id = int(multihost_utils.broadcast_one_to_all(np.int32(run_id)))
    if error is not None:
        raise error
    if not run_id:
        raise ConfigError(f"process 0 could not open {path}; see its error")
    return run_id


"""The command line with a fault injected at a named point of the results store.

    python tests/faults.py FAULT N -- --grid=tiny --out=DIR ...

FAULT is one of:
  kill_creating      SIGKILL once the new (or grown) store is built, before its rename into place
  kill_mid_swap      SIGKILL once the store is moved aside, before the grown one is renamed into place
  kill_before_done   SIGKILL at the N-th chunk commit, its variables written, before its done mark
  kill_after_commit  SIGKILL right after the N-th chunk commit (between chunks)
  interrupt          Ctrl-C (KeyboardInterrupt) at the N-th chunk commit, before its done mark
  enospc             the N-th chunk commit fails with "No space left on device" after its
                     first two variable writes (raised by the zarr store, as a full disk would)
  checkpoint_enospc  the N-th in-flight checkpoint fails with "No space left on device"
  kill_before_schedule  SIGKILL before a refined sweep stores its N-th round (between rounds)
  kill_compiling     SIGKILL while the N-th program compiles
  kill_after_checkpoint  SIGKILL right after the N-th in-flight checkpoint is saved (mid-chunk)
  term_compiling     SIGTERM while the N-th program compiles
  term_mid_chunk     SIGTERM once the N-th segment of training is dispatched (while it runs)
  term_after_commit  SIGTERM right after the N-th chunk commit (between chunks)
  term_before_done   SIGTERM during the N-th chunk commit, before its done mark

With several processes (jax.distributed), to order the processes' stops:
  wait_for_stop      once the N-th segment is dispatched, wait until another process asks all to stop
  term_after_stop    the same, then SIGTERM
  term_after_end     once the N-th segment is dispatched, wait until process 0 has ended, then SIGTERM

A SIGKILL leaves no chance to clean up: what the store holds then is what any crash
at that point would leave.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import time

import jax
import zarr.storage

from grok_jax import checkpoints, peers, results, runner
from grok_jax.sweep import main as sweep_main


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupt() -> None:
    raise KeyboardInterrupt


def _enospc() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _term() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


_PEERS: list = []  # the sweep's peers.Peers


def _record_peers() -> None:
    init = peers.Peers.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _PEERS.append(self)

    peers.Peers.__init__ = recording


def _wait_for(kind: str, process: int | None = None) -> None:
    """Waits until a process (``process``, where given) has a key of ``kind``
    (``stop`` or ``end``) in the key-value store of the sweep's processes."""
    while not any(process in (None, k) for k in _PEERS[-1]._entries(kind)):
        time.sleep(0.05)


def _wait_for_stop() -> None:
    _wait_for("stop")


def _term_after_stop() -> None:
    _wait_for("stop")
    _term()


def _term_after_end() -> None:
    _wait_for("end", 0)
    _term()


def _on_call(fn, n: int, before=None, after=None):
    """``fn`` with ``before``/``after`` run around its ``n``-th call."""
    calls = [0]

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and before:
            before()
        out = fn(*args, **kwargs)
        if calls[0] == n and after:
            after()
        return out

    return wrapped


def _moved_aside_then_kill(partial: str, path: str, aside: str) -> None:
    """The first of the two renames that put a grown store in place, then SIGKILL."""
    parent, name = os.path.split(os.path.abspath(path))
    os.rename(path, os.path.join(parent, f"{aside.format(name=name)}killed"))
    _kill()


def _compiling(n: int, fault) -> None:
    """``fault`` as the ``n``-th program compiles (a SIGTERM only sets a flag: it then compiles)."""
    jax.stages.Lowered.compile = _on_call(jax.stages.Lowered.compile, n, before=fault)


def _disk_full_after(writes: int) -> None:
    """Every store write after the next ``writes`` fails as on a full disk."""
    set_ = zarr.storage.LocalStore.set
    left = [writes]

    async def failing_set(self, key, value):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= 1
        return await set_(self, key, value)

    zarr.storage.LocalStore.set = failing_set


def main() -> None:
    fault, n, sep, *args = sys.argv[1:]
    assert sep == "--", __doc__
    n = int(n)
    if fault == "kill_creating":
        results._publish = lambda partial, path, aside: _kill()
    elif fault == "kill_mid_swap":
        results._publish = _moved_aside_then_kill
    elif fault == "kill_before_done":
        results._mark_done = _on_call(results._mark_done, n, before=_kill)
    elif fault == "kill_after_commit":
        results._mark_done = _on_call(results._mark_done, n, after=_kill)
    elif fault == "interrupt":
        results._mark_done = _on_call(results._mark_done, n, before=_interrupt)
    elif fault == "kill_before_schedule":
        results.schedule = _on_call(results.schedule, n, before=_kill)
    elif fault == "kill_compiling":
        _compiling(n, _kill)
    elif fault == "term_compiling":
        _compiling(n, _term)
    elif fault == "kill_after_checkpoint":
        checkpoints.save = _on_call(checkpoints.save, n, after=_kill)
    elif fault == "term_mid_chunk":
        runner.Runner._dispatch_segment = _on_call(runner.Runner._dispatch_segment, n, after=_term)
    elif fault == "term_after_commit":
        results._mark_done = _on_call(results._mark_done, n, after=_term)
    elif fault == "term_before_done":
        results._mark_done = _on_call(results._mark_done, n, before=_term)
    elif fault in ("wait_for_stop", "term_after_stop", "term_after_end"):
        _record_peers()
        after = {"wait_for_stop": _wait_for_stop, "term_after_stop": _term_after_stop,
                 "term_after_end": _term_after_end}[fault]
        runner.Runner._dispatch_segment = _on_call(runner.Runner._dispatch_segment, n, after=after)
    elif fault == "checkpoint_enospc":
        checkpoints.save = _on_call(checkpoints.save, n, before=_enospc)
    elif fault == "enospc":
        results.write = _on_call(results.write, n, before=lambda: _disk_full_after(2))
    else:
        raise SystemExit(f"unknown fault {fault!r}\n{__doc__}")
    sweep_main(args)


if __name__ == "__main__":
    main()

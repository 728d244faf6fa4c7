"""A sweep over two processes on 127.0.0.1 (jax.distributed, CPU collectives with
gloo) writes the same store as one process, also when both are stopped by SIGTERM
and run again; bad multi-host flags fail in one line."""

import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from compare import assert_same_results

from grok_jax import plan as planning
from grok_jax import results
from grok_jax.config import load_config
from grok_jax.errors import PREEMPTED_STATUS

# 16 lanes, one per device: each process (2 devices) trains every other block of 2
# lanes (a store chunk), 4 chunks of 2 lanes, each in two segments of 20 steps.
ARGS = ["-m", "grok_jax.sweep", "--grid=tiny", "--config.sweep.seed=(0,1,2,3)", "--config.steps=40",
        "--lanes_per_device=1", "--checkpoint_steps=20"]
FAULTS = os.path.join(os.path.dirname(__file__), "faults.py")


def _env(devices: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out, *fault: tuple | None) -> list[tuple[int, str, str]]:
    """``(status, stdout, stderr)`` of each process of a two-process sweep into
    ``out``; process i stopped by ``fault[i]`` (see ``faults.py``) where given.
    Output goes to files (a full pipe would block a process); a process that hangs
    fails the test after 300 s."""
    port, procs, logs = _free_port(), [], []
    os.makedirs(f"{out}.logs", exist_ok=True)
    for i in range(2):
        command = [FAULTS, *map(str, fault[i]), "--", *ARGS[2:]] if fault and fault[i] else ARGS
        logs.append([open(f"{out}.logs/{i}.{name}", "w+") for name in ("out", "err")])
        procs.append(subprocess.Popen([sys.executable, *command, f"--out={out}", f"--process_id={i}",
                                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"],
                                      env=_env(2), stdout=logs[i][0], stderr=logs[i][1], text=True))
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            p.kill()  # (a hung one)
    outs = []
    for p, files in zip(procs, logs):
        for f in files:
            f.seek(0)
        outs.append((p.returncode, *(f.read() for f in files)))
        for f in files:
            f.close()
    return outs


# A two-process run stopped (see faults.py): process 0's fault, process 1's.
STOPS = {
    "both": (("term_mid_chunk", 1), ("term_after_stop", 1)),  # the whole job preempted, in the first chunk
    "mid_chunk": (("wait_for_stop", 1), ("term_mid_chunk", 3)),  # process 0 trains when process 1 stops
    "waiting": (None, ("term_after_end", 3)),  # process 0 is done, waiting for process 1, when it stops
    "failed": (("wait_for_stop", 1), ("enospc", 2)),  # process 1 cannot commit its 2nd chunk (a full disk)
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One process and two processes; per entry of STOPS: the two processes stopped,
    the checkpoints they left, the same command run again, the store and files then."""
    tmp = tmp_path_factory.mktemp("multihost")
    with ThreadPoolExecutor(max_workers=1) as pool:
        one = pool.submit(subprocess.run, [sys.executable, *ARGS, f"--out={tmp / 'one'}"], env=_env(2),
                          capture_output=True, text=True, timeout=300)
        two = _two_processes(tmp / "two")
        one = one.result()
    assert one.returncode == 0, one.stderr
    stops = {}
    for name, faults in STOPS.items():
        stopped = _two_processes(tmp / name, *faults)
        inflight = sorted(os.listdir(tmp / name / ".results.zarr.inflight"))
        resumed = _two_processes(tmp / name)
        stops[name] = stopped, inflight, resumed, results.load_results(tmp / name), sorted(os.listdir(tmp / name))
    # Stopped with two processes, resumed by one: the stored plan, another process count.
    _two_processes(tmp / "to_one", *STOPS["both"])
    alone = subprocess.run([sys.executable, *ARGS, f"--out={tmp / 'to_one'}"], env=_env(2), capture_output=True,
                           text=True, timeout=300)
    return {"one": results.load_results(tmp / "one"), "two": results.load_results(tmp / "two"), "outputs": two,
            "stops": stops, "to_one": (alone, results.load_results(tmp / "to_one"))}


def test_two_processes_write_the_store_of_one(stores):
    outs, a, b = stores["outputs"], stores["one"], stores["two"]
    for status, _, stderr in outs:
        assert status == 0, stderr
    assert "wd \\ xi" in outs[0][1] and "wd \\ xi" not in outs[1][1]  # process 0 reports
    assert "4 chunk(s) of 2 lanes" in outs[0][1]  # its share: 8 of the 16 lanes
    assert bool(b.done.all())
    assert_same_results(b, a)
    runs = json.loads(b.attrs["runs"])
    assert runs[0]["process_count"] == 2 and runs[0]["devices"] == 4 and runs[0]["local_devices"] == 2


def test_a_two_process_store_resumes_with_one_process(stores):
    alone, store = stores["to_one"]
    assert alone.returncode == 0 and "at step 20 from its checkpoint" in alone.stdout, alone.stdout + alone.stderr
    assert_same_results(store, stores["one"])


# Each process's exit status and how its last line starts; which checkpoints there
# are; the lanes done then.
MID = (PREEMPTED_STATUS, "stopped by SIGTERM at step 20")  # of this process
TERM = (PREEMPTED_STATUS, "stopped by SIGTERM of process 1 at step 20")
STOPPED = {
    "both": ((MID, MID), ["process-0", "process-1"], 0),
    "mid_chunk": ((TERM, MID), ["process-0", "process-1"], 2),
    "waiting": (((PREEMPTED_STATUS, "stopped by SIGTERM of process 1 after the lanes"), MID), ["process-1"], 10),
    "failed": (((1, "process 1 failed (see its error)"), (1, "cannot write")), ["process-0", "process-1"], 2),
}


@pytest.mark.parametrize("name", list(STOPS))
def test_a_stop_of_one_process_stops_every_process_and_they_resume_to_the_same_store(stores, name):
    """After a SIGTERM of any process, every process exits with 75 (so that a retry
    loop on each host runs the sweep again with all its processes), each mid-chunk
    one with its own checkpoint; after a failure of one, every process exits with 1."""
    stopped, inflight, resumed, store, files = stores["stops"][name]
    said, checkpointed, done = STOPPED[name]
    for (status, _, stderr), (want, words) in zip(stopped, said):
        last = stderr.strip().splitlines()[-1]
        assert status == want and last.startswith(f"error: {words}") and "run the same" in last, stderr
        if status == PREEMPTED_STATUS:  # a process knows only its own share's commits
            assert re.search(r"\b\d of the 8 lanes of this process are committed|after the lanes of this", last), last
    assert inflight == checkpointed
    assert f"{done} lanes already done" in resumed[0][1]
    for i, (status, stdout, stderr) in enumerate(resumed):
        assert status == 0, stderr
        assert ("at step 20 from its checkpoint" in stdout) == (f"process-{i}" in checkpointed), stdout
    assert_same_results(store, stores["two"])  # the uninterrupted two-process store, bit for bit
    assert [f for f in files if f.startswith(".")] == [".results.zarr.lock"]  # no checkpoint left


def test_each_process_owns_whole_store_chunks():
    config = load_config("tiny")
    config.sweep.seed = (0, 1, 2, 3)
    plan = planning.make_plan(config, planning.Resources(lanes_per_device=1, n_devices=2))
    assert plan.store_chunk == 2
    shares = [plan.share(i, 3, np.ones(16, bool)) for i in range(3)]
    lanes = [np.concatenate([c.real for c in share]) for share in shares]
    assert sorted(np.concatenate(lanes).tolist()) == list(range(16))  # every lane once
    for i, mine in enumerate(lanes):
        assert set(mine // 2 % 3) == {i}  # whole blocks of 2 lanes (a store chunk), dealt in turn
    assert all(len(c.lanes) == 2 for share in shares for c in share)  # 1 lane on each of 2 devices


@pytest.mark.parametrize("flags,message", [
    (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in [0, --num_processes=2)"),
    (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"],
     "--coordinator_address='127.0.0.1' must be HOST:PORT"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=0", "--process_id=0"], "--num_processes=0 must be >= 1"),
])
def test_bad_multihost_flags(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, *ARGS, f"--out={tmp_path}", *flags], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not os.path.exists(tmp_path / "results.zarr")

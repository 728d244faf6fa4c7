"""A sweep over two processes on 127.0.0.1 (jax.distributed, CPU collectives with
gloo) writes the same store as one process; bad multi-host flags fail in one line."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from compare import assert_same_results

from grok_jax import plan as planning
from grok_jax import results
from grok_jax.config import load_config

# 16 lanes, one per device: each process (2 devices) trains every other block of 2
# lanes (a store chunk), 4 chunks of 2 lanes, each in two segments of 20 steps.
ARGS = ["-m", "grok_jax.sweep", "--grid=tiny", "--config.sweep.seed=(0,1,2,3)", "--config.steps=40",
        "--lanes_per_device=1", "--checkpoint_steps=20"]


def _env(devices: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_store_of_one(tmp_path):
    port = _free_port()
    two = [subprocess.Popen([sys.executable, *ARGS, f"--out={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}"], env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
    one = subprocess.run([sys.executable, *ARGS, f"--out={tmp_path / 'one'}"], env=_env(2), capture_output=True,
                         text=True, timeout=300)
    outs = [p.communicate(timeout=300) for p in two]
    assert one.returncode == 0, one.stderr
    for p, (stdout, stderr) in zip(two, outs):
        assert p.returncode == 0, stderr
    assert "wd \\ xi" in outs[0][0] and "wd \\ xi" not in outs[1][0]  # process 0 reports
    assert "4 chunk(s) of 2 lanes" in outs[0][0]  # its share: 8 of the 16 lanes
    a, b = results.load_results(tmp_path / "one"), results.load_results(tmp_path / "two")
    assert bool(b.done.all())
    assert_same_results(b, a)
    runs = json.loads(b.attrs["runs"])
    assert runs[0]["process_count"] == 2 and runs[0]["devices"] == 4 and runs[0]["local_devices"] == 2


def test_each_process_owns_whole_store_chunks():
    config = load_config("tiny")
    config.sweep.seed = (0, 1, 2, 3)
    plan = planning.make_plan(config, 4.0, 2, 1, "cpu")
    shares = [planning.process_chunks(plan, {(0, 72): 1}, 2, i, 3) for i in range(3)]
    lanes = [np.concatenate([c.lanes[:c.count] for c in share]) for share in shares]
    assert sorted(np.concatenate(lanes).tolist()) == list(range(16))  # every lane once
    for i, mine in enumerate(lanes):
        assert set(mine // 2 % 3) == {i}  # whole blocks of 2 lanes (a store chunk), dealt in turn
    assert all(len(c.lanes) == 2 for share in shares for c in share)  # 1 lane on each of 2 devices


@pytest.mark.parametrize("flags,message", [
    (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in [0, --num_processes=2)"),
])
def test_bad_multihost_flags(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, *ARGS, f"--out={tmp_path}", *flags], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not os.path.exists(tmp_path / "results.zarr")

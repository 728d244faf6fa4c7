"""The command line end to end on the tiny grid, resuming, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import grok_jax


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "grok_jax.sweep", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    proc = _run("--grid=tiny", f"--out={out}", "--config.steps=40")
    assert proc.returncode == 0, proc.stderr
    assert "8 lanes" in proc.stdout and "wd \\ xi" in proc.stdout
    for name in ("phase_diagram.png", "test_acc.png", "train_acc.png"):
        assert (out / name).stat().st_size > 10_000
    ds = grok_jax.load_results(out)
    assert dict(ds.sizes) == {"seed": 2, "wd": 2, "xi": 2, "step": 3, "neuron": 32}
    assert list(ds.xi.values) == [0.0, 0.3] and list(ds.step.values) == [0, 20, 40]
    assert json.loads(ds.attrs["config"])["steps"] == 40
    assert bool(ds.done.all()) and set(np.unique(ds.phase)) <= set(range(7))
    assert ds.phase_majority.dims == ("wd", "xi")
    # Accuracies are fractions of whole examples (72 training pairs at α = 0.6, p = 11).
    np.testing.assert_allclose(ds.train_acc * 72, np.round(ds.train_acc * 72), atol=1e-3)

    # Same config again: everything is done already, nothing is recomputed or lost
    # (compile groups change only the padding: not another config).
    before = ds.train_loss.values.copy()
    again = _run("--grid=tiny", f"--out={out}", "--config.steps=40", "--config.compile_groups=3")
    assert again.returncode == 0, again.stderr
    assert "8 lanes already done" in again.stdout
    np.testing.assert_array_equal(grok_jax.load_results(out).train_loss.values, before)

    # Another config into the same store: refused, store untouched.
    other = _run("--grid=tiny", f"--out={out}", "--config.steps=60")
    assert other.returncode == 2 and "steps=40" in other.stderr.replace("'", "")
    np.testing.assert_array_equal(grok_jax.load_results(out).train_loss.values, before)


@pytest.mark.parametrize("args,needle", [
    (["--grid=nope"], "unknown grid 'nope'; valid grids: "),
    (["--grid=tiny", "--config.sweep.xi=(0.0,1.5)"], "xi=1.5"),
    (["--grid=tiny", "--config.alpha=0.005"], "alpha=0.005"),
    (["--grid=tiny", "--config.task=div", "--config.p=12"], "p=12"),
    (["--grid=tiny", "--config.sweep.width=(8,16)"], "'width'"),
    (["--grid=tiny", "--scale=huge"], "huge"),
    (["--grid=tiny", "--out=/proc/grok_jax_out"], "/proc"),
    (["--grid=tiny", "--config.sweep.seed=(0.5,0.7)"], "0.5"),
    (["--grid=tiny", "--config.sweep.xi=('a',)"], "'a'"),
    (["--grid=tiny", "--config.stepz=3"], "stepz"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    if not any(a.startswith("--out") for a in args):
        args = [*args, f"--out={tmp_path / 'x'}"]
    proc = _run(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()  # nothing written


def test_sharded_over_two_devices_matches_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    two = _run("--grid=tiny", f"--out={tmp_path / 'two'}", "--config.steps=20", env=env)
    assert two.returncode == 0, two.stderr
    assert "on 2 cpu device(s)" in two.stdout
    one = _run("--grid=tiny", f"--out={tmp_path / 'one'}", "--config.steps=20",
               env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
    assert one.returncode == 0, one.stderr
    assert "on 1 cpu device(s)" in one.stdout
    a, b = grok_jax.load_results(tmp_path / "two"), grok_jax.load_results(tmp_path / "one")
    for name in ("train_loss", "test_acc", "ipr_k"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, err_msg=name)

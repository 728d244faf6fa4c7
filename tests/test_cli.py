"""The command line end to end on the tiny grid, resuming, and bad input."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import grok_jax
from grok_jax import sweep
from grok_jax.layouts import usable_cores
from grok_jax.plan import Resources, make_plan


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "grok_jax.sweep", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _main(capsys, *args):
    """``sweep.main`` in this process (no compilation cache): (exit status, stdout, stderr)."""
    try:
        sweep.main([*args, "--compilation_cache="])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, stderr = _main(capsys, "--grid=tiny", f"--out={out}", "--config.steps=40")
    assert status == 0, stderr
    assert "8 lanes" in stdout and "wd \\ xi" in stdout
    for name in ("phase_diagram.png", "test_acc.png", "train_acc.png"):
        assert (out / name).stat().st_size > 10_000
    ds = grok_jax.load_results(out)
    assert dict(ds.sizes) == {"seed": 2, "wd": 2, "xi": 2, "step": 3, "hidden": 32, "operand": 11, "logit": 11,
                              "opt_value": 2 * 3 * 11 * 32 + 1}  # AdamW's moments of U, V, W and its count
    assert list(ds.xi.values) == [0.0, 0.3] and list(ds.step.values) == [0, 20, 40]
    assert json.loads(ds.attrs["config"])["steps"] == 40
    assert bool(ds.done.all()) and set(np.unique(ds.phase)) <= set(range(7))
    assert ds.phase_majority.dims == ("wd", "xi")
    # Accuracies are fractions of whole examples (72 training pairs at α = 0.6, p = 11).
    np.testing.assert_allclose(ds.train_acc * 72, np.round(ds.train_acc * 72), atol=1e-3)

    # Same config again: everything is done already, nothing is recomputed or lost
    # (compile groups change only the padding: not another config).
    before = ds.train_loss.values.copy()
    status, stdout, stderr = _main(capsys, "--grid=tiny", f"--out={out}", "--config.steps=40",
                                   "--config.compile_groups=3")
    assert status == 0, stderr
    assert "8 lanes already done" in stdout
    np.testing.assert_array_equal(grok_jax.load_results(out).train_loss.values, before)

    # Another config into the same store: refused, store untouched.
    status, _, stderr = _main(capsys, "--grid=tiny", f"--out={out}", "--config.steps=40", "--config.lr=0.02")
    assert status == 2 and "lr=0.01 there, 0.02 now" in stderr and "--overwrite" in stderr
    np.testing.assert_array_equal(grok_jax.load_results(out).train_loss.values, before)

    # Replaced on request: the new config's results, nothing of the old store left beside it.
    status, stdout, stderr = _main(capsys, "--grid=tiny", f"--out={out}", "--config.steps=60", "--overwrite")
    assert status == 0, stderr
    assert f"replacing {out / 'results.zarr'} (--overwrite)" in stdout
    new = grok_jax.load_results(out)
    assert json.loads(new.attrs["config"])["steps"] == 60 and list(new.step.values) == [0, 20, 40, 60]
    np.testing.assert_allclose(new.train_loss.values[..., :3], before, rtol=1e-5)  # same first steps
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".results.zarr.lock"]
    (run,) = json.loads(new.attrs["runs"])  # what ran, recorded
    assert run["backend"] == "cpu" and run["jax"] == jax.__version__ and run["process_count"] == 1
    assert run["matmul_precision"] == "highest" and run["x64"] is False
    assert run["rules"] == json.loads(new.attrs["plan"])["rules"] == "cpu"


GRID_FILES = {  # user grid files that cannot give a config
    "syntax.py": "def get_config(scale)\n    return None\n",
    "noget.py": "from grok_jax.config import base_config\n",
    "dict.py": "def get_config(scale):\n    return {'p': 11}\n",
    "raises.py": "def get_config(scale):\n    raise RuntimeError('no such preset')\n",
}

BAD_INPUTS = [  # (arguments, fragment of the one-line message, exit status)
    (["--grid=nope"], "unknown grid 'nope'; valid grids: ", 2),
    (["--grid=tiny", "--scale=paper"], "tiny.py defines the scale(s) small, not 'paper'", 2),
    (["--grid=missing.py"], "grid file 'missing.py' does not exist", 2),
    (["--grid={tmp}/syntax.py"], "syntax.py failed to import: SyntaxError", 2),
    (["--grid={tmp}/noget.py"], "noget.py defines no get_config", 2),
    (["--grid={tmp}/dict.py"], "returned dict, not an ml_collections.ConfigDict", 2),
    (["--grid={tmp}/raises.py"], "failed: RuntimeError: no such preset", 2),
    (["--scale=huge"], "huge", 2),
    (["--bogus_flag=1"], "Unknown command line flag 'bogus_flag'", 2),
    (["extra"], "unexpected arguments ['extra']", 2),
    (["--out={tmp}/run.zarr"], "ends in .zarr", 2),
    (["--out=/proc/grok_jax_out"], "/proc", 2),
    (["--compilation_cache=/proc/grok_jax_cache"], "--compilation_cache=/proc/grok_jax_cache is not usable", 2),
    (["--memory_gb=nan"], "--memory_gb=nan", 2),
    (["--memory_gb=inf"], "--memory_gb=inf", 2),
    (["--memory_gb=0"], "--memory_gb=0", 2),
    (["--memory_gb=-1"], "--memory_gb=-1", 2),
    (["--lanes_per_device=-1"], "--lanes_per_device=-1", 2),
    (["--checkpoint_steps=30"], "--checkpoint_steps=30 must be 0 (by time only) or a positive multiple of "
     "log_every=20", 2),
    (["--checkpoint_minutes=0"], "--checkpoint_minutes=0.0 must be a number of minutes > 0", 2),
    (["--config.matmul_precision=tf32"], "matmul_precision='tf32' is not valid; valid: highest, high, default", 2),
    (["--config.stepz=3"], "unknown config field 'stepz' (did you mean steps?)", 2),
    (["--config.plot.z=wd"], "unknown config field 'plot.z'", 2),
    (["--config.plot.x=wdd"], "plot.x='wdd' is not a heatmap axis", 2),
    (["--config.sweep.steps=(20,40)"], "cannot sweep 'steps'", 2),
    (["--config.model=cnn"], "model='cnn' is not valid; valid: mlp2, mlp3, transformer", 2),
    (["--config.sweep.model=('mlp2','mlp9')"], "model='mlp9' is not valid; valid: mlp2", 2),
    (["--config.batch_size=-1"], "batch_size=-1 must be >= 0", 2),
    (["--config.batchnorm=True", "--config.batch_size=1"],
     "batch_size=1 with alpha=0.6 at p=11 (72 training pairs) gives batches of one row", 2),
    (["--config.batchnorm=True", "--config.batch_size=71"], "batch_size=71 with alpha=0.6", 2),
    (["--config.bn_stats=moving"], "bn_stats='moving' is not valid; valid: running, full_batch", 2),
    (["--config.sweep.xi=(0.0,1.5)"], "xi=1.5", 2),
    (["--config.sweep.xi=()"], "sweep axis 'xi' has no values", 2),
    (["--config.sweep.xi=(0.3,0.3)"], "repeats a value", 2),
    (["--config.sweep.xi=('a',)"], "'a'", 2),
    (["--config.sweep.seed=(0.5,0.7)"], "0.5", 2),
    (["--config.sweep.seed=(0,4294967296)"], "seed=4294967296 is outside int32", 2),
    (["--config.sweep.alpha=(0.5,1.0)"], "alpha=1.0 gives 121 training pairs", 2),
    (["--config.sweep.dropout=(0.0,1.0)"], "dropout=1.0 is outside [0, 1)", 2),
    (["--config.sweep.lr=(0.01,1e999)"], "lr=inf must be a finite number", 2),
    (["--config.xi=0.1"], "--config.xi=0.1 is shadowed by the sweep axis xi=(0.0, 0.3)", 2),
    (["-config.xi=0.1"], "--config.xi=0.1 is shadowed", 2),
    (["--config.plot.x=xi", "--config.plot.y=xi"], "plot.x and plot.y are both 'xi'", 2),
    (["--config.lr=1e39"], "lr=1e+39 must be a finite number (float32", 2),
    (["--config.sweep.wd=(0.0,1e39)"], "wd=1e+39 must be a finite number", 2),
    (["--config.steps=1000000000", "--config.log_every=1"], "needs about", 2),
    (["--config.sweep.seed=(0,-2147483649)"], "seed=-2147483649 is outside int32", 2),
    (["--config.alpha=0.005"], "alpha=0.005", 2),
    (["--config.alpha=nan"], "alpha=nan must be a finite number", 2),
    (["--config.lr=-0.01"], "lr=-0.01 must be a finite number >= 0", 2),
    (["--config.b1=1.0"], "b1=1.0 is outside [0, 1)", 2),
    (["--config.b2=-0.5"], "b2=-0.5 is outside [0, 1)", 2),
    (["--config.eps=0"], "eps=0.0 must be > 0", 2),
    (["--config.task=pow"], "unknown task 'pow'", 2),
    (["--config.task=div", "--config.p=12"], "p=12", 2),
    (["--config.p=1"], "p=1 is too small", 2),
    (["--config.p=abc"], "--config.p=abc", 2),
    (["--config.p=50000"], "p <= 46340", 2),
    (["--config.p=3000"], "needs about", 2),
    (["--config.width=0"], "width=0 must be >= 1", 2),
    (["--config.steps=0"], "steps=0 must be >= 1", 2),
    (["--config.log_every=7"], "steps=60 is not a multiple of log_every=7", 2),
    (["--config.compile_groups=0"], "compile_groups=0 must be >= 1", 2),
    (["--config.mlp2.activation=tanh"], "mlp2.activation='tanh' is not valid; valid: quad, relu", 2),
    (["--config.activation=relu"], "unknown config field 'activation' (did you mean mlp2.activation?)", 2),
    (["--config.sweep.activation=('quad','tanh')"], "activation='tanh' is not valid; valid: quad, relu", 2),
    (["--config.model=transformer", "--config.transformer.heads=5"], "transformer.heads=5 does not divide", 2),
    (["--config.loss=hinge"], "loss='hinge' is not valid", 2),
    (["--config.batchnorm=maybe"], "--config.batchnorm=maybe", 2),
    (["--refine=-1"], "--refine=-1 must be an integer from 0 to 16", 2),
    (["--refine=2"], "--refine=2: no swept axis to refine", 2),
    (["--refine_seeds=2", "--config.sweep.seed=(0,)"], "sweep at least 2 seeds", 2),
    (["--refine=1", "--config.sweep.xi=(0.0,0.1,0.2)", "--refine_accuracy=0"], "--refine_accuracy=0.0 must be", 2),
    (["--refine=1", "--config.sweep.xi=(0.0,0.1,0.2)", "--num_processes=2", "--process_id=0",
      "--coordinator_address=localhost:1"], "--refine and --refine_seeds run in one process", 2),
]


@pytest.mark.parametrize("args,needle,status", BAD_INPUTS, ids=[" ".join(a) for a, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_before_anything_is_written(args, needle, status, tmp_path, capsys):
    for name, text in GRID_FILES.items():
        (tmp_path / name).write_text(text)
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("--grid") for a in args):
        args.insert(0, "--grid=tiny")
    if not any(a.startswith("--out") for a in args):
        args.append(f"--out={tmp_path / 'out'}")
    with pytest.raises(SystemExit) as exit_:
        sweep.main(args)
    out, err = capsys.readouterr()
    assert exit_.value.code == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert out == ""  # not even the plan: nothing was compiled
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GRID_FILES)  # nothing written


def test_a_huge_memory_budget_is_no_limit(tiny):
    plan = make_plan(tiny, Resources(memory_gb=1e300, n_devices=2))
    assert [len(c.lanes) for c in plan.chunks] == [8]


def test_bad_input_in_a_process_has_no_traceback(tmp_path):
    proc = _run("--grid=tiny", "--config.b1=1.0", f"--out={tmp_path / 'out'}")
    assert proc.returncode == 2 and proc.stderr == "error: b1=1.0 is outside [0, 1)\n" and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_the_command_line_takes_a_device_per_core(tmp_path):
    """Its checks run nothing of JAX before it splits the host into one CPU device
    per usable core (a check that did would leave one device)."""
    proc = _run("--grid=tiny", f"--out={tmp_path / 'out'}", "--config.steps=20", "--noreport")
    assert proc.returncode == 0, proc.stderr
    assert f"lanes on {usable_cores()} cpu device(s)" in proc.stdout, proc.stdout


def test_sharded_over_four_devices_matches_one(tmp_path):
    """The tiny grid's 8 lanes: one chunk over 4 forced host devices, two chunks on one."""
    def run(devices, chunks):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        proc = _run("--grid=tiny", f"--out={tmp_path / str(devices)}", "--config.steps=20",
                    env=dict(os.environ, XLA_FLAGS=flags))
        assert proc.returncode == 0, proc.stderr
        assert f"{chunks} chunk(s) of {8 // chunks} lanes on {devices} cpu device(s)" in proc.stdout, proc.stdout
        return grok_jax.load_results(tmp_path / str(devices))

    a, b = run(4, chunks=1), run(1, chunks=2)
    for name in ("train_loss", "test_acc", "ipr_hidden"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, err_msg=name)

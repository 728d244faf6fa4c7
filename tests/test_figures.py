"""The figures command: every figure end to end at the tiny scale, their numbers
against independent computations, presets, and bad input."""

import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

import grok_jax
from grok_jax import analysis, figures, phases, presets
from grok_jax.errors import PREEMPTED_STATUS, ConfigError, Preempted
from grok_jax.execution import Options
from grok_jax.models import mlp2
from grok_jax.results import to_grid
from grok_jax.train import stream_key


def _figures(*args):
    return subprocess.run([sys.executable, "-m", "grok_jax.figures", *args, "--compilation_cache="],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_figures(tmp_path_factory):
    """``--figure=all --scale=tiny``, once: (figures directory, results directory, stdout)."""
    root = tmp_path_factory.mktemp("figures")
    out, res = root / "figs", root / "results"
    proc = _figures("--figure=all", "--scale=tiny", f"--out={out}", f"--results={res}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, res, proc.stdout


def _summary(out, name):
    return json.loads((out / f"{name}_tiny.json").read_text())


def test_every_figure_renders_at_tiny_scale(tiny_figures):
    out, _, stdout = tiny_figures
    for name in figures.available_figures():
        assert f"{name}: wrote" in stdout
        assert (out / f"{name}_tiny.png").stat().st_size > 10_000, name
        assert (out / f"{name}_tiny.pdf").read_bytes()[:5] == b"%PDF-", name
        record = _summary(out, name)
        assert record["figure"] == f"{name}_tiny" and record["scale"] == "tiny" and record["wall_seconds"] > 0
        assert record["summary"], name
        assert [set(c) for c in record["claims"]] == [{"text", "expected", "holds", "measured", "why"}] * len(
            figures.load_figure(name, "tiny").claims), name
    assert not list(out.glob("*.partial"))
    assert stdout.rstrip().splitlines()[-1].startswith("claims: ")  # the closing tally
    assert stdout.rstrip().endswith("hold at tiny scale")


def test_shared_runs_are_trained_once(tiny_figures):
    """fig1 and fig4 share the run 'noisy': the second finds it done."""
    _, res, stdout = tiny_figures
    fig4 = stdout[stdout.index("fig4: run"):]
    assert "2 lanes already done" in fig4.split("fig4: wrote")[0]
    assert sorted(p.name for p in (res / "tiny").iterdir()) == sorted(
        {run for name in figures.available_figures() for run in figures.load_figure(name, "tiny").runs})


def test_dynamics_marks_are_the_first_logged_crossings(tiny_figures):
    """The grokking and unlearning steps in fig1's summary, recomputed by hand from the log."""
    out, res, _ = tiny_figures
    ds = grok_jax.load_results(res / "tiny" / "noisy", parameters=False)
    for lane in _summary(out, "fig1")["summary"]["lanes"]:
        run = ds.sel(wd=lane["wd"])
        test, corrupt, clean = (run[k].values for k in ("test_acc", "corrupt_acc", "clean_acc"))
        steps = run.step.values
        grok = next((s for s, a in zip(steps, test) if a >= 0.9 - 1e-6), None)
        assert lane["grok_step"] == grok
        unlearn, memorized = None, False
        for s, c, k in zip(steps, corrupt, clean):
            if memorized and c <= 0.1 + 1e-6 and k >= 0.9 - 1e-6:
                unlearn = s
                break
            memorized |= c >= 0.9 - 1e-6
        assert lane["unlearn_step"] == unlearn
        assert lane["final_test_acc"] == pytest.approx(float(test[-1]), abs=1e-4)


def _numpy_ipr(x):
    power = np.abs(np.fft.rfft(x.astype(np.float64), axis=-1)) ** 2
    return (power ** 2).sum(-1) / power.sum(-1) ** 2


def test_initial_ipr_is_the_init_networks_ipr_by_numpy(tiny_figures):
    _, res, _ = tiny_figures
    ds = grok_jax.load_results(res / "tiny" / "noisy", parameters=False)
    init = analysis.initial_ipr(ds)
    assert init.dims == ds.ipr_hidden.dims and init.shape == ds.ipr_hidden.shape
    params = mlp2.init_params(stream_key(0, "init"), 11, 24)
    U, V, W = (np.asarray(params[k]) for k in "UVW")  # U, V: (p, N); W: (N, p)
    expected = (_numpy_ipr(U.T) + _numpy_ipr(V.T) + _numpy_ipr(W)) / 3
    for wd in ds.wd.values:  # the same seed: the same initial network in every lane
        np.testing.assert_allclose(init.sel(wd=wd).values, expected, rtol=2e-5)
    assert not np.allclose(init.values, ds.ipr_hidden.values)  # training moved it


def test_batchnorm_correlation_is_pearsons_r(tiny_figures):
    out, res, _ = tiny_figures
    ds = grok_jax.load_results(res / "tiny" / "batchnorm")
    lanes = _summary(out, "fig5")["summary"]["lanes"]
    assert [lane["seed"] for lane in lanes] == [0, 1]
    for lane in lanes:
        scale = np.abs(ds["params.bn_scale"].sel(seed=lane["seed"]).values)
        ipr = ds["ipr_hidden"].sel(seed=lane["seed"]).values
        r = np.corrcoef(scale, ipr)[0, 1]
        assert lane["correlation_bn_scale_ipr"] == pytest.approx(r, abs=1e-3)


def test_phase_panels_are_the_stores_phases(tiny_figures):
    out, res, _ = tiny_figures
    phases = _summary(out, "fig3_batch")["summary"]["phases"]
    assert list(phases) == list(figures.load_figure("fig3_batch", "tiny").runs)
    for run, table in phases.items():
        ds = grok_jax.load_results(res / "tiny" / run, parameters=False)
        assert table == grok_jax.plotting.phase_table(ds)
        assert json.loads(ds.attrs["config"])["batchnorm"] is True


def test_pruning_summary_reads_the_curves(tiny_figures):
    out, res, _ = tiny_figures
    record = _summary(out, "fig6")["summary"]
    curves = grok_jax.pruning.prune(res / "tiny" / "coexistence", random=2)
    low = curves.sel(order="low").sel(fraction=0.25, method="nearest")
    assert record["pruned"]["low"]["0.25"]["corrupt_acc"] == pytest.approx(float(low.corrupt_acc.mean()), abs=1e-4)
    high = curves.sel(order="high").sel(fraction=0.5, method="nearest")
    assert record["pruned"]["high"]["0.5"]["test_acc"] == pytest.approx(float(high.test_acc.mean()), abs=1e-4)


def test_prunable_counts_follow_the_rule():
    """Synthetic curves: the count before the first drop below the threshold."""
    fraction = np.arange(11) / 10
    acc = np.array([
        [1.0, 1.0, 0.95, 0.91, 0.5, 0.95, 0.2, 0.1, 0.1, 0.0, 0.0],  # drops at 0.4 (regains later: ignored)
        [0.8] * 11,  # never generalized: NaN
        [1.0] * 11,  # survives everything
        [0.95, 0.3] + [0.0] * 9,  # drops at once after the first
    ])
    curves = xr.Dataset({"test_acc": (("seed", "order", "fraction"), acc[:, None, :])},
                        {"seed": [0, 1, 2, 3], "order": ["low"], "fraction": fraction})
    counts = analysis.prunable(curves, 20)
    np.testing.assert_array_equal(counts.values, [6.0, np.nan, 20.0, 0.0])
    widths = xr.DataArray([10, 20, 30, 40], dims="seed")
    np.testing.assert_array_equal(analysis.prunable(curves, widths).values, [3.0, np.nan, 30.0, 0.0])


@pytest.mark.parametrize("scale", presets.SCALES)
def test_every_preset_is_valid_at_every_scale(scale):
    loaded = {name: figures.load_figure(name, scale) for name in figures.available_figures()}
    figures._check_shared_runs(loaded)  # runs of one name share a store: equal configs
    assert {"fig1", "fig2", "fig3_wd", "fig3_dropout", "fig3_batch", "fig4", "fig5", "fig6",
            "appE", "appM", "appN", "appO", "appP", "appQ", "fig7_transformer", "fig7_mlp3", "fig7_ipr",
            "appG_dropout", "appG_init", "appG_batchnorm"} <= set(loaded)


def test_paper_presets_use_the_papers_settings():
    fig1 = figures.load_figure("fig1", "paper").runs.noisy
    assert (fig1.p, fig1.width, fig1.steps, fig1.alpha, fig1.xi, tuple(fig1.sweep.wd)) == (
        97, 500, 2000, 0.5, 0.35, (0.0, 5.0, 15.0))
    fig5 = figures.load_figure("fig5", "paper").runs.batchnorm
    assert (fig5.batch_size, fig5.lr, fig5.steps, fig5.alpha, fig5.xi, fig5.width, fig5.batchnorm) == (
        64, 0.005, 8000, 0.65, 0.2, 500, True)
    fig3 = figures.load_figure("fig3_wd", "paper").runs.alpha_wd
    assert len(fig3.sweep.alpha) == 17 and len(fig3.sweep.xi) == 19 and tuple(fig3.sweep.wd) == (0, 5, 15, 20)
    fig6 = figures.load_figure("fig6", "paper").runs.coexistence
    assert (fig6.wd, fig6.xi, fig6.alpha) == (0.0, 0.35, 0.5)
    fig7 = figures.load_figure("fig7_transformer", "paper").runs.transformer
    assert (fig7.model, fig7.p, fig7.width, fig7.transformer.heads, fig7.lr, fig7.steps, fig7.loss) == (
        "transformer", 97, 128, 4, 0.001, 3000, "mse")
    # the paper's wd 10 and 50 do not reproduce; the trend shows at 3 and 10 (the preset's docstring)
    assert (tuple(fig7.sweep.wd), fig7.transformer.parameterization, fig7.transformer.optimizer) == (
        (3.0, 10.0), "standard", "single")
    mlp3 = figures.load_figure("fig7_mlp3", "paper").runs.mlp3
    assert (mlp3.model, mlp3.width, mlp3.steps) == ("mlp3", 500, 5000)
    assert tuple(fig7.sweep.seed) == tuple(mlp3.sweep.seed) == (0, 1, 2)  # the paper's 3 seeds (its §3)


def test_figure_7s_ipr_claim_averages_each_weight_decays_seeds(tmp_path):
    """fig7_ipr at tiny scale with the paper scale's 3 seeds: one panel per lane, a
    row per seed and a column per wd (the PNG taller than wide, not 6 panels in a
    row), and the claim's number is each wd's embedding IPR averaged over neurons and
    seeds, recomputed here from the store."""
    from grok_jax.presets._architectures import with_paper_seeds

    figure = figures.load_figure("fig7_ipr", "tiny")
    with_paper_seeds(figure.runs.transformer, "paper")
    stores = tmp_path / "r"
    with open(figures.run_figure("fig7_ipr", figure, "tiny", str(tmp_path / "f"), str(stores),
                                 Options(log=lambda s: None))[-1]) as f:
        record = json.load(f)
    ds = grok_jax.load_results(str(stores / "tiny" / "transformer"))
    per_wd = ds.sel(alpha=0.5, xi=0.0)["ipr_embed"].mean("embed").mean("seed").values
    (claim,) = record["claims"]
    assert len(record["summary"]["lanes"]) == 6  # 2 wd × 3 seeds
    height, width = matplotlib.image.imread(str(tmp_path / "f" / "fig7_ipr_tiny.png")).shape[:2]
    assert height > width  # 3 × 2 panels of 4.2 × 3.0 in; 1 × 6 or 2 × 3 would be wider
    assert claim["measured"] == f"{per_wd[0]:.3f} at wd 10, {per_wd[1]:.3f} at wd 50"
    assert claim["holds"] == bool(per_wd.max() <= 0.4 and per_wd[1] > per_wd[0])


def test_figure_7s_phase_claim_counts_each_cells_seed_majority():
    """Seeds that disagree: the claim counts each cell's majority (ties to the lower
    code, the earlier row of the table), not its first seed nor any seed."""
    C, PI, FI, M = phases.COEXISTENCE, phases.PARTIAL, phases.FULL, phases.MEMORIZATION
    phase = np.array([[[C, C, M], [C, M, M]],  # wd 10: ξ 0 C (2 of 3), ξ 0.4 M (2 of 3)
                      [[FI, M, FI], [C, PI, M]]], np.int8)  # wd 50: FI, and a three-way tie: C
    flat = xr.Dataset({"phase": ("lane", phase.reshape(-1)), "done": ("lane", np.ones(phase.size, bool))},
                      attrs={"axes": json.dumps({"wd": [10.0, 50.0], "xi": [0.0, 0.4], "seed": [0, 1, 2]})})
    summary = {"cells": {"transformer": figures.phase_cells(to_grid(flat))}}
    (claim,) = figures.load_figure("fig7_transformer", "tiny").claims
    assert claim.check(summary) == (True, "1 Coexistence or Inversion cells at wd 10, 2 at 50")


def test_a_copied_preset_with_a_changed_field(tmp_path):
    source = os.path.join(figures.PRESETS_DIR, "fig2.py")
    mine = tmp_path / "my_fig2.py"
    mine.write_text(open(source).read().replace("run.wd = 5.0", "run.wd = 7.0"))
    assert figures.load_figure(str(mine), "tiny").runs.clean.wd == 7.0
    assert figures.output_stem("figs", str(mine), "quick") == os.path.join("figs", "my_fig2")


BAD = [  # (arguments, fragment of the one-line message)
    (["--figure=fig99"], "unknown figure 'fig99'; valid figures: fig1, fig2"),
    (["--figure=fig1", "--scale=huge"], "value should be one of <tiny|quick|paper>"),
    ([], "no --figure given; valid figures: fig1"),
    (["--figure=fig1,nope"], "unknown figure 'nope'"),
    (["--figure=missing.py"], "figure file 'missing.py' does not exist"),
    (["--figure=fig1", "extra"], "unexpected arguments ['extra']"),
    (["--figure=fig1", "--memory_gb=-1"], "memory_gb"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_is_one_line_and_status_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        figures.main([*args, f"--out={tmp_path / 'o'}", f"--results={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_bad_presets_are_named(tmp_path):
    cases = {
        "renderer.py": ("from grok_jax.presets import figure_config, run_config\n"
                        "def get_config(scale):\n    return figure_config('x', 'sketch', a=run_config(scale))\n",
                        "renderer='sketch' is not valid; valid: dynamics"),
        "run.py": ("from grok_jax.presets import figure_config, run_config\n"
                   "def get_config(scale):\n    r = run_config(scale); r.xi = 2.0\n"
                   "    return figure_config('x', 'phases', a=r)\n", "run 'a'"),
        "noruns.py": ("from grok_jax.presets import figure_config\n"
                      "def get_config(scale):\n    return figure_config('x', 'phases')\n", "has no runs"),
        "broken.py": ("def get_config(scale):\n    raise RuntimeError('oops')\n", "RuntimeError: oops"),
        "prunable.py": ("from grok_jax.presets import figure_config, run_config\n"
                        "def get_config(scale):\n    return figure_config('x', 'prunable', a=run_config(scale))\n",
                        "needs a width axis"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=None) as e:
            figures.load_figure(str(tmp_path / name), "tiny")
        assert needle in str(e.value), (name, str(e.value))


def test_a_damaged_store_and_sigterm_are_one_line_errors(tiny_figures, tmp_path, capsys, monkeypatch):
    """A damaged store: status 1, the lanes named, no traceback; ``--repair``
    recomputes them, equal to the undamaged store. SIGTERM (Preempted): status 75, the
    message kept."""
    _, res, _ = tiny_figures
    shutil.copytree(res / "tiny" / "clean", tmp_path / "r" / "tiny" / "clean")  # fig2's run
    chunk = next(f for f in (tmp_path / "r" / "tiny" / "clean" / "results.zarr" / "test_acc" / "c").rglob("*")
                 if f.is_file())
    chunk.write_bytes(chunk.read_bytes()[:10])
    args = ["--figure=fig2", "--scale=tiny", f"--out={tmp_path / 'o'}", f"--results={tmp_path / 'r'}"]
    with pytest.raises(SystemExit) as exit_:
        figures.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: fig2: ") and "'test_acc'" in err and "cannot be read" in err, err
    figures.main([*args, "--repair"])
    assert "'test_acc' lanes" in capsys.readouterr().out
    repaired, before = (grok_jax.load_results(str(root / "tiny" / "clean")) for root in (tmp_path / "r", res))
    xr.testing.assert_identical(repaired.drop_attrs(), before.drop_attrs())  # every lane bit for bit
    assert {**repaired.attrs, "runs": None} == {**before.attrs, "runs": None}  # runs: one run more

    def preempted(*_):
        raise Preempted("stopped by SIGTERM at step 20 of a chunk, which is checkpointed")

    monkeypatch.setattr(figures, "run_figure", preempted)
    with pytest.raises(SystemExit) as exit_:
        figures.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == PREEMPTED_STATUS and err == "error: fig2: stopped by SIGTERM at step 20 of a chunk, " \
        "which is checkpointed\n", err


def test_list_names_every_figure(capsys):
    with pytest.raises(SystemExit) as exit_:
        figures.main(["--list"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for name in figures.available_figures():
        assert f"\n{name} " in text


def test_phase_panels_of_runs_with_missing_cells(tiny_figures, tmp_path):
    """Runs of one panel field with different α values: the panels share the union
    of the axes, and a cell a run lacks is drawn as not run."""
    _, res, _ = tiny_figures
    ds = grok_jax.load_results(res / "tiny" / "bn_batch32", parameters=False)
    other = ds.isel(alpha=[1])
    config = json.loads(other.attrs["config"])
    config["batch_size"], config["steps"] = 16, 960
    other.attrs = {**ds.attrs, "config": json.dumps(config)}  # a new dict: ds keeps its own
    options = figures.ml_collections.ConfigDict({"panel": "batch_size"})
    paths = [str(tmp_path / "panels.png")]
    summary = figures._draw_phases({"b": other, "a": ds}, options, "test", paths)
    assert (tmp_path / "panels.png").stat().st_size > 10_000
    assert summary["phases"]["b"] == grok_jax.plotting.phase_table(other)
    phase, _, configs = figures.stack_runs({"b": other, "a": ds}, "batch_size")
    assert [c["batch_size"] for c in configs] == [16, 32] and phase.batch_size.values.tolist() == [16, 32]
    np.testing.assert_array_equal(phase.sel(batch_size=32).values, ds.phase.values)
    assert (phase.sel(batch_size=16, alpha=ds.alpha.values[0]).values == -1).all()
    np.testing.assert_array_equal(phase.sel(batch_size=16, alpha=ds.alpha.values[1]).values, ds.phase.values[1])


def test_one_row_batches_are_left_out_of_the_batchnorm_panels():
    runs = figures.load_figure("fig3_batch", "paper").runs
    assert 0.2 not in runs.bn_batch8.sweep.alpha and len(runs.bn_batch8.sweep.alpha) == 16
    assert len(runs.bn_batch64.sweep.alpha) == len(runs.bn_batch256.sweep.alpha) == 17


CLAIMS_PRESET = """
from grok_jax.presets import Claim, lane
from grok_jax.presets.fig2 import get_config as fig2


def get_config(scale):
    config = fig2(scale)
    config.claims = (
        Claim("the run ends at a test accuracy in [0, 1]", lambda s: (0 <= lane(s)["final_test_acc"] <= 1,
              f"test {lane(s)['final_test_acc']}"), scales=("tiny",), why="an accuracy"),
        Claim("the test accuracy exceeds 100% (fails on purpose)", lambda s: (lane(s)["final_test_acc"] > 1,
              f"test {lane(s)['final_test_acc']}"), scales=("tiny",), why="impossible"),
        Claim("a number the summary lacks", lambda s: (s["missing"] > 0, "?"), scales=("tiny",), why="missing"),
        Claim("grokking (not at tiny scale)", lambda s: (False, "no"), scales=("quick", "paper"), why="60 steps"),
    )
    return config
"""


def test_claims_hold_fail_and_are_recorded(tmp_path, capsys):
    """A preset with a claim that holds, one that fails on purpose, one whose number
    is missing and one not expected at tiny scale, through the command line: ✓/✗/–
    lines, the closing tally, the JSON and exit status 0 (a failed claim is a finding)."""
    preset = tmp_path / "my_claims.py"
    preset.write_text(CLAIMS_PRESET)
    out = tmp_path / "figs"
    try:
        figures.main([f"--figure={preset}", "--scale=tiny", f"--out={out}", f"--results={tmp_path / 'r'}",
                      "--compilation_cache="])
    except SystemExit as e:  # main returns on success; an exit must be status 0
        assert e.code in (0, None), capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    claims = [line for line in lines if line[:1] in "✓✗–"]
    assert claims[0].startswith("✓ the run ends at a test accuracy in [0, 1] (measured: test ")
    assert claims[1].startswith("✗ the test accuracy exceeds 100% (fails on purpose) (measured: test ")
    assert claims[2] == "✗ a number the summary lacks (measured: cannot check: KeyError: 'missing')"
    assert claims[3] == "– not expected at tiny scale: grokking (not at tiny scale) (measured: no)"
    assert lines[-1] == "claims: 1 of 3 hold at tiny scale"
    record = json.loads((out / "my_claims_tiny.json").read_text())["claims"]
    assert [(c["expected"], c["holds"]) for c in record] == [(True, True), (True, False), (True, False),
                                                             (False, False)]
    assert record[1] == {"text": "the test accuracy exceeds 100% (fails on purpose)", "expected": True,
                         "holds": False, "measured": claims[1].split("(measured: ")[1][:-1], "why": "impossible"}

    readme = out / "README.md"
    readme.write_text(f"# gallery\n\n{figures.CLAIMS_BEGIN}\nold table\n{figures.CLAIMS_END}\n\nafter\n")
    (out / "old_tiny.json").write_text(json.dumps({"figure": "old_tiny", "scale": "tiny", "summary": {}}))
    with pytest.raises(SystemExit) as exit_:
        figures.main(["--claims_table", f"--out={out}"])
    assert exit_.value.code == 0
    text = readme.read_text()
    assert "old table" not in text and text.endswith(f"{figures.CLAIMS_END}\n\nafter\n")
    assert "| [my_claims_tiny](my_claims_tiny.png) | tiny | the test accuracy exceeds 100% (fails on purpose) " \
           "| ✗ fails |" in text
    assert "| – not expected (fails) |" in text and "(no claims recorded" in text
    assert "claims: 1 of 3 hold at tiny scale." in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit) as exit_:
        figures.main(["--claims_table", f"--out={out}"])
    assert exit_.value.code == 2 and "no lines <!-- claims table: begin -->" in capsys.readouterr().err


@pytest.mark.parametrize("scale", presets.SCALES)
def test_claims_are_declared_with_scales_and_thresholds(scale):
    for name in figures.available_figures():
        for claim in figures.load_figure(name, scale).claims:
            assert isinstance(claim, presets.Claim) and claim.text and claim.why, name
            assert set(claim.scales) <= set(presets.SCALES) and "tiny" not in claim.scales, (name, claim.text)
    assert {name for name in figures.available_figures() if figures.load_figure(name, scale).claims} >= {
        "fig1", "fig4", "fig5", "fig6", "appP", "appQ"}

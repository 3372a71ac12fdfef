"""The papermill runner (avlib.reproduce) on throwaway notebooks written into tmp_path, and the CI
check for committed notebooks. Kernel start-ups are slow, so the whole file starts four kernels:
two for the module's main run (producer -> consumer), one for ``--only``, one for a failing notebook.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jupytext
import nbformat
import pytest

from avlib import reproduce as rp

HEADER = '''\
# %% [markdown]
# # {title}

# %% tags=["parameters"]
profile: str = "smoke"  # config profile
seed: int = 0  # random seed
device: str = "auto"  # torch device
out_dir: str = ""  # metrics.json and figures/ ("" means reports/<profile>/<notebook>/)
run_dir: str = ""  # checkpoints ("" means runs/<profile>/<notebook>/)
overrides: dict = {{}}  # config overrides, e.g. {{"model.depth": 2}}
'''

PRODUCER = HEADER.format(title="A: makes a checkpoint") + '''
# %%
import os
from matplotlib.figure import Figure
from avlib import nb
paths = nb.paths_for("a_make", profile, out_dir, run_dir)

# %%
ckpt = paths.run_dir / "ckpt.txt"
ckpt.write_text(f"trained with seed {seed}")
fig = Figure()
fig.subplots().plot([0, 1], [1, 0])
nb.save_fig(fig, paths.out_dir, "curve")
import matplotlib
nb.record({"classification/pretrained/top1": 0.75, "classification/scratch/top1": 0.5,
           "localization/scratch/ciou": 0.2, "env/hashseed": os.environ.get("PYTHONHASHSEED", ""),
           "env/cwd": os.getcwd(), "env/backend": matplotlib.get_backend()},
          paths.out_dir, profile=profile, seed=seed, pretrain_ckpt=str(ckpt))
'''

CONSUMER = HEADER.format(title="B: uses it") + '''pretrain_ckpt: str = ""  # checkpoint recorded by a_make

# %%
from pathlib import Path
from avlib import nb
paths = nb.paths_for("b_use", profile, out_dir, run_dir)
print("loading", Path(pretrain_ckpt).name)
nb.record({"ckpt_text": Path(pretrain_ckpt).read_text()}, paths.out_dir, pretrain_ckpt=pretrain_ckpt)
'''

FAILING = HEADER.format(title="F: breaks") + '''
# %%
x = 1 / 0  # the bug
print("never")
'''


def write_pair(folder: Path, name: str, text: str, ipynb: bool = True) -> None:
    (folder / f"{name}.py").write_text(text)
    if ipynb:                                   # the committed pair: same cells, no outputs
        nbformat.write(jupytext.reads(text, fmt="py:percent"), folder / f"{name}.ipynb")


def write_manifest(folder: Path, notebooks: list) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(json.dumps({"notebooks": notebooks}, indent=1))     # JSON is valid YAML
    return path


AB = [{"name": "a_make", "title": "producer", "outputs": ["pretrain_ckpt"]},
      {"name": "b_use", "inputs": ["pretrain_ckpt"]}]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Notebook a_make (.py + .ipynb) -> b_use (.py only, converted in memory), run once."""
    root = tmp_path_factory.mktemp("proj")
    nbs = root / "notebooks"
    nbs.mkdir()
    write_pair(nbs, "a_make", PRODUCER)
    write_pair(nbs, "b_use", CONSUMER, ipynb=False)
    manifest = write_manifest(nbs, AB)
    args = ["--profile", "smoke", "--manifest", str(manifest), "--out", str(root / "reports"),
            "--runs", str(root / "runs")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "_avlib_digest", lambda: "fixed")   # edits to avlib mid-session would re-run all
        code = rp.main(args)
    return {"root": root, "nbs": nbs, "out": root / "reports", "args": args, "code": code}


def metrics(out: Path, name: str) -> dict:
    return json.loads((out / name / "metrics.json").read_text())


def test_runs_in_order_and_passes_upstream_outputs(project):
    out = project["out"]
    assert project["code"] == 0
    assert (out / "a_make.ipynb").exists() and (out / "b_use.ipynb").exists()      # executed copies
    a, b = metrics(out, "a_make"), metrics(out, "b_use")
    ckpt = project["root"] / "runs" / "a_make" / "ckpt.txt"
    assert a["pretrain_ckpt"] == str(ckpt)
    assert b["pretrain_ckpt"] == str(ckpt) and b["ckpt_text"] == "trained with seed 0"
    injected = nbformat.read(out / "b_use.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in injected.cells)
    # the environment the runner promises the kernel
    assert a["env/hashseed"] == "0"
    assert a["env/cwd"] == str(project["nbs"])
    assert "inline" in a["env/backend"]
    state = json.loads((out / "state.json").read_text())
    assert [state["notebooks"][n]["status"] for n in ("a_make", "b_use")] == ["ok", "ok"]


def test_summary_has_tables_comparisons_and_figures(project):
    out = project["out"]
    md = (out / "summary.md").read_text()
    assert "## All comparisons" in md and "| metric | scratch | pretrained |" in md
    assert "| top1 | 0.5 | 0.75 |" in md                                       # the baseline column first
    assert "**localization**" in md                                           # scratch-only: its own table
    assert "### a_make: producer" in md and "![curve](a_make/figures/curve.png)" in md
    assert "| ckpt_text | trained with seed 0 |" in md and "duration_s" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["wall_s"] > 0
    assert {r["name"] for r in summary["notebooks"]} == {"a_make", "b_use"}
    assert summary["notebooks"][0]["metrics"]["duration_s"] > 0                 # papermill's duration added
    assert {(r["task"], r["init"]) for r in summary["comparisons"]} >= {("classification", "pretrained")}


def test_rerun_skips_up_to_date_notebooks(project, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    monkeypatch.setattr(rp, "_avlib_digest", lambda: "fixed")
    assert rp.main(project["args"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 2
    monkeypatch.setattr(rp, "_avlib_digest", lambda: "avlib changed")              # stale: would run again
    assert rp.main(project["args"] + ["--dry-run"]) == 0
    assert capsys.readouterr().out.count("would run") == 2
    assert rp.main(project["args"] + ["--dry-run", "--from", "b_use"]) == 0       # upstream from state.json
    printed = capsys.readouterr().out
    assert "1 notebook(s)" in printed and "[1/1] b_use: would run" in printed and "a_make/ckpt.txt" in printed


def test_only_reruns_one_notebook_from_recorded_state(project, capsys):
    out = project["out"]
    before = (out / "a_make.ipynb").stat().st_mtime_ns
    assert rp.main(project["args"] + ["--only", "b"]) == 0                     # unique prefix of b_use
    printed = capsys.readouterr().out
    assert "[1/1] b_use: running" in printed and "b_use | loading ckpt.txt" in printed   # streamed output
    assert (out / "a_make.ipynb").stat().st_mtime_ns == before                 # upstream not re-run
    assert metrics(out, "b_use")["ckpt_text"] == "trained with seed 0"


def test_only_without_recorded_upstream_is_a_clear_error(project, tmp_path, capsys):
    args = project["args"][:-4] + ["--out", str(tmp_path / "fresh"), "--runs", str(tmp_path / "r"), "--only", "b_use"]
    assert rp.main(args) == 2
    err = capsys.readouterr().err
    assert "b_use needs 'pretrain_ckpt' from a_make, which has no successful run recorded" in err
    assert "--only a_make b_use" in err


def test_unknown_parameter_rejected_before_any_kernel(project, tmp_path, capsys, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    bad = [dict(AB[0], params={"*": {"sed": 1}}),
           dict(AB[1], params={"smoke": {"overrides": {"model.detph": 2}}})]
    manifest = write_manifest(project["nbs"], bad)
    try:
        assert rp.main(["--profile", "smoke", "--manifest", str(manifest), "--out", str(tmp_path)]) == 2
    finally:
        write_manifest(project["nbs"], AB)
    err = capsys.readouterr().err
    assert "a_make: unknown parameter 'sed'" in err and "did you mean 'seed'" in err
    assert "b_use: overrides" in err and "model.depth" in err                 # make_config's suggestion
    assert not list(tmp_path.glob("*.ipynb"))


def test_failure_stops_at_first_failing_cell(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_pair(nbs, "f_break", FAILING)
    write_pair(nbs, "a_make", PRODUCER)
    manifest = write_manifest(nbs, [{"name": "f_break"}, {"name": "a_make"}])
    out = tmp_path / "reports"
    code = rp.main(["--profile", "smoke", "--manifest", str(manifest), "--out", str(out), "--runs",
                    str(tmp_path / "runs"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "notebook f_break failed in cell 2 (counting from 0, markdown cells included) of notebooks/f_break.ipynb" in err
    assert "x = 1 / 0  # the bug" in err and "ZeroDivisionError: division by zero" in err
    assert not (out / "a_make.ipynb").exists()                                # stopped at the first failure
    assert (out / "f_break.ipynb").exists()                                   # failed copy kept, with traceback
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed"] == "f_break"
    run = json.loads((out / "state.json").read_text())["run"]
    assert run["status"] == "failed" and run["finished"] == [] and summary["pending"] == ["f_break", "a_make"]


# ----------------------------------------------------------------------------------------------
# Manifest and CI checks (no kernels)
# ----------------------------------------------------------------------------------------------
def test_manifest_rejects_undeclared_inputs(tmp_path):
    path = write_manifest(tmp_path, [{"name": "b_use", "inputs": ["pretrain_ckpt"]}])
    with pytest.raises(rp.ReproduceError, match="not an output of any earlier notebook"):
        rp.load_manifest(path, check_files=False)
    path = write_manifest(tmp_path, [{"name": "a", "params": {"cpux": {}}}])
    with pytest.raises(rp.ReproduceError, match="did you mean 'cpu'"):
        rp.load_manifest(path, check_files=False)


def test_repository_manifest_declares_the_sequence():
    man = rp.load_manifest(rp.ROOT / "notebooks" / "manifest.yaml", check_files=False)
    assert man.names == ["00_data", "01_model", "02_pretraining", "03_classification", "04_localization",
                         "05_segmentation", "06_separation", "07_ablations", "08_report"]
    assert man.step("02").outputs == ("pretrain_ckpt", "unimodal_ckpt")
    for name in man.names[3:7]:                   # 03-06 compare DeepAVFusion with its unimodal start
        assert man.step(name).inputs == {"pretrain_ckpt": ("02_pretraining", "pretrain_ckpt"),
                                         "unimodal_ckpt": ("02_pretraining", "unimodal_ckpt")}
    assert man.step("07").inputs == {"pretrain_ckpt": ("02_pretraining", "pretrain_ckpt")}


def test_verify_notebooks_clean(project, tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_pair(nbs, "00_ok", PRODUCER)
    assert rp.verify_notebooks_clean([nbs]) == []
    # an executed copy committed by mistake: outputs, counts, papermill metadata, injected cell
    (nbs / "01_run.ipynb").write_bytes((project["out"] / "a_make.ipynb").read_bytes())
    (nbs / "01_run.py").write_text(PRODUCER)
    # a .py edited without syncing its .ipynb, and a derived value in the parameters cell
    write_pair(nbs, "02_stale", PRODUCER)
    (nbs / "02_stale.py").write_text(PRODUCER.replace("run_dir: str = \"\"", "run_dir: str = out_dir + '/r'"))
    # a lone .py, no parameters tag
    (nbs / "03_lonely.py").write_text("# %%\nx = 1\n")
    problems = "\n".join(rp.verify_notebooks_clean([nbs]))
    assert "01_run.ipynb: cell" in problems and "has outputs" in problems and "execution_count" in problems
    assert "papermill run metadata" in problems and "'injected-parameters' cell" in problems
    assert "02_stale.py and .ipynb differ (first at cell 1" in problems
    assert "parameter 'run_dir' is not a literal" in problems
    assert "03_lonely.ipynb: missing" in problems and "found 0" in problems
    assert "00_ok" not in problems


def test_comparisons_and_render_summary_are_generic():
    rows = rp.comparisons({"sep/pretrained/sdr": 5.0, "sep/scratch/sdr": 3.5, "loss": 1.0, "a/b": 2.0,
                           "sep/pretrained/n": 64, "sep/scratch/n_test_mixtures": 64.0,       # counts
                           "pre/pretrained/nn_audio": 41.0})
    assert rows == [{"task": "sep", "init": "pretrained", "metric": "sdr", "value": 5.0},
                    {"task": "sep", "init": "scratch", "metric": "sdr", "value": 3.5},
                    {"task": "pre", "init": "pretrained", "metric": "nn_audio", "value": 41.0}]
    md = rp.render_summary([{"name": "06", "status": "ok", "duration_s": 61.0, "executed": "06.ipynb",
                             "metrics": {"sep/pretrained/sdr": 5.0, "sep/scratch/sdr": 3.5, "profile": "cpu",
                                         "separation/ezvsl/sdr": 1.0, "separation/scratch/sdr": 0.5,
                                         "separation/deepavfusion/sdr": 4.0, "separation/scratch/sir": 2.0},
                             "figures": []}], "cpu", wall_s=62)
    assert "| sep | sdr | 5 | 3.5 | +1.5 |" not in md and "| sdr | 3.5 | 5 |" in md and "| 06 | ok | 1:01 |" in md
    # a protocol's main metric heads the report, one column per init / method, every one kept
    assert "| task | metric | scratch | deepavfusion | ezvsl |" in md and "| separation | sdr | 0.5 | 4 | 1 |" in md
    assert "| sir | 2 |  |  |" in md
    assert md.startswith("# avlib reproduction: profile `cpu`")
    assert "| deepavfusion − scratch |" in md and "| separation | sdr | 0.5 | 4 | 1 | +3.5 |" in md  # the Δ column
    assert "deepavfusion − unimodal" not in md                     # no unimodal run recorded: no such column


def test_init_order_follows_the_zoo():
    """Result tables put the from-scratch baseline, the unimodal warm start and DeepAVFusion first, then the
    comparison methods in the zoo's (the supplement's figures') order."""
    from avlib import zoo
    assert rp.INIT_ORDER == ("scratch", "unimodal", "deepavfusion", "deepavfusion_curated", *zoo.BASELINES)
    assert all(n in {r.name for r in zoo.RECIPES["cpu"]} for n in rp.INIT_ORDER if n != "scratch")
    assert rp.ordered_inits([{"x": 1, "ccol": 2}, {"deepavfusion": 3, "scratch": 4}]) == ["scratch", "deepavfusion",
                                                                                        "ccol", "x"]


def test_headline_has_one_column_per_init_and_the_two_deltas():
    metrics = {"linprobe/deepavfusion/top1": 60.0, "linprobe/unimodal/top1": 58.0, "linprobe/scratch/top1": 50.0,
               "localization/scratch/auc": 0.2, "localization/deepavfusion/auc": 0.25,
               "localization/ezvsl/auc": 0.3, "localization/unimodal/cell_acc": 0.25,       # not a main metric
               "separation/scratch/sdr": 0.0}
    header, rows = rp.headline(rp.comparison_groups(rp.comparisons(metrics)))
    assert header == ["task", "metric", "scratch", "unimodal", "deepavfusion", "ezvsl",
                      "deepavfusion − unimodal", "deepavfusion − scratch"]
    assert rows[0] == ["linprobe", "top1", 50.0, 58.0, 60.0, None, 2.0, 10.0]
    assert rows[1][:6] == ["localization", "auc", 0.2, None, 0.25, 0.3]
    assert rows[1][6] is None and rows[1][7] == pytest.approx(0.05)          # no unimodal AUC: no first Δ
    assert rows[2] == ["separation", "sdr", 0.0, None, None, None, None, None]
    assert list(rp.DELTAS) == [("deepavfusion", "unimodal"), ("deepavfusion", "scratch")]
    assert rp.delta_label("deepavfusion", "unimodal") == "deepavfusion − unimodal"
    md = "\n".join(rp._results_tables(rp.comparison_groups(rp.comparisons(metrics))))
    assert "| linprobe | top1 | 50 | 58 | 60 |  | +2 | +10 |" in md and "the paper's claim" in md


def test_methods_table_only_with_comparison_methods_or_zero_shot_results():
    three = {"localization/scratch/auc": 0.2, "localization/unimodal/auc": 0.21, "localization/deepavfusion/auc": 0.25}
    assert rp.methods_table(rp.comparison_groups(rp.comparisons(three))) is None          # the main job
    compare = {**three, "localization/slavc/auc": 0.3, "separation/ccol/sdr": 1.5, "separation/deepavfusion/sdr": 2.0,
               "localization_zero_shot/slavc/auc": 0.28, "localization_zero_shot/slavc/n": 500,
               "separation_zero_shot/ccol/sdr": -0.5}
    header, rows = rp.methods_table(rp.comparison_groups(rp.comparisons(compare)))
    assert header == ["method", "localization (auc)", "separation (sdr)", "localization zero-shot (auc)",
                      "separation zero-shot (sdr)"]
    assert [r[0] for r in rows] == ["scratch", "unimodal", "deepavfusion", "slavc", "ccol"]
    assert rows[3] == ["slavc", 0.3, None, 0.28, None] and rows[4] == ["ccol", None, 1.5, None, -0.5]
    zero_shot_only = {**three, "separation_zero_shot/oneavm/sdr": 0.1}
    assert rp.methods_table(rp.comparison_groups(rp.comparisons(zero_shot_only))) is not None


# ----------------------------------------------------------------------------------------------
# Faults: a second runner, Ctrl-C, --set (issue 16)
# ----------------------------------------------------------------------------------------------
CONFIG_USER = HEADER.format(title="C: reads its config") + '''
# %%
from avlib import nb
from avlib.config import make_config
paths = nb.paths_for("c_cfg", profile, out_dir, run_dir)
cfg = make_config(profile, overrides=nb.parse_overrides(overrides), seed=seed)
nb.record({"norm_pix_loss": cfg.model.norm_pix_loss, "depth": cfg.model.depth}, paths.out_dir)
'''

SLOW = HEADER.format(title="S: takes long") + '''
# %%
import time
from pathlib import Path
Path(out_dir).parent.joinpath("slow_started").touch()    # the test waits for this file, not for output
print("slow cell started", flush=True)
time.sleep(600)
'''

HOLD_LOCK = """
import sys, time
from avlib.utils import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _python(code: str, *args: str, **kw):
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=Path(rp.ROOT), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_headline_references_come_from_the_recorded_bounds():
    metrics = {"localization/pretrained/auc": 0.21, "localization_bounds/oracle/auc": 0.525,
               "localization_bounds/random_map/auc": 0.195, "localization_bounds/oracle/ciou": 1.0,
               "classification_bounds/chance/top1": 10.0, "separation/pretrained/sdr": -0.1,
               "separation/pretrained/sdr_mix": -0.05, "separation/scratch/sdr_mix": -0.05,
               "segmentation/pretrained/avsbench_miou": 0.0}
    refs = rp.headline_references(rp.comparisons(metrics))
    assert refs == {"localization": {"oracle": 0.525, "random map": 0.195}, "linprobe": {"chance": 10.0},
                    "finetune": {"chance": 10.0}, "separation": {"mixture": -0.05}}
    assert rp.headline_references([]) == {}


def test_second_runner_on_the_same_out_is_refused_and_a_dead_holders_lock_taken_over(project, tmp_path, capsys):
    import signal

    from avlib.utils import folder_lock
    out = tmp_path / "reports"
    holder = _python(HOLD_LOCK, str(out))
    try:
        assert holder.stdout.readline().strip() == "held"
        code = rp.main(project["args"][:-4] + ["--out", str(out), "--runs", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert f"{out} is in use by pid {holder.pid}" in err and "another --out" in err
        assert not (out / "state.json").exists()                  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(holder.pid) in (out / ".lock").read_text()         # the killed holder's record is still there
    with folder_lock(out) as lock:                                # ... and the lock is free: taken over
        assert str(os.getpid()) in lock.read_text()


def test_set_reaches_every_notebooks_overrides_and_is_checked_first(project, tmp_path, capsys):
    manifest = write_manifest(project["nbs"], [dict(AB[0], params={"*": {"overrides": {"model.depth": 3}}}), AB[1]])
    try:
        base = ["--profile", "smoke", "--manifest", str(manifest), "--out", str(tmp_path), "--dry-run"]
        assert rp.main(base + ["--set", "model.norm_pix_loss=false", "model.depth=4"]) == 0
        plan = capsys.readouterr().out
        assert plan.count("'model.norm_pix_loss': False") == plan.count("'model.depth': 4") == 2
        assert "'model.depth': 3" not in plan                     # --set wins over the manifest
        assert rp.main(base + ["--set", "model.norm_pix_loss=nope"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --set: config key 'model.norm_pix_loss' = 'nope'") and len(err.splitlines()) == 1
        assert rp.main(base + ["--set", "pretrain.epochs=0"]) == 2
        assert "'pretrain.epochs' = 0 (int): expected a value >= 1" in capsys.readouterr().err
    finally:
        write_manifest(project["nbs"], AB)


@pytest.mark.slow
def test_sigint_is_recorded_as_interrupted_with_a_one_line_reason(tmp_path):
    import signal
    import time

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_pair(nbs, "c_cfg", CONFIG_USER)
    write_pair(nbs, "s_slow", SLOW)
    write_pair(nbs, "a_make", PRODUCER)
    manifest = write_manifest(nbs, [{"name": "c_cfg"}, {"name": "s_slow"}, {"name": "a_make"}])
    out = tmp_path / "reports"
    args = ["--profile", "smoke", "--manifest", str(manifest), "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--set", "model.norm_pix_loss=false"]
    # its own process group, like a terminal job, with Ctrl-C's default action even when this test runs
    # in a background job (a non-interactive shell starts those with SIGINT ignored, which exec inherits)
    proc = _python("import sys; from avlib.reproduce import main; sys.exit(main(sys.argv[1:]))", *args,
                   start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import threading

    lines: list[str] = []                                          # drain stdout so the runner never blocks on it
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    started, deadline = out / "slow_started", time.time() + 300    # kernels start slowly on a busy machine
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert started.exists(), "the slow notebook never started"
    os.killpg(proc.pid, signal.SIGINT)                             # Ctrl-C: the runner and its kernel
    proc.wait(timeout=180)                                         # the kernel's shutdown, on a busy machine too
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: interrupted during s_slow") and "finished: c_cfg" in err
    state = json.loads((out / "state.json").read_text())
    assert [state["notebooks"][n]["status"] for n in ("c_cfg", "s_slow")] == ["ok", "interrupted"]
    assert "a_make" not in state["notebooks"]
    assert state["run"]["status"] == "interrupted" and state["run"]["finished"] == ["c_cfg"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["pending"] == ["s_slow", "a_make"]
    assert "**Run interrupted** in s_slow" in (out / "summary.md").read_text()
    assert metrics(out, "c_cfg")["norm_pix_loss"] is False       # --set reached the notebook as a bool


SEEDED = HEADER.format(title="S: a seed-dependent result") + '''
# %%
from avlib import nb
paths = nb.paths_for("s_seed", profile, out_dir, run_dir)
nb.record({"finetune/scratch/top1": 50.0 + seed, "finetune/deepavfusion/top1": 60.0 + 2 * seed}, paths.out_dir)
'''


def test_seeds_job_runs_once_per_seed_and_aggregates(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_pair(nbs, "s_seed", SEEDED)
    manifest = write_manifest(nbs, [{"name": "s_seed"}])
    out = tmp_path / "reports"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "_avlib_digest", lambda: "fixed")
        code = rp.main(["--profile", "smoke", "--manifest", str(manifest), "--out", str(out), "--runs",
                        str(tmp_path / "runs"), "--quiet", "--seeds", "0", "2"])
    assert code == 0 and (out / "seed0" / "s_seed.ipynb").exists() and (out / "seed2" / "s_seed.ipynb").exists()
    rows = {(r["init"], r["metric"]): r for r in json.loads((out / "seeds.json").read_text())["rows"]}
    dav = rows[("deepavfusion", "top1")]
    assert dav["values"] == {"0": 60.0, "2": 64.0} and dav["mean"] == 62.0 and dav["n"] == 2
    assert dav["std"] == pytest.approx(2 ** 0.5 * 2) and (dav["min"], dav["max"]) == (60.0, 64.0)
    md = (out / "seeds.md").read_text()
    assert "| metric | scratch | deepavfusion |" in md and "| top1 | 51 ± 1.4 (50–52) | 62 ± 2.8 (60–64) |" in md


def test_the_compare_manifest_names_real_parameters_and_every_comparison_method(tmp_path, capsys):
    """`make compare` (notebooks/compare.yaml): every parameter exists in its notebook (checked by the dry
    run before any kernel starts) and the methods are exactly DeepAVFusion's data control and the zoo's
    comparison methods."""
    import yaml

    from avlib import zoo

    path = rp.ROOT / "notebooks" / "compare.yaml"
    spec = yaml.safe_load(path.read_text())
    for entry in spec["notebooks"]:
        methods = entry.get("params", {}).get("*", {}).get("methods")
        if methods is not None:
            assert tuple(methods) == ("deepavfusion_curated", *zoo.BASELINES), entry["name"]
    assert rp.main(["--profile", "smoke", "--manifest", str(path), "--out", str(tmp_path), "--dry-run"]) == 0
    assert "methods=['deepavfusion_curated', 'ezvsl'" in capsys.readouterr().out

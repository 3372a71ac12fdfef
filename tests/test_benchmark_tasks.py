"""The paper profile's protocols end to end on the benchmark loaders.

A smoke-sized model with the paper profile's data wiring (``data.dataset = "vggsound"`` for pre-training and
classification, each dense task's ``train_data`` / ``test_data`` from ``config.PAPER_TASK_DATA``) trains and
scores every protocol on the tiny official-layout trees of ``benchmark_trees``. No GPU, a few seconds each.
"""
from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import replace

import pytest

import benchmark_trees as bt
from avlib.config import PAPER_TASK_DATA, make_config
from avlib.data import make_loaders
from avlib.data.media import SkippedItemWarning
from avlib.tasks import pretrain, run_task

TREES = {"vggsound": bt.vggsound_tree, "flickr": bt.flickr_tree, "vggss": bt.vggss_tree,
         "avsbench": bt.avsbench_tree, "vggsound_music": bt.vggsound_music_tree}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("benchmark_tasks")
    roots = {name: make(base / name)["root"] for name, make in TREES.items()}
    avs = roots["avsbench"]                     # the shared tree has train / val only: add one S4 test sample
    shutil.copytree(avs / "v1s" / "s4_val_0", avs / "v1s" / "s4_test_0")
    with open(avs / "metadata.csv", "a") as f:
        f.write("v7,s4_test_0,0,20,guitar,test,v1s\n")
    return roots


@pytest.fixture
def cfg(roots, monkeypatch):
    for name, root in roots.items():
        monkeypatch.setenv(f"AVLIB_{name.upper()}_ROOT", str(root))
    paper = make_config("paper")
    overrides = {"data.dataset": paper.data.dataset}
    for task, (train, test) in PAPER_TASK_DATA.items():
        overrides |= {f"{task}.train_data": train, f"{task}.test_data": test}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedItemWarning)    # the VGGSound tree lists a missing clip on purpose
        yield make_config("smoke", **overrides)


def test_paper_profile_names_a_benchmark_per_protocol():
    paper = make_config("paper")
    assert paper.data.dataset == "vggsound" and paper.finetune.train_data is None
    for task, (train, test) in PAPER_TASK_DATA.items():
        tcfg = getattr(paper, task)
        assert (tcfg.train_data, tcfg.test_data) == (train, test)
    assert paper.localization.data_spec("vggsound", "test") == ("flickr", "test")
    assert make_config("cpu").localization.data_spec("avdigits", "train") == ("avdigits", "train")


def test_each_protocol_reads_its_benchmark(cfg):
    expect = {"finetune": ("VideoClipDataset", "train"), "localization": ("LocalizationDataset", "test"),
              "segmentation": ("AVSBenchDataset", "train"), "separation": ("MixtureBenchmarkDataset", "train")}
    for task, (cls, split) in expect.items():
        train, test = make_loaders(cfg, task)
        assert type(train.dataset).__name__ == cls and train.dataset.split == split, task
    loc_train, loc_test = make_loaders(cfg, "localization")
    assert loc_train.dataset.name != loc_test.dataset.name                 # VGG-SS to train, Flickr to score
    assert not loc_train.dataset.train                                      # a test-only set: no augmentation


def test_pretraining_and_classification_on_vggsound(cfg, tmp_path):
    pre = pretrain(cfg, tmp_path / "pre", device="cpu")
    assert math.isfinite(pre.metrics["val_loss"])
    for task in ("linprobe", "finetune"):
        res = run_task(task, cfg, tmp_path / task, checkpoint=pre.checkpoint, device="cpu")
        assert 0.0 <= res.metrics["top1"] <= 100.0, task
        assert res.metrics["n_test_dropped"] == 0, task         # every test clip of the tree is readable


@pytest.mark.parametrize("task, keys", [
    ("localization", {"ciou", "auc", "ciou_mean"}),
    ("segmentation", {"avsbench_miou", "avsbench_f", "davf_miou", "davf_f"}),
    ("separation", {"sdr", "sir", "sar", "sdri"}),
])
def test_dense_protocols_train_and_score_on_their_benchmarks(cfg, tmp_path, task, keys):
    res = run_task(task, cfg, tmp_path, init="scratch", device="cpu")
    assert keys <= set(res.metrics), res.metrics
    assert all(math.isfinite(res.metrics[k]) for k in keys), res.metrics
    assert res.history.meta["total_steps"] >= 1
    assert "cell_acc" not in res.metrics                                    # an AV-Digits diagnostic only


def test_an_unreadable_test_item_is_dropped_and_counted(cfg, roots, tmp_path, monkeypatch):
    flickr = tmp_path / "flickr"
    shutil.copytree(roots["flickr"], flickr)
    bt.corrupt(next((flickr / "frames").glob("*.jpg")), "garbage")
    monkeypatch.setenv("AVLIB_FLICKR_ROOT", str(flickr))
    res = run_task("localization", replace(cfg, localization=replace(cfg.localization, train=replace(
        cfg.localization.train, max_steps=1))), tmp_path / "run", init="scratch", device="cpu")
    assert res.metrics["n_test_dropped"] == 1 and res.metrics["n"] == len(bt.FLICKR_BOXES) - 1

"""The model zoo (``avlib.zoo``): staged builds, the manifest, sha256 verification, strict loading.

The committed zoo (``zoo/manifest.json``) is checked entry by entry; a tiny two-stage recipe at
``smoke`` is built into a temporary folder to test the machinery end to end.
"""
from __future__ import annotations

import pytest
import torch

from avlib import zoo
from avlib.checkpoint import load_pretrained
from avlib.config import config_from_dict
from avlib.tasks import ENCODER_FIELDS, run_task

COMMITTED = zoo.manifest()


@pytest.mark.parametrize("key", sorted(COMMITTED))
def test_committed_entry_matches_its_file_and_loads_strictly_into_its_config(key):
    profile, name = key.split("/", 1)
    entry = COMMITTED[key]
    path = zoo.checkpoint(profile, name)                              # sha256 checked against the manifest
    model, mcfg = load_pretrained(path)                               # strict: every key and shape
    cfg = config_from_dict(entry["config"])
    assert {f: getattr(mcfg, f) for f in ENCODER_FIELDS} == {f: getattr(cfg.model, f) for f in ENCODER_FIELDS}
    assert entry["command"] == f"python -m avlib.zoo build --profile {profile} --only {name}"
    for field in ("sha256", "bytes", "seed", "git_commit", "wall_s", "machine", "final", "config"):
        assert entry.get(field) is not None, (key, field)
    assert entry["warm_start"] is None or f"{profile}/{entry['warm_start']}" in COMMITTED


def test_the_committed_zoo_stays_small():
    assert sum(e["bytes"] for e in COMMITTED.values()) <= 60 * 2**20


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A two-stage recipe at smoke on synthetic scenes: unimodal MAEs, then audio-visual from them."""
    base = {"data.dataset": "synthetic", "pretrain.max_steps": 2}
    monkeypatch.setitem(zoo.RECIPES, "smoke", [
        zoo.Recipe("unimodal", "two unimodal MAEs", overrides={**base, "model.fusion_arch": "none"}),
        zoo.Recipe("deepavfusion", "audio-visual masked modeling", warm_start="unimodal",
                   overrides={**base, "pretrain.pretrained_lr_ramp": True}),
    ])
    return tmp_path / "zoo", tmp_path / "runs"


def test_a_staged_build_records_verifiable_half_precision_entries(tiny):
    root, runs = tiny
    entries = zoo.build("smoke", zoo=root, runs=runs, device="cpu")
    assert set(entries) == {"smoke/deepavfusion", "smoke/unimodal"}
    assert zoo.verify(root) == []
    av = entries["smoke/deepavfusion"]
    assert av["warm_start"] == "unimodal" and av["steps"] == 2 and av["history"]["evals"]
    stored = torch.load(root / av["file"], weights_only=True)
    assert {v.dtype for v in stored["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    model, mcfg = load_pretrained(zoo.checkpoint("smoke", "deepavfusion", zoo=root))
    assert next(model.parameters()).dtype == torch.float32 and mcfg.fusion_arch == "factorized"
    # the AV stage started from the unimodal entry's ViTs: a downstream run from both works with the config
    cfg = config_from_dict(av["config"])
    res = run_task("linprobe", cfg, runs / "probe", checkpoint=zoo.checkpoint("smoke", "deepavfusion", zoo=root),
                   device="cpu")
    assert 0.0 <= res.metrics["top1"] <= 100.0


def test_a_changed_or_missing_zoo_file_is_a_clear_error(tiny):
    root, runs = tiny
    zoo.build("smoke", ["unimodal"], zoo=root, runs=runs, device="cpu")
    path = root / "smoke" / "unimodal.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match=r"does not match the zoo manifest.*rebuild it with: "
                                           r"python -m avlib.zoo build --profile smoke --only unimodal"):
        zoo.checkpoint("smoke", "unimodal", zoo=root)
    assert len(zoo.verify(root)) == 1
    with pytest.raises(zoo.ZooError, match="no entry 'smoke/deepavfusion'"):
        zoo.checkpoint("smoke", "deepavfusion", zoo=root)
    assert zoo.checkpoint("smoke", "deepavfusion", zoo=root, required=False) is None
    with pytest.raises(zoo.ZooError, match=r"unknown zoo entries \['nope'\] for 'smoke'"):
        zoo.build("smoke", ["nope"], zoo=root, runs=runs)


def test_ensure_trains_missing_stages_in_order_and_prefers_the_zoo(tiny):
    root, runs = tiny
    path = zoo.ensure("smoke", "deepavfusion", runs=runs, zoo=root, device="cpu")
    assert path == runs / "deepavfusion" / "avmae.pt" and (runs / "unimodal" / "avmae.pt").exists()
    zoo.build("smoke", ["unimodal"], zoo=root, runs=runs / "built", device="cpu")
    assert zoo.ensure("smoke", "unimodal", runs=runs, zoo=root) == root / "smoke" / "unimodal.pt"


def test_initializations_name_each_start_as_compare_inits_takes_it(tiny, monkeypatch):
    root, runs = tiny
    zoo.RECIPES["smoke"][0] = zoo.Recipe("unimodal", "two unimodal MAEs", downstream="warm_start",
                                         overrides={"data.dataset": "synthetic", "pretrain.max_steps": 2,
                                                    "model.fusion_arch": "none"})
    zoo.RECIPES["smoke"].append(zoo.Recipe("late", "a late-fusion encoder", warm_start="unimodal",
                                           overrides={"data.dataset": "synthetic", "pretrain.max_steps": 1,
                                                      "model.fusion_arch": "none", "pretrain.epochs": 1}))
    inits = zoo.initializations("smoke", ("scratch", "unimodal", "deepavfusion", "late"), runs=runs, zoo=root,
                                device="cpu")
    assert list(inits) == ["scratch", "unimodal", "deepavfusion", "late"]
    assert inits["scratch"] == ("scratch", None, {})
    assert inits["unimodal"][0] == "warm_start" and inits["unimodal"][2] == {}           # the profile's architecture
    assert inits["deepavfusion"][0] == "pretrained" and inits["deepavfusion"][2] == {}
    assert inits["late"] == ("pretrained", runs / "late" / "avmae.pt", {"model.fusion_arch": "none"})

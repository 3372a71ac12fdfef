"""AV-Digits / synthetic scenes: ground truth, determinism, splits, loaders, missing data."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from avlib import paths
from avlib.audio import AudioFrontEnd
from avlib.config import ConfigError, make_config
from avlib.data import MixtureDataset, SceneDataset, loader_throughput, make_loaders
from avlib.data.sources import FSDD_TEST_TAKES, clear_caches, fsdd_index, fsdd_split, load_fsdd, load_mnist
from avlib.paths import DataNotFoundError

BATCH_KEYS = {"image", "audio", "waveform", "label", "labels", "loc_map", "box", "seg_mask"}


def _cfg(dataset, profile="cpu", **kw):
    return make_config(profile, **{"data.dataset": dataset, **{f"data.{k}": v for k, v in kw.items()}})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Scene tensors are tiny: one intra-op thread is much faster on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No data anywhere: no env var, an empty cache."""
    monkeypatch.delenv("AVLIB_DATA_ROOT", raising=False)
    monkeypatch.setattr(paths, "CACHE", tmp_path / "empty-cache")
    clear_caches()
    yield
    clear_caches()


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------
def _check_item(ds, item, i):
    cfg = ds.cfg
    H, W = cfg.model.image_size
    g = cfg.data.grid
    assert BATCH_KEYS <= set(item)
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["audio"].shape == (1, *cfg.model.audio_size)
    assert item["waveform"].shape == (cfg.data.clip_samples,)
    assert item["loc_map"].shape == item["seg_mask"].shape == (H, W)
    classes = item["cell_classes"]
    shown = [c for c in classes.tolist() if c >= 0]                     # -1 = an empty cell
    assert len(set(shown)) == len(shown)                                # distinct objects per image
    d = cfg.data.distractors
    n_sounding = int(item["sounding"].sum())
    assert len(shown) == (g * g if d is None else min(g * g, n_sounding + d))   # the distractors on screen
    # the log-mel is exactly the front end of the returned waveform
    assert torch.equal(item["audio"], AudioFrontEnd(cfg.data)(item["waveform"]))
    seg, loc, labels, label = item["seg_mask"], item["loc_map"], item["labels"], int(item["label"])
    assert set(seg.unique().tolist()) <= {0.0, 1.0} and set(loc.unique().tolist()) <= {0.0, 1.0}
    assert bool((seg <= loc).all())                                     # sounding pixels inside the region
    sounding = item["sounding"].nonzero().flatten().tolist()
    if label == -1:
        assert labels.sum() == 0 and loc.sum() == 0 and seg.sum() == 0 and item["box"].abs().sum() == 0
        assert sounding == []
        return
    assert labels[label] == 1 and labels.sum() == len(sounding) >= 1
    assert sorted(labels.nonzero().flatten().tolist()) == sorted(classes[sounding].tolist())
    x0, y0, x1, y1 = (int(v) for v in item["box"])
    assert (x1 - x0) * (y1 - y0) > 0
    assert bool(loc[y0:y1, x0:x1].all())                                # box = a sounding cell
    first = ds.scene(i).sounding[0]
    assert classes[first] == label
    assert seg[y0:y1, x0:x1].sum() > 0                                  # the sounding object has pixels
    inside = torch.zeros_like(seg)
    inside[y0:y1, x0:x1] = 1
    if len(sounding) == 1:
        assert torch.equal(seg * inside, seg) and loc.sum() == (x1 - x0) * (y1 - y0)
    assert item["waveform"].abs().max() > 0


@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("avdigits", marks=pytest.mark.data)])
def test_ground_truth_consistency(dataset, request):
    root = request.getfixturevalue("data_root") if dataset == "avdigits" else None
    cfg = _cfg(dataset, p_two_sources=0.3, p_offscreen=0.2, test_size=60)
    ds = SceneDataset(cfg, "test", root=root)
    kinds = set()
    for i in range(len(ds)):
        item = ds[i]
        _check_item(ds, item, i)
        kinds.add((int(item["label"]) >= 0, int(item["labels"].sum())))
        sc = ds.scene(i)
        if sc.offscreen == "silence":
            assert item["waveform"].abs().max() == 0
        if sc.offscreen == "offscreen":
            assert sc.source_classes[0] not in item["cell_classes"].tolist()
    assert {(True, 1), (True, 2), (False, 0)} <= kinds                  # one, two and no on-screen sources


@pytest.mark.parametrize("distractors", [0, 1])
def test_pretrain_distractors_clear_the_other_cells(distractors):
    # task scenes with every object (data.distractors=None), pre-training scenes with fewer
    cfg = _cfg("synthetic", distractors=None, pretrain_distractors=distractors, p_two_sources=0.3, test_size=20)
    pre, task = SceneDataset(cfg, "test", pretraining=True), SceneDataset(cfg, "test")
    for i in range(len(pre)):
        sc, full = pre.scene(i), task.scene(i)
        drawn = [k for k, (x0, y0, x1, y1) in enumerate(sc.cells) if sc.alpha[y0:y1, x0:x1].max() > 0]
        assert np.array_equal(sc.classes[drawn], full.classes[drawn]) and sc.sounding == full.sounding  # same draws
        assert (sc.classes >= 0).sum() == len(drawn) and (full.classes >= 0).all()     # -1 = empty cell
        assert torch.equal(pre[i]["audio"], task[i]["audio"])
        assert set(sc.sounding) <= set(drawn)
        assert len(drawn) == min(len(sc.sounding) + distractors, len(sc.cells))
        for k in set(range(len(sc.cells))) - set(drawn):                # a cleared cell is flat background
            x0, y0, x1, y1 = sc.cells[k]
            assert np.ptp(sc.image[y0:y1, x0:x1].reshape(-1, 3), axis=0).max() == 0
        for k in sc.sounding:                                          # the sounding objects are untouched
            x0, y0, x1, y1 = sc.cells[k]
            assert np.array_equal(sc.image[y0:y1, x0:x1], full.image[y0:y1, x0:x1])
    # without pretrain_distractors, pre-training scenes are the task scenes
    cpu = make_config("cpu", **{"data.dataset": "synthetic"})
    assert cpu.data.distractors is None and SceneDataset(cpu, "test", pretraining=True).distractors is None
    two = make_config("cpu", **{"data.dataset": "synthetic", "data.distractors": 1})
    assert SceneDataset(two, "test", pretraining=True).distractors == 1


def test_task_distractors_empty_cells_in_every_dataset():
    cfg = _cfg("synthetic", distractors=1, p_two_sources=0.3, p_offscreen=0.2, test_size=30)
    ds = SceneDataset(cfg, "test")
    for i in range(len(ds)):
        _check_item(ds, ds[i], i)                                       # counts the objects on screen
    empty = [int((ds[i]["cell_classes"] < 0).sum()) for i in range(len(ds))]
    assert min(empty) >= 1                                              # 4 cells, at most 3 objects
    mix = MixtureDataset(cfg, "test")
    for i in range(5):
        for sc in mix.scenes(i):                                        # each target image: itself + 1
            assert (sc.classes >= 0).sum() == 2 and sc.classes[sc.sounding[0]] >= 0
    with pytest.raises(ConfigError, match="distractors"):
        _cfg("synthetic", distractors=-1)


def test_pretrain_distractors_p_mixes_curated_and_full_scenes():
    cfg = _cfg("synthetic", distractors=1, pretrain_distractors=0, pretrain_distractors_p=0.5, test_size=40)
    pre, task = SceneDataset(cfg, "test", pretraining=True), SceneDataset(cfg, "test")
    curated = 0
    for i in range(len(pre)):
        sc, full = pre.scene(i), task.scene(i)
        assert sc.sounding == full.sounding
        drawn = [k for k, (x0, y0, x1, y1) in enumerate(sc.cells) if sc.alpha[y0:y1, x0:x1].max() > 0]
        if drawn == sc.sounding:                                        # curated: the sounding object alone
            curated += 1
        else:                                                          # a task scene (cpu: one distractor)
            assert len(drawn) == len(sc.sounding) + cfg.data.distractors == (sc.classes >= 0).sum()
    assert 0.2 * len(pre) <= curated <= 0.8 * len(pre)                  # both kinds, about half each
    with pytest.raises(ConfigError, match="pretrain_distractors_p"):
        _cfg("synthetic", pretrain_distractors_p=1.5)


@pytest.mark.data
def test_avdigits_labels_match_files(data_root):
    cfg = _cfg("avdigits", p_two_sources=0.5, test_size=40)
    ds = SceneDataset(cfg, "test", root=data_root)
    images, labels = load_mnist(data_root, "test")
    bank = ds.content.bank
    gs = ds.composer.glyph_size
    assert gs == 28                                                     # cpu profile: MNIST at native size
    for i in range(len(ds)):
        item, sc, info = ds[i], ds.scene(i), ds.describe(i)
        # the recording's file name says the digit that is heard
        for name, cls in zip(info["recordings"], info["source_classes"]):
            assert int(name.split("_")[0]) == cls
            assert int(name.split("_")[2].split(".")[0]) in FSDD_TEST_TAKES
        assert int(info["recordings"][0].split("_")[0]) == int(item["label"])
        # every cell shows an MNIST *test* image of its class, pixel for pixel
        for k, (gid, cls) in enumerate(zip(sc.glyph_ids, sc.classes)):
            if cls < 0:                                                 # an empty cell (data.distractors)
                assert gid == -1 and sc.alpha[sc.cells[k][1]:sc.cells[k][3], sc.cells[k][0]:sc.cells[k][2]].max() == 0
                continue
            assert labels[gid] == cls
            x, y, s = sc.glyph_boxes[k]
            assert np.allclose(sc.alpha[y:y + s, x:x + s], images[gid].astype(np.float32) / 255, atol=1e-6, rtol=0)
        # the sounding digit's mask is its MNIST stroke
        x, y, s = sc.glyph_boxes[sc.sounding[0]]
        stroke = images[sc.glyph_ids[sc.sounding[0]]] > 127
        assert np.array_equal(item["seg_mask"][y:y + s, x:x + s].numpy().astype(bool), stroke)
        assert item["source_ids"][0] == sc.source_ids[0]
        assert bank.recordings[int(item["source_ids"][0])].name == info["recordings"][0]


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------
def _equal_items(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("avdigits", marks=pytest.mark.data)])
def test_deterministic(dataset, request):
    root = request.getfixturevalue("data_root") if dataset == "avdigits" else None
    cfg = _cfg(dataset, "smoke", p_two_sources=0.3, p_offscreen=0.2)
    a, b = SceneDataset(cfg, "train", root=root), SceneDataset(cfg, "train", root=root)
    for i in (0, 5, 11):
        assert _equal_items(a[i], b[i])                                 # same seed: bit for bit
    assert _equal_items(a[3], a[3])
    assert not torch.equal(a[0]["image"], a[1]["image"])                # other index: other scene
    other = SceneDataset(make_config("smoke", **{"data.dataset": dataset, "seed": 1}), "train", root=root)
    assert not torch.equal(a[0]["image"], other[0]["image"])            # other seed: other scene
    assert not torch.equal(a[0]["image"], SceneDataset(cfg, "test", root=root)[0]["image"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["image"], b[0]["image"])                # fresh training scenes per epoch
    t0, t1 = SceneDataset(cfg, "test", root=root), SceneDataset(cfg, "test", root=root)
    t1.set_epoch(3)
    assert _equal_items(t0[2], t1[2])                                   # test scenes never change


def test_worker_count_does_not_change_batches():
    cfg = _cfg("synthetic", "smoke", p_two_sources=0.3)
    ds = SceneDataset(cfg, "train", size=16)
    b0 = list(DataLoader(ds, batch_size=4, num_workers=0))
    b2 = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert all(_equal_items(x, y) for x, y in zip(b0, b2))
    tl0, _ = make_loaders(cfg, batch_size=4, num_workers=0, train_size=16, test_size=8)
    tl2, _ = make_loaders(cfg, batch_size=4, num_workers=2, train_size=16, test_size=8)
    assert all(_equal_items(x, y) for x, y in zip(tl0, tl2))           # same shuffle, same items


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
@pytest.mark.data
def test_fsdd_official_split_disjoint(data_root):
    index = fsdd_index(data_root)
    assert len(index) == 3000
    train, test = fsdd_split(index, "train"), fsdd_split(index, "test")
    assert len(train) == 2700 and len(test) == 300
    assert {r.path for r in train}.isdisjoint({r.path for r in test})
    assert all(r.take >= 5 for r in train) and all(r.take <= 4 for r in test)
    bank_tr, bank_te = load_fsdd(data_root, split="train"), load_fsdd(data_root, split="test")
    assert bank_tr.takes.min() >= 5 and bank_te.takes.max() <= 4
    assert load_fsdd(data_root, split="train") is bank_tr                  # cached per process
    assert abs(np.abs(bank_te.clip(0)).max() - 0.5) < 1e-6                 # peak-normalized
    # held-out speakers: never in train, the only voices in test
    hold = ("theo",)
    tr, te = fsdd_split(index, "train", hold), fsdd_split(index, "test", hold)
    assert all(r.speaker != "theo" and r.take >= 5 for r in tr) and {r.speaker for r in te} == {"theo"}
    with pytest.raises(ValueError, match="not in FSDD"):
        fsdd_split(index, "train", ("nobody",))
    cfg = _cfg("avdigits", holdout_speakers=hold)
    ds_tr = SceneDataset(cfg, "train", root=data_root)
    assert "theo" not in ds_tr.content.bank.speakers
    assert SceneDataset(cfg, "test", root=data_root).content.bank.speakers == ["theo"]


@pytest.mark.data
def test_mnist_splits(data_root):
    tr_img, tr_lab = load_mnist(data_root, "train")
    te_img, te_lab = load_mnist(data_root, "test")
    assert tr_img.shape == (60000, 28, 28) and te_img.shape == (10000, 28, 28)
    assert tr_img.dtype == np.uint8 and tr_lab.dtype == np.int64
    assert np.bincount(te_lab).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    cfg = _cfg("avdigits")
    ds_tr, ds_te = SceneDataset(cfg, "train", root=data_root), SceneDataset(cfg, "test", root=data_root)
    assert ds_tr.content.images is tr_img and ds_te.content.images is te_img
    with pytest.raises(ValueError, match="split"):
        load_mnist(data_root, "val")


@pytest.mark.data
def test_validation_split_shares_no_source_with_train_or_test(data_root):
    cfg = _cfg("avdigits")
    content = {split: SceneDataset(cfg, split, root=data_root, size=64).content for split in ("train", "val", "test")}
    bank = content["train"].bank
    assert content["val"].bank is bank                                      # val is carved from the train sources
    recordings = {split: {int(i) for rows in c.by_digit for i in rows} for split, c in content.items()}
    images = {split: {int(i) for rows in c.by_class for i in rows} for split, c in content.items()}
    assert recordings["train"].isdisjoint(recordings["val"]) and images["train"].isdisjoint(images["val"])
    assert set(bank.takes[sorted(recordings["val"])]) == set(range(5, 10))   # FSDD takes 5-9
    assert bank.takes[sorted(recordings["train"])].min() == 10
    assert min(images["val"]) == 50000 and max(images["train"]) == 49999    # the last 10,000 MNIST images
    assert len(recordings["train"]) + len(recordings["val"]) == 2700 and len(images["val"]) == 10000
    # test scenes come from the official test sources, which neither of the others touches
    assert content["test"].images is not content["val"].images and content["test"].bank.takes.max() <= 4
    # every scene a split composes uses only its own recordings and pictures
    for split in ("train", "val"):
        ds = SceneDataset(cfg, split, root=data_root, size=64)
        for i in range(len(ds)):
            sc = ds.scene(i)
            assert set(sc.source_ids) <= recordings[split] and set(sc.glyph_ids.tolist()) <= images[split]
    val = SceneDataset(cfg, "val", root=data_root, size=8)
    assert not val.train and _equal_items(val[3], SceneDataset(cfg, "val", root=data_root, size=8)[3])


# ----------------------------------------------------------------------------------------------
# Separation pairs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("avdigits", marks=pytest.mark.data)])
def test_mixture_dataset(dataset, request):
    root = request.getfixturevalue("data_root") if dataset == "avdigits" else None
    cfg = _cfg(dataset, "smoke", p_two_sources=0.5, p_offscreen=0.5)       # ignored: one source each
    front = AudioFrontEnd(cfg.data)
    for split in ("train", "test"):
        ds = MixtureDataset(cfg, split, root=root, size=6)
        for i in range(len(ds)):
            it = ds[i]
            K, (H, W), S = 2, cfg.model.image_size, cfg.data.clip_samples
            assert it["images"].shape == (K, 3, H, W) and it["source_waveforms"].shape == (K, S)
            assert it["source_audio"].shape == (K, 1, *cfg.model.audio_size)
            assert torch.equal(it["mix_waveform"], it["source_waveforms"].sum(0))   # plain sum
            assert torch.allclose(it["mix_audio"], front(it["mix_waveform"]), atol=1e-5)
            assert torch.allclose(it["source_audio"], front(it["source_waveforms"]), atol=1e-5)
            labels = it["labels"].tolist()
            assert len(set(labels)) == K and min(labels) >= 0
            for k in range(K):
                assert it["loc_maps"][k].sum() > 0 and bool((it["seg_masks"][k] <= it["loc_maps"][k]).all())
                assert (it["source_waveforms"][k].abs() > 0).any()
        assert _equal_items(ds[1], MixtureDataset(cfg, split, root=root, size=6)[1])


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", [None, "linprobe", "finetune", "localization", "segmentation", "separation"])
def test_make_loaders(task):
    cfg = _cfg("synthetic", "smoke")
    train, test = make_loaders(cfg, task, train_size=20, test_size=10)
    bs = (cfg.pretrain if task is None else cfg.task(task).train).batch_size    # the stage's own batch
    assert train.batch_size == bs and train.drop_last and not test.drop_last
    batches = list(train)
    assert len(batches) == 20 // bs
    b = batches[0]
    H, W = cfg.model.image_size
    if task == "separation":
        assert b["images"].shape == (bs, 2, 3, H, W) and b["mix_audio"].shape == (bs, 1, *cfg.model.audio_size)
        assert b["source_waveforms"].shape == (bs, 2, cfg.data.clip_samples)
    else:
        assert BATCH_KEYS <= set(b)
        assert b["image"].shape == (bs, 3, H, W) and b["audio"].shape == (bs, 1, *cfg.model.audio_size)
        assert b["label"].dtype == torch.long and b["labels"].shape == (bs, 10) and b["box"].shape == (bs, 4)
    assert sum(len(x["index"]) for x in test) == 10
    with pytest.raises(ValueError, match="unknown task 'dance'"):
        make_loaders(cfg, "dance")


def test_loader_throughput_reports():
    r = loader_throughput(_cfg("synthetic", "smoke"), batch_size=4, num_batches=2, num_workers=0)
    assert r["num_batches"] == 2 and r["batches_per_s"] > 0 and r["samples_per_s"] == pytest.approx(
        4 * r["batches_per_s"])


# ----------------------------------------------------------------------------------------------
# Without data
# ----------------------------------------------------------------------------------------------
def test_synthetic_needs_no_data(no_data):
    cfg = _cfg("synthetic", "smoke", p_two_sources=0.3, p_offscreen=0.2)
    ds = SceneDataset(cfg, "train")
    for i in range(8):
        _check_item(ds, ds[i], i)
    assert MixtureDataset(cfg, "test", size=2)[0]["mix_waveform"].shape == (cfg.data.clip_samples,)


def test_missing_data_error_names_the_fix(no_data, tmp_path):
    cfg = _cfg("avdigits", "smoke")
    with pytest.raises(DataNotFoundError) as e:
        SceneDataset(cfg, "train")
    msg = str(e.value)
    assert "python -m avlib.data.download" in msg and "synthetic" in msg
    with pytest.raises(DataNotFoundError, match="avlib.data.download"):     # an explicit wrong root
        SceneDataset(cfg, "train", root=tmp_path / "nowhere")
    (tmp_path / "half" / "fsdd" / "recordings").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="mnist"):
        load_mnist(tmp_path / "half", "train")
    with pytest.raises(ValueError, match="grid"):
        SceneDataset(_cfg("synthetic", "smoke", grid=4), "train")


# ----------------------------------------------------------------------------------------------
# Unreadable source files (issue 16): named, counted, and one bad file does not sink the dataset
# ----------------------------------------------------------------------------------------------
def _fsdd_copy(data_root, tmp_path, n_per_digit=2) -> Path:
    """A small FSDD tree: the first takes 0..n-1 of speaker 'george' for every digit (all in the test split)."""
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for d in range(10):
        for take in range(n_per_digit):
            shutil.copy(data_root / "fsdd" / "recordings" / f"{d}_george_{take}.wav", rec)
    return tmp_path


@pytest.mark.data
@pytest.mark.parametrize("how", ["empty", "header", "half"])
def test_unreadable_fsdd_recording_is_left_out_with_a_counted_warning(data_root, tmp_path, how):
    import warnings as W

    from avlib.data.media import SkippedItemWarning
    root = _fsdd_copy(data_root, tmp_path)
    bad = root / "fsdd" / "recordings" / "3_george_1.wav"
    data = bad.read_bytes()
    bad.write_bytes({"empty": b"", "header": data[:20], "half": data[: len(data) // 2]}[how])   # "half": cut mid-data
    clear_caches()
    with pytest.warns(SkippedItemWarning, match=r"FSDD: 1 of 20 recordings unreadable, left out: .*3_george_1\.wav"):
        bank = load_fsdd(root, split="test")
    assert len(bank) == 19 and bad not in [r.path for r in bank.recordings]
    assert len(bank.by_digit[3]) == 1 and bank.skipped.summary()["skipped_files"] == 1
    assert np.array_equal(bank.digits, [r.digit for r in bank.recordings])
    for i, r in enumerate(bank.recordings):                                   # every clip read whole
        assert bank.lengths[i] == sf.info(str(r.path)).frames
    for p in (root / "fsdd" / "recordings").iterdir():
        if p != bad:
            p.write_bytes(b"")
    clear_caches()
    with W.catch_warnings(), pytest.raises(ValueError, match="20 of 20 recordings unreadable"):
        W.simplefilter("ignore")
        load_fsdd(root, split="test")


@pytest.mark.data
def test_damaged_mnist_gz_names_the_file(data_root, tmp_path):
    mnist = tmp_path / "mnist"
    shutil.copytree(data_root / "mnist", mnist)
    gz = mnist / "t10k-images-idx3-ubyte.gz"
    data = bytearray(gz.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(4096)                                         # zeroed bytes (before: zlib.error)
    gz.write_bytes(bytes(data))
    clear_caches()
    with pytest.raises(ValueError, match=rf"{gz}: cannot read \(.*\); the file is corrupt .*avlib.data.download"):
        load_mnist(tmp_path, "test")

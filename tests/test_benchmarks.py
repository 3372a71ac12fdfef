"""avlib.data.benchmarks on tiny fixture trees in the official layouts (written by ``benchmark_trees``).

Sizes come from the ``smoke`` profile (8 kHz, 1 s clips, 32 mels x 64 frames, 32 x 32 images) so that every
loader, every bad-input path and the DataLoader worker path run in seconds; one test uses the paper sizes.
"""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

import benchmark_trees as bt
from avlib.config import make_config
from avlib.data.benchmarks import (AnnotationError, EmptyDatasetError, build_benchmark, flickr_gt_map,
                                   resolve_root, vggss_gt_map)
from avlib.data.media import MediaError, SkippedItemWarning
from avlib.paths import DataNotFoundError

CFG = make_config("smoke")
F, T, S, HW = CFG.data.n_mels, CFG.data.num_frames, CFG.data.clip_samples, tuple(CFG.model.image_size)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("benchmarks")
    return {
        "vggsound": bt.vggsound_tree(base / "vggsound"),
        "audioset": bt.audioset_tree(base / "audioset"),
        "flickr": bt.flickr_tree(base / "flickr"),
        "vggss": bt.vggss_tree(base / "vggss"),
        "avsbench": bt.avsbench_tree(base / "avsbench"),
        "vggsound_music": bt.vggsound_music_tree(base / "vggsound_music"),
        "music": bt.music_tree(base / "music"),
    }


def build(name, split, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedItemWarning)     # the fixture trees list one missing clip on purpose
        return build_benchmark(name, split, CFG, root=root, **kw)


def copy_tree(trees, key, tmp_path):
    return shutil.copytree(trees[key]["root"], tmp_path / key)


def check_av(item, image_hw=HW):
    assert item["image"].shape == (3, *image_hw) and item["image"].dtype == torch.float32
    assert item["audio"].shape == (1, F, T) and item["waveform"].shape == (S,)
    for k, v in item.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    assert item["waveform"].abs().max() > 0.05                     # real signal, not padding zeros


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# classification clips
# ----------------------------------------------------------------------------------------------
def test_vggsound_layout_labels_and_missing_report(trees):
    root = trees["vggsound"]["root"]
    with pytest.warns(SkippedItemWarning, match=r"1 of 4 listed items are missing"):
        ds = build_benchmark("vggsound", "train", CFG, root=root)
    assert len(ds) == 3 and ds.missing and "missing0000" in ds.missing[0]
    assert ds.skip_summary()["by_kind"] == {"missing": 1}
    # class index = position among the sorted sanitized labels of the annotation file
    assert ds.classes == ["dog_barking", "engine__idling_", "playing_violin__fiddle"]
    labels = [int(ds[i]["label"]) for i in range(3)]
    assert labels == [0, 2, 1]                                     # rows: dog, violin (44.1 kHz stereo), engine
    for i in range(3):
        check_av(ds[i])
    test = build("vggsound", "test", root)
    assert len(test) == 2 and "VideoClipDataset('vggsound'" in repr(test)


def test_eval_items_are_deterministic_train_items_random(trees):
    root = trees["vggsound"]["root"]
    test = build("vggsound", "test", root)
    torch.manual_seed(1)
    a = test[1]
    torch.manual_seed(2)
    assert same(a, test[1])                                        # centre clip + centre frame, no RNG
    train = build("vggsound", "train", root)
    torch.manual_seed(1)
    b = train[0]
    torch.manual_seed(2)
    c = train[0]
    assert not torch.equal(b["waveform"], c["waveform"])           # random clip centre in [s + 0.5, e - 0.5]


def test_paper_sizes(trees):
    cfg = make_config("paper")
    ds = build_benchmark("vggsound", "test", cfg, root=trees["vggsound"]["root"])
    item = ds[0]
    assert item["image"].shape == (3, 224, 224)
    assert item["audio"].shape == (1, 128, 192) and item["waveform"].shape == (48000,)
    assert torch.isfinite(item["audio"]).all()


def test_audioset_multi_hot_splits_and_class_balanced(trees):
    tree = trees["audioset"]
    root = tree["root"]
    mid = {m: k for k, (m, _) in enumerate(tree["classes"])}
    train = build("audioset", "train", root)                      # unbalanced_train, one clip missing
    assert len(train) == 3 and len(train.missing) == 1 and train.num_classes == 5
    item = train[0]
    check_av(item)
    expect = torch.zeros(5)
    expect[[mid["/m/09x0r"], mid["/m/05zppz"]]] = 1
    assert torch.equal(item["labels"], expect) and "label" not in item
    assert len(build("audioset_bal_orig", "train", root)) == 2
    test = build("audioset", "test", root)
    assert len(test) == 2 and test[0]["labels"].sum() == 3
    bal = build("audioset-bal", "train", root)
    torch.manual_seed(0)
    picked = {bal._resolve(0) for _ in range(40)}                 # class-uniform: idx is ignored
    assert picked == {0, 1, 2}
    assert float(bal.class_counts().sum()) == 5


# ----------------------------------------------------------------------------------------------
# localization
# ----------------------------------------------------------------------------------------------
def test_flickr_soft_consensus_map(trees):
    ds = build("flickr", "test", trees["flickr"]["root"])
    assert len(ds) == 3
    item = ds[0]                                                   # id 1000: (0,0,128,128) + (64,64,192,192)
    check_av(item)
    m = item["loc_map"]
    assert m.shape == (224, 224) and set(m.unique().tolist()) == {0.0, 0.5, 1.0}
    # 256 -> 224 with int arithmetic: 128 -> 112, 64 -> 56, 192 -> 168
    assert m[56:112, 56:112].eq(1.0).all()                         # both annotators
    assert m[0:56, 0:112].eq(0.5).all() and m[112:168, 56:168].eq(0.5).all()   # one annotator
    assert m[168:, :].eq(0).all() and m[:, 168:].eq(0).all()
    assert item["box"].tolist() == [0, 0, 112, 112]
    assert ds[2]["loc_map"][20:175, 8:218].eq(1.0).all()          # two identical boxes: consensus 1
    gray = ds[1]                                                   # grayscale jpg -> 3 channels
    assert gray["image"].shape == (3, *HW)
    assert torch.allclose(gray["image"][0] * 0.229 + 0.485, gray["image"][1] * 0.224 + 0.456, atol=1e-5)
    assert flickr_gt_map([(0, 0, 256, 256)]).max() == 0.5


def test_vggss_binary_union_of_normalized_boxes(trees):
    ds = build("vggss", "test", trees["vggss"]["root"])
    assert len(ds) == 2 and ds.classes == ["dog barking", "playing piano"]
    a, b = ds[0], ds[1]
    check_av(a)
    assert set(a["loc_map"].unique().tolist()) == {0.0, 1.0}
    assert a["loc_map"].sum() == 112 * 112 * 2 - 56 * 56          # union of two overlapping 112-px squares
    expect = torch.zeros(224, 224)
    expect[44:201, 22:224] = 1                                     # x1 = 1.2 clipped to 1 -> 224
    assert torch.equal(b["loc_map"], expect) and int(b["label"]) == 1
    assert torch.equal(torch.from_numpy(vggss_gt_map([[0, 0, 1, 1]])), torch.ones(224, 224))


def test_flickr_metadata_dir_and_fallback(trees, tmp_path):
    root = copy_tree(trees, "flickr", tmp_path)
    meta = shutil.move(str(root / "metadata"), str(tmp_path / "elsewhere"))
    with pytest.warns(UserWarning, match="flickr_test.csv not found"):
        assert len(build_benchmark("flickr", "test", CFG, root=root)) == 3
    assert len(build("flickr", "test", root, metadata_dir=meta)) == 3


# ----------------------------------------------------------------------------------------------
# AVSBench
# ----------------------------------------------------------------------------------------------
def _brightness(img: torch.Tensor) -> torch.Tensor:
    return img[0] * 0.229 + 0.485                                 # de-normalized red channel in [0, 1]


def test_avsbench_s4_train_joint_transform_keeps_mask_aligned(trees):
    ds = build("avsbench_s4", "train", trees["avsbench"]["root"])
    assert ds.num_items == 1 and len(ds) == 10                     # official 10x oversampling
    for seed in range(4):
        torch.manual_seed(seed)
        item = ds[seed]
        check_av(item)
        mask = item["seg_mask"]
        assert mask.shape == HW and mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() > 0
        bright = _brightness(item["image"]) > 0.5                 # the frame is bright exactly on the object
        assert (bright == mask.bool()).float().mean() > 0.9


def test_avsbench_ms3_eval_filters_silent_objects_and_is_dense(trees):
    tree = trees["avsbench"]
    ds = build("avsbench_ms3", "val", tree["root"])
    assert len(ds) == 3 and [int(ds[i]["frame"]) for i in range(3)] == [0, 1, 2]   # every annotated frame
    item = ds[0]
    check_av(item)
    mask = item["seg_mask"]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # eval = Resize(32) + CenterCrop(32) of a 48x48 frame: the left half is sounding, the corner object silent
    assert mask[12:20, :12].eq(1).all() and mask[:, 20:].eq(0).all()
    assert same(item, ds[0])
    assert ds[0]["labels"].nonzero().flatten().tolist() == sorted(tree["samples"]["ms3_val_0"]["sounding"])


@pytest.mark.parametrize("zero_based", [False, True])
def test_avss_class_ids_with_either_label2idx_convention(trees, tmp_path, zero_based):
    root = copy_tree(trees, "avsbench", tmp_path)
    if zero_based:                 # background = 0 in label2idx: PNG values are then the indices themselves
        import json
        (root / "label2idx.json").write_text(json.dumps({c: i for i, c in enumerate(bt.AVS_CLASSES)}))
    ds = build("avsbench_avss", "val", root)
    by_uid = {}
    for i in range(len(ds)):
        folder = ds.items[i][0].name
        by_uid.setdefault(folder, ds[i])
    item = by_uid["avss_val_0"]                                     # a_obj "dog_off-the-screen"
    mask = item["seg_mask"]
    assert mask.dtype == torch.long and mask.shape == HW
    dog = bt.AVS_CLASSES.index("dog")                              # 0-based id of 'dog' = 1
    assert set(mask.unique().tolist()) == {0, dog}                 # silent 'guitar' in the corner removed
    ms3 = by_uid["ms3_val_0"]["seg_mask"]                           # "piano_man": the mask holds piano + a silent dog
    assert set(ms3.unique().tolist()) == {0, bt.AVS_CLASSES.index("piano")}


def test_avsbench_bad_label_values_name_the_png(trees, tmp_path):
    root = copy_tree(trees, "avsbench", tmp_path)
    png = root / "v1s" / "s4_val_0" / "labels_semantic" / "0.png"
    bt.write_png_mask(png, np.full((48, 48), 255, np.uint8))        # a 0/255 binary mask, not class ids
    ds = build("avsbench_s4", "val", root)
    with pytest.raises(AnnotationError, match=r"0\.png.*255"):
        ds[0]


# ----------------------------------------------------------------------------------------------
# separation mixtures
# ----------------------------------------------------------------------------------------------
def check_mixture(item, k=2):
    assert item["images"].shape == (k, 3, *HW)
    assert item["source_waveforms"].shape == (k, S) and item["mix_waveform"].shape == (S,)
    assert item["mix_audio"].shape == (1, F, T) and item["source_audio"].shape == (k, 1, F, T)
    assert torch.allclose(item["mix_waveform"], item["source_waveforms"].sum(0))
    for key in ("images", "source_waveforms", "mix_audio", "source_audio"):
        assert torch.isfinite(item[key]).all()


def test_vggsound_music_train_and_eval_pairs(trees):
    root = trees["vggsound_music"]["root"]
    train = build("vggsound_music", "train", root)
    assert train.num_items == 3 and len(train.missing) == 1        # grouped per video; one clip missing
    assert "violin__fiddle" in train.classes and "steel_guitar__slide_guitar" in train.classes
    torch.manual_seed(0)
    item = train[0]
    check_mixture(item)
    assert item["source_labels"][0] == train.classes.index("violin__fiddle")
    test = build("vggsound_music", "test", root)                   # 'violin,_fiddle' -> playing_violin__fiddle
    assert len(test) == 2
    e = test[0]
    check_mixture(e)
    assert same(e, test[0])
    assert e["source_labels"].tolist() == [test.classes.index("violin__fiddle"), test.classes.index("cello")]


def test_mixture_bad_partner_is_replaced_not_the_item(trees, tmp_path):
    root = copy_tree(trees, "vggsound_music", tmp_path)
    ds = build("vggsound_music", "train", root)
    assert [v for v, _ in ds.items] == ["tra00000001", "trb00000002", "trc00000003"]
    bt.corrupt(root / "clips" / ds.items[1][1][0][0], "garbage")          # trb's only clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedItemWarning)
        for seed in range(4):
            torch.manual_seed(seed)
            item = ds[0]
            assert int(item["index"]) == 0 and item["source_labels"][1] != ds.classes.index("cello")
        assert int(ds[1]["index"]) == 2                                   # trb itself: the next video
    assert ds.skip_summary()["by_kind"] == {"missing": 1, "undecodable": 1}


def test_music_split_and_mixtures(trees):
    root = trees["music"]["root"]
    train = build("music", "train", root, eval_videos=2)
    # 4 solo videos, every 2nd is eval (mus1, mus3); the duet is test; 2 segments per video -> oversample 2
    assert [v for v, _ in train.items] == ["mus00000002", "mus00000004"] and len(train) == 4
    torch.manual_seed(0)
    check_mixture(train[3])
    test = build("music", "test", root, eval_videos=2)
    assert len(test) == 4
    for i in range(len(test)):                                     # partners always from the other video
        (p1, _), (p2, _) = test.items[i]
        assert p1.split("/")[1].split(".")[0] != p2.split("/")[1].split(".")[0]
    check_mixture(test[0])
    assert len(build("music_solo", "test", root, eval_videos=2)) == 4


# ----------------------------------------------------------------------------------------------
# bad inputs inside loaders
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how,kind", [("truncate", "truncated"), ("garbage", "undecodable")])
def test_unreadable_training_clip_is_skipped_deterministically(trees, tmp_path, how, kind):
    root = copy_tree(trees, "vggsound", tmp_path)
    ds = build("vggsound", "test", root, train=True)               # training: a bad item is replaced
    bt.corrupt(root / "clips" / ds.items[0][0], how)
    with pytest.warns(SkippedItemWarning, match="skipping"):
        item = ds[0]
    assert int(item["index"]) == 1                                 # the next item, always the same one
    check_av(item)
    assert int(ds[0]["index"]) == 1
    s = ds.skip_summary()
    assert s["skipped_files"] == 1 and s["by_kind"] == {kind: 1} and ds.items[0][0] in s["examples"][0][0]


@pytest.mark.parametrize("name, bad", [("flickr", ["frames/1001.jpg", "audio/1002.wav"]),
                                       ("vggsound", ["clips/dog_barking/ddddddddddd_000040_000050.mp4"])])
def test_evaluation_sets_score_exactly_the_readable_items(trees, tmp_path, name, bad):
    root = copy_tree(trees, name, tmp_path)
    full = build(name, "test", root)
    for rel in bad:
        bt.corrupt(root / rel, "garbage")
    with pytest.warns(SkippedItemWarning, match=f"{len(bad)} of {full.num_items} items unreadable and dropped"):
        ds = build_benchmark(name, "test", CFG, root=root)         # the task path's call: validated by default
    assert len(ds) == full.num_items - len(bad)                    # before: 3 of 3 for Flickr with 2 bad
    assert ds.skip_summary()["skipped_files"] == len(bad)
    read = [int(ds[i]["index"]) for i in range(len(ds))]
    assert read == list(range(len(ds)))                            # each readable item once, none twice
    # a file that breaks after the set was built: an error naming it, not its neighbour's data
    lazy = build(name, "test", copy_tree(trees, name, tmp_path / "lazy"), validate=False)
    bt.corrupt(lazy.root / bad[0], "garbage")
    broken = next(i for i in range(lazy.num_items) if any(str(f).endswith(bad[0]) for f in lazy._item_files(i)))
    with pytest.raises(MediaError, match=f"{bad[0]}.*never replaced by a neighbour"):
        lazy[broken]


def test_empty_and_missing_files_are_reported_at_index_time(trees, tmp_path):
    root = copy_tree(trees, "flickr", tmp_path)
    bt.corrupt(root / "audio" / "1000.wav", "empty")
    bt.corrupt(root / "frames" / "1001.jpg", "delete")
    with pytest.warns(SkippedItemWarning, match="2 of 3 listed items"):
        ds = build_benchmark("flickr", "test", CFG, root=root)
    assert len(ds) == 1 and ds.skip_summary()["by_kind"] == {"empty": 1, "missing": 1}


def test_garbage_image_and_validate(trees, tmp_path):
    root = copy_tree(trees, "flickr", tmp_path)
    bt.corrupt(root / "frames" / "1001.jpg", "garbage")
    ds2 = build("flickr", "test", root, validate=False)
    with pytest.warns(SkippedItemWarning, match="validate"):
        ds2.validate()
    assert len(ds2) == 2 and [it["id"] for it in ds2.items] == ["1000", "1002"]


def test_all_bad_dataset_raises_clear_errors(trees, tmp_path):
    root = copy_tree(trees, "vggsound", tmp_path)
    ds = build("vggsound", "test", root, train=True)
    for rel, _ in ds.items:
        bt.corrupt(root / "clips" / rel, "garbage")
    with pytest.warns(SkippedItemWarning), pytest.raises(EmptyDatasetError, match="none of the 2 items"):
        ds[0]
    with pytest.warns(SkippedItemWarning), pytest.raises(EmptyDatasetError, match="none of the 2 items .* is readable"):
        build_benchmark("vggsound", "test", CFG, root=root)     # an evaluation set: found when it is built
    shutil.rmtree(root / "clips")
    with pytest.warns(SkippedItemWarning), pytest.raises(EmptyDatasetError) as err:
        build_benchmark("vggsound", "test", CFG, root=root)
    msg = str(err.value)
    assert str(root) in msg and "annotations/vggsound.csv" in msg and "2 listed items missing" in msg


def test_dataloader_workers_report_skips_to_the_parent(trees, tmp_path):
    root = copy_tree(trees, "vggsound", tmp_path)
    ds = build("vggsound", "train", root)
    bt.corrupt(root / "clips" / ds.items[1][0], "truncate")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, multiprocessing_context="fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, *HW) and batch["audio"].shape == (3, 1, F, T)
    assert batch["index"].tolist() == [0, 2, 2]
    assert ds.skip_summary()["by_kind"] == {"missing": 1, "truncated": 1}


# ----------------------------------------------------------------------------------------------
# malformed annotations: the error names the file and the line
# ----------------------------------------------------------------------------------------------
def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def _bad_vggsound(root):
    p = root / "annotations" / "vggsound.csv"
    _append(p, "zzzzzzzzzzz,notanint,dog barking,train\n")
    return "vggsound", "train", p, 7


def _bad_audioset(root):
    p = root / "annotations" / "eval_segments.csv"
    _append(p, 'Hh8hhhhhhhh, 0.000, 10.000, "/m/unknown"\n')
    return "audioset", "test", p, 6


def _bad_flickr(root):
    p = root / "Annotations" / "1001.xml"
    p.write_text(p.read_text().replace("<ymin>32</ymin>", "<ymin>3x2</ymin>"))
    return "flickr", "test", p, 7


def _bad_vggss(root):
    p = root / "metadata" / "vggss.json"
    p.write_text(p.read_text().replace('"bbox": [[0.1, 0.2, 1.2, 0.9]]', '"bbox": [[0.1, 0.2]]'))
    return "vggss", "test", p, 3


def _bad_avsbench(root):
    p = root / "metadata.csv"
    _append(p, "v9,s4_x,0,0,unicorn,val,v1s\n")
    return "avsbench_s4", "val", p, 8


def _bad_music(root):
    p = root / "anno" / "music_solo.csv"
    _append(p, "only_one_column\n")
    return "music", "test", p, 6


def _bad_vggmusic(root):
    p = root / "metadata" / "vggmusic_eval_ss.csv"
    _append(p, "short_id,evb00000002_000000,cello,cello,Hard\n")
    return "vggsound_music", "test", p, 4


@pytest.mark.parametrize("make_bad,key", [(_bad_vggsound, "vggsound"), (_bad_audioset, "audioset"),
                                          (_bad_flickr, "flickr"), (_bad_vggss, "vggss"),
                                          (_bad_avsbench, "avsbench"), (_bad_music, "music"),
                                          (_bad_vggmusic, "vggsound_music")])
def test_malformed_annotation_names_file_and_line(trees, tmp_path, make_bad, key):
    root = copy_tree(trees, key, tmp_path)
    name, split, path, line = make_bad(root)
    with pytest.raises(AnnotationError) as err:
        build(name, split, root, eval_videos=2) if key == "music" else build(name, split, root)
    assert err.value.path == str(path) and err.value.line == line
    assert f"{path}, line {line}" in str(err.value)


def test_binary_garbage_annotation_names_file_and_line(trees, tmp_path):
    root = copy_tree(trees, "vggsound", tmp_path)
    csv_path = root / "annotations" / "vggsound.csv"
    good = csv_path.read_bytes()
    csv_path.write_bytes(good.splitlines(keepends=True)[0] + bytes(range(128, 256)) * 8)   # line 2 is garbage
    with pytest.raises(AnnotationError, match=rf"{csv_path}, line 2: not UTF-8 text .*binary or damaged.*Fix"):
        build("vggsound", "test", root)                            # before: a bare UnicodeDecodeError


def test_malformed_xml_syntax(trees, tmp_path):
    root = copy_tree(trees, "flickr", tmp_path)
    p = root / "Annotations" / "1002.xml"
    p.write_text(p.read_text().replace("</object>", "</objet>", 1))
    with pytest.raises(AnnotationError, match=r"1002\.xml, line \d+: XML error"):
        build("flickr", "test", root)


# ----------------------------------------------------------------------------------------------
# roots and entry point
# ----------------------------------------------------------------------------------------------
def test_root_resolution(trees, monkeypatch, tmp_path):
    monkeypatch.setenv("AVLIB_VGGSOUND_ROOT", str(trees["vggsound"]["root"]))
    assert resolve_root("vggsound") == trees["vggsound"]["root"]
    assert resolve_root("vggsound_music") == trees["vggsound"]["root"]    # falls back to the VGGSound tree
    assert len(build("vggsound", "test", None)) == 2
    monkeypatch.setenv("AVLIB_VGGSOUND_ROOT", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="AVLIB_VGGSOUND_ROOT"):
        resolve_root("vggsound")
    monkeypatch.delenv("AVLIB_VGGSOUND_ROOT")
    monkeypatch.setenv("AVLIB_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="AVLIB_VGGSOUND_ROOT"):
        resolve_root("vggsound", cfg=CFG)
    with pytest.raises(ValueError, match="unknown benchmark"):
        build_benchmark("kinetics", "train", CFG, root=tmp_path)
    with pytest.raises(ValueError, match="only the test split"):
        build_benchmark("flickr", "train", CFG, root=trees["flickr"]["root"])

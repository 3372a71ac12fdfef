"""Tiny fixture trees in the official benchmark layouts (DEEPAVFUSION.md §2.4), written by the tests
themselves into ``tmp_path``: a few 2-3 s mp4s (mpeg4 video at a few fps + AAC sine audio, 16 kHz mono
or 44.1 kHz stereo), wavs, jpgs (one grayscale), PNG label maps and XML / CSV / JSON annotations.

Every writer returns the paths it made so a test can corrupt one of them (truncate, empty, garbage).
Video frames encode the time in their colour (``frame_colour``) so tests can check which frame came back.
"""
from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "write_video", "write_wav", "write_jpg", "write_png_mask", "frame_colour", "corrupt",
    "vggsound_tree", "audioset_tree", "flickr_tree", "vggss_tree", "avsbench_tree", "vggsound_music_tree",
    "music_tree",
]


# ----------------------------------------------------------------------------------------------
# Media writers
# ----------------------------------------------------------------------------------------------
def frame_colour(i: int, n: int) -> int:
    """Grey level of frame ``i`` out of ``n``: increases with time, far apart for a few frames."""
    return int(20 + 215 * i / max(1, n - 1))


def _sine(n: int, sr: int, freq: float, channels: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(n) / sr
    chans = [amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    return np.stack(chans).astype(np.float32)                    # (C, n)


def write_video(path, *, duration: float = 2.5, fps: int = 4, size=(64, 48), sample_rate: int = 16000,
                channels: int = 1, freq: float = 440.0, audio: bool = True, video: bool = True) -> Path:
    """mp4 with an mpeg4 video (keyframe every 2 frames, frame k filled with ``frame_colour(k)``) and an
    AAC sine track. ``size`` is (W, H)."""
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    n_frames = int(round(duration * fps))
    with av.open(str(path), "w", format="mp4") as out:
        if video:
            vs = out.add_stream("mpeg4", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.gop_size = 2
            vs.codec_context.time_base = Fraction(1, fps)
        if audio:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "stereo" if channels == 2 else "mono"
        if video:
            for k in range(n_frames):
                img = np.full((h, w, 3), frame_colour(k, n_frames), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = k
                for pkt in vs.encode(frame):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
        if audio:
            n = int(round(duration * sample_rate))
            data = _sine(n, sample_rate, freq, channels)
            step = 1024
            for i in range(0, n, step):
                chunk = np.ascontiguousarray(data[:, i:i + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo" if channels == 2 else "mono")
                frame.sample_rate = sample_rate
                frame.pts = i
                for pkt in as_.encode(frame):
                    out.mux(pkt)
            for pkt in as_.encode():
                out.mux(pkt)
    return path


def write_wav(path, *, duration: float = 4.0, sample_rate: int = 16000, channels: int = 1,
              freq: float = 440.0) -> Path:
    import soundfile as sf
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _sine(int(round(duration * sample_rate)), sample_rate, freq, channels)
    sf.write(str(path), data.T, sample_rate)
    return path


def write_jpg(path, *, size=(64, 48), value=128, gray: bool = False) -> Path:
    """A jpg (W, H) with a left-to-right ramp; ``gray=True`` writes a single-channel (mode L) file."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    if gray:
        Image.fromarray(ramp, mode="L").save(path)
    else:
        Image.fromarray(np.stack([ramp, np.full_like(ramp, value), 255 - ramp], -1)).save(path)
    return path


def write_png_mask(path, labels: np.ndarray) -> Path:
    """Label PNG (mode L) holding class indices ``labels`` (H, W) uint8."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    return path


def corrupt(path, how: str) -> Path:
    """Damage a file in place: ``empty`` (0 bytes), ``truncate`` (keep the first third), ``garbage``
    (random bytes), ``delete``."""
    path = Path(path)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)
    return path


def _write_csv(path, rows, header=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        if header:
            wr.writerow(header)
        wr.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------
# Official layouts
# ----------------------------------------------------------------------------------------------
def _clip_name(ytid: str, start: int) -> str:
    return f"{ytid}_{start:06d}_{start + 10:06d}.mp4"


def vggsound_tree(root, *, missing: int = 1) -> dict:
    """``annotations/vggsound.csv`` (ytid, start, label, split) + ``clips/<label_>/<ytid>_<s>_<s+10>.mp4``.

    3 classes (one with a comma and parentheses in its name), 3 train + 2 test clips on disk, ``missing``
    more train rows whose clips are absent. One train clip is 44.1 kHz stereo.
    """
    root = Path(root)
    labels = ["dog barking", "playing violin, fiddle", "engine (idling)"]
    rows = [("aaaaaaaaaaa", 30, labels[0], "train"), ("bbbbbbbbbbb", 0, labels[1], "train"),
            ("ccccccccccc", 12, labels[2], "train"), ("ddddddddddd", 40, labels[0], "test"),
            ("eeeeeeeeeee", 5, labels[1], "test")]
    rows += [(f"missing{k:04d}", 0, labels[2], "train") for k in range(missing)]
    _write_csv(root / "annotations" / "vggsound.csv", rows)
    clips = {}
    for i, (yid, s, lbl, split) in enumerate(rows):
        if yid.startswith("missing"):
            continue
        folder = lbl.replace(" ", "_").replace("(", "_").replace(")", "_").replace(",", "_")
        stereo = i == 1
        clips[yid] = write_video(root / "clips" / folder / _clip_name(yid, s), duration=2.5 + 0.25 * i,
                                 sample_rate=44100 if stereo else 16000, channels=2 if stereo else 1,
                                 freq=300 + 100 * i)
    return {"root": root, "clips": clips, "labels": labels, "rows": rows}


def audioset_tree(root) -> dict:
    """``annotations/{class_labels_indices, balanced_train_segments, unbalanced_train_segments,
    eval_segments}.csv`` (3 '#' header lines, quoted label lists) + ``clips/<ytid[:2]>/<ytid>_<s>_<e>.mp4``."""
    root = Path(root)
    ann = root / "annotations"
    classes = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/0jbk", "Animal"),
               ("/m/068hy", "Domestic animals, pets"), ("/m/04rlf", "Music")]
    _write_csv(ann / "class_labels_indices.csv", [(i, m, d) for i, (m, d) in enumerate(classes)],
               header=["index", "mid", "display_name"])

    def segments(name, rows):
        with open(ann / f"{name}_segments.csv", "w") as f:
            f.write("# Segments csv created Sun Mar  5 10:54:31 2017\n")
            f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=5, num_positive_labels=9\n")
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            for yid, s, e, mids in rows:
                f.write(f'{yid}, {s:.3f}, {e:.3f}, "{",".join(mids)}"\n')

    unbal = [("Xa1aaaaaaaa", 30.0, 40.0, ["/m/09x0r", "/m/05zppz"]), ("Yb2bbbbbbbb", 0.0, 10.0, ["/m/04rlf"]),
             ("Zc3cccccccc", 10.0, 20.0, ["/m/0jbk", "/m/068hy"]), ("Qmissingxxx", 0.0, 10.0, ["/m/04rlf"])]
    bal = [("Bd4dddddddd", 20.0, 30.0, ["/m/0jbk"]), ("Ce5eeeeeeee", 0.0, 10.0, ["/m/09x0r", "/m/04rlf"])]
    evl = [("Ef6ffffffff", 0.0, 10.0, ["/m/068hy", "/m/0jbk", "/m/04rlf"]), ("Fg7gggggggg", 5.0, 15.0, ["/m/09x0r"])]
    segments("unbalanced_train", unbal)
    segments("balanced_train", bal)
    segments("eval", evl)
    clips = {}
    for k, (yid, s, e, _) in enumerate(unbal + bal + evl):
        if yid.startswith("Qmissing"):
            continue
        clips[yid] = write_video(root / "clips" / yid[:2] / f"{yid}_{int(s):06d}_{int(e):06d}.mp4",
                                 duration=2.5, freq=250 + 50 * k)
    return {"root": root, "clips": clips, "classes": classes, "unbalanced": unbal, "balanced": bal, "eval": evl}


def _flickr_xml(path, boxes) -> Path:
    """SoundNet-Flickr annotation: every annotator's ``<bbox>`` (first child a label, then xmin, ymin,
    xmax, ymax in 256-px coordinates) under an ``<object>`` element."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["<annotation>", "  <filename>x.jpg</filename>"]
    for x0, y0, x1, y1 in boxes:
        lines += ["  <object>", "    <bbox>", "      <label>1</label>", f"      <xmin>{x0}</xmin>",
                  f"      <ymin>{y0}</ymin>", f"      <xmax>{x1}</xmax>", f"      <ymax>{y1}</ymax>",
                  "    </bbox>", "  </object>"]
    lines.append("</annotation>")
    path.write_text("\n".join(lines) + "\n")
    return path


FLICKR_BOXES = {
    # two annotators overlap on [64, 128) x [64, 128) (256 px): consensus 1.0 there, 0.5 elsewhere in a box
    "1000": [(0, 0, 128, 128), (64, 64, 192, 192)],
    "1001": [(32, 32, 96, 224)],
    "1002": [(10, 20, 250, 200), (10, 20, 250, 200), (100, 100, 120, 120)],
}


def flickr_tree(root, *, metadata: bool = True) -> dict:
    """``frames/<id>.jpg`` (one grayscale), ``audio/<id>.wav`` (one 44.1 kHz stereo), ``Annotations/<id>.xml``
    and ``metadata/flickr_test.csv`` (``id,<int>`` rows)."""
    root = Path(root)
    ids = list(FLICKR_BOXES)
    for k, vid in enumerate(ids):
        write_jpg(root / "frames" / f"{vid}.jpg", size=(80, 60), gray=(k == 1))
        stereo = k == 2
        write_wav(root / "audio" / f"{vid}.wav", duration=5.0, sample_rate=44100 if stereo else 16000,
                  channels=2 if stereo else 1, freq=300 + 100 * k)
        _flickr_xml(root / "Annotations" / f"{vid}.xml", FLICKR_BOXES[vid])
    if metadata:
        _write_csv(root / "metadata" / "flickr_test.csv", [(vid, 0) for vid in ids])
    return {"root": root, "ids": ids}


VGGSS_ENTRIES = [
    {"file": "vid_a_000030", "class": "dog barking", "bbox": [[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]]},
    {"file": "vid_b_000010", "class": "playing piano", "bbox": [[0.1, 0.2, 1.2, 0.9]]},   # x1 > 1: clipped
]


def vggss_tree(root) -> dict:
    """``frames/<file>.jpg``, ``audio/<file>.wav``, ``metadata/vggss.json`` (one entry per line so a bad entry
    has a line number) and ``metadata/vggss_test.csv``."""
    root = Path(root)
    for k, e in enumerate(VGGSS_ENTRIES):
        write_jpg(root / "frames" / f"{e['file']}.jpg", size=(64, 64))
        write_wav(root / "audio" / f"{e['file']}.wav", duration=10.0, freq=500 + 100 * k)
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "vggss.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in VGGSS_ENTRIES) + "\n]\n")
    _write_csv(meta / "vggss_test.csv", [(e["file"],) for e in VGGSS_ENTRIES])
    return {"root": root, "entries": VGGSS_ENTRIES}


AVS_CLASSES = ["background", "dog", "guitar", "man", "piano"]     # label2idx.json is 1-based (official)


def avsbench_tree(root, *, size=(48, 48)) -> dict:
    """AVSBench semantic release: ``metadata.csv`` (vid, uid, s_min, s_sec, a_obj, split, label),
    ``label2idx.json`` (background = 1, like the official file) and ``<label>/<uid>/{audio.wav,
    frames/<k>.jpg, labels_semantic/<k>.png}``. PNG values are 0-based class ids (0 = background).

    Each mask puts a sounding object in the LEFT half (class of ``a_obj``) and, for the v1m/v2 samples,
    a silent object (a class not in ``a_obj``) in the bottom-right corner; the frame is bright exactly
    where the sounding object is, so a joint transform can be checked for alignment.
    """
    root = Path(root)
    label2idx = {c: i + 1 for i, c in enumerate(AVS_CLASSES)}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "label2idx.json").write_text(json.dumps(label2idx))
    rows = [  # vid, uid, s_min, s_sec, a_obj, split, label
        ("v1", "s4_train_0", 0, 0, "dog", "train", "v1s"),
        ("v2", "s4_val_0", 0, 10, "guitar", "val", "v1s"),
        ("v3", "ms3_train_0", 1, 0, "man_piano", "train", "v1m"),
        ("v4", "ms3_val_0", 1, 5, "piano_man", "val", "v1m"),
        ("v5", "avss_val_0", 2, 0, "dog_off-the-screen", "val", "v2"),
        ("v6", "s4_val_missing", 0, 0, "dog", "val", "v1s"),       # folder absent
    ]
    _write_csv(root / "metadata.csv", rows, header=["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"])
    w, h = size
    samples = {}
    for k, (vid, uid, _, _, a_obj, split, label) in enumerate(rows):
        if uid.endswith("missing"):
            continue
        d = root / label / uid
        n_frames = 1 if split == "train" and label == "v1s" else 3
        sounding = [c for c in a_obj.split("_") if c in label2idx]
        silent = [c for c in AVS_CLASSES[1:] if c not in sounding][0]
        write_wav(d / "audio.wav", duration=5.0, sample_rate=16000 if k % 2 else 44100, channels=1 + k % 2,
                  freq=300 + 60 * k)
        for f in range(n_frames):
            lab = np.zeros((h, w), np.uint8)
            lab[h // 4: 3 * h // 4, : w // 2] = label2idx[sounding[0]] - 1           # sounding, left half
            if label != "v1s":
                lab[3 * h // 4:, 3 * w // 4:] = label2idx[silent] - 1               # silent, corner
            write_png_mask(d / "labels_semantic" / f"{f}.png", lab)
            img = np.full((h, w, 3), 30, np.uint8)
            img[lab == label2idx[sounding[0]] - 1] = 230
            from PIL import Image
            (d / "frames").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / "frames" / f"{f}.jpg", quality=95)
        samples[uid] = {"dir": d, "frames": n_frames, "sounding": [label2idx[c] - 1 for c in sounding],
                        "silent": label2idx[silent] - 1}
    return {"root": root, "samples": samples, "label2idx": label2idx}


def vggsound_music_tree(root) -> dict:
    """VGGSound clip tree restricted to instruments + ``metadata/vggmusic_train.txt`` (``ytid_start,instrument``
    with the short names 'violin' / 'steel_guitar') and ``metadata/vggmusic_eval_ss.csv`` (pairs; class names
    like ``"violin,_fiddle"`` as in the official file)."""
    root = Path(root)
    train = [("tra00000001_000030", "violin"), ("tra00000001_000050", "violin"), ("trb00000002_000000", "cello"),
             ("trc00000003_000010", "steel_guitar"), ("trmissing04_000000", "cello")]
    evals = [("eva00000001_000030", "evb00000002_000000", "violin,_fiddle", "cello", "Easy"),
             ("evc00000003_000010", "eva00000001_000030", "cello", "violin,_fiddle", "Easy")]
    folder = {"violin": "violin__fiddle", "steel_guitar": "steel_guitar__slide_guitar", "cello": "cello",
              "violin,_fiddle": "violin__fiddle"}
    clips = {}
    for k, (yid, cls) in enumerate(train):
        if "missing" in yid:
            continue
        clips[yid] = write_video(root / "clips" / f"playing_{folder[cls]}" / _clip_name(yid[:11], int(yid[-6:])),
                                 duration=2.5, freq=200 + 80 * k)
    for k, (y1, y2, c1, c2, _) in enumerate(evals):
        for yid, cls in ((y1, c1), (y2, c2)):
            p = root / "clips" / f"playing_{folder[cls]}" / _clip_name(yid[:11], int(yid[-6:]))
            if not p.exists():
                clips[yid] = write_video(p, duration=3.0, freq=700 + 90 * len(clips))
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "vggmusic_train.txt").write_text("".join(f"{y},{c}\n" for y, c in train))
    _write_csv(meta / "vggmusic_eval_ss.csv", evals, header=["source_1", "source_2", "class_1", "class_2", "sep_type"])
    return {"root": root, "train": train, "eval": evals, "clips": clips}


def music_tree(root) -> dict:
    """MUSIC: ``anno/{music_solo.csv, music21_solo.csv, music21_duet.csv}`` (header + ``yid,class,x``) and
    ``clips_360p_segm/<class_>/<yid>.<seg>.mp4`` (2 segments per video)."""
    root = Path(root)
    solo = [("mus00000001", "acoustic guitar"), ("mus00000002", "flute"), ("mus00000003", "acoustic guitar"),
            ("mus00000004", "violin")]
    duet = [("duet0000001", "flute violin")]
    hdr = ["youtube_id", "instrument", "extra"]
    _write_csv(root / "anno" / "music_solo.csv", [(y, c, 0) for y, c in solo], header=hdr)
    _write_csv(root / "anno" / "music21_solo.csv", [(y, c, 0) for y, c in solo], header=hdr)
    _write_csv(root / "anno" / "music21_duet.csv", [(y, c, 0) for y, c in duet], header=hdr)
    clips = {}
    for k, (yid, cls) in enumerate(solo + duet):
        for seg in range(2):
            p = root / "clips_360p_segm" / cls.replace(" ", "_") / f"{yid}.{seg:03d}.mp4"
            clips[(yid, seg)] = write_video(p, duration=2.5, freq=220 + 40 * (2 * k + seg))
    return {"root": root, "solo": solo, "duet": duet, "clips": clips}



"""The real benchmarks in their OFFICIAL layouts (``docs/official_implementation.md`` §2.4), one entry point::

    ds = build_benchmark("vggsound", "train", cfg)              # root: argument, $AVLIB_VGGSOUND_ROOT, ...
    ds[0]  # {"image": (3, H, W), "audio": (1, F, T), "waveform": (S,), "label": (), "index": ()}

| name | layout read | item keys (besides ``image``, ``audio``, ``waveform``, ``index``) |
|---|---|---|
| ``vggsound`` | ``annotations/vggsound.csv`` + ``clips/<label_>/<ytid>_<s:06d>_<s+10:06d>.mp4`` | ``label`` (310 classes) |
| ``audioset`` / ``audioset_bal`` / ``audioset_bal_orig`` | ``annotations/{class_labels_indices,<split>_segments}.csv`` + ``clips/<ytid[:2]>/<ytid>_<s>_<e>.mp4`` | ``labels`` multi-hot (527) |
| ``flickr`` | ``frames/<id>.jpg``, ``audio/<id>.wav``, ``Annotations/<id>.xml``; ids from ``flickr_test.csv`` | ``loc_map`` (224, 224) soft, ``box`` |
| ``vggss`` | ``frames/<file>.jpg``, ``audio/<file>.wav``; boxes from ``vggss.json`` | ``loc_map`` (224, 224) binary, ``box``, ``label`` |
| ``avsbench_s4`` / ``avsbench_ms3`` / ``avsbench_avss`` | ``metadata.csv``, ``label2idx.json``, ``<v1s|v1m|v2>/<uid>/{audio.wav, frames/<k>.jpg, labels_semantic/<k>.png}`` | ``seg_mask`` (H, W): float {0,1} for S4/MS3, long class ids (71) for AVSS; ``labels``, ``label`` |
| ``vggsound_music`` | VGGSound ``clips/playing_<instrument>/...`` + ``vggmusic_train.txt`` / ``vggmusic_eval_ss.csv`` | mixture: ``images``, ``source_waveforms``, ``mix_waveform``, ``mix_audio``, ``source_audio``, ``source_labels`` |
| ``music`` / ``music_solo`` / ``music_solo21`` | ``anno/*.csv`` + ``clips_360p_segm/<class_>/<yid>.*.mp4`` (or ``clips/``) | mixture, as above |

Metadata files that the official code reads from its own ``metadata/`` folder (``flickr_test.csv``, ``vggss.json``,
``vggss_test.csv``, ``vggmusic_*``) are looked up in: the ``metadata_dir`` argument, ``$AVLIB_METADATA_DIR``,
``<root>/metadata``, ``<root>``, ``<repo>/metadata``.

**Clip and frame selection** [code §2.3], with ``clip = cfg.data.clip_seconds`` (3 s in the paper):

- video benchmarks, train: clip centre uniform in ``[start + clip/2, end - clip/2]`` over the span covered by both
  streams, frame at a uniform random time inside the clip; eval: clip centred on the video, frame = the frame on
  screen at the centre. **Deliberate fix:** the official loader draws a random (keyframe) frame even at
  evaluation; here the evaluation frame is deterministic.
- AVSBench (1 annotated frame per second): train, a random annotated frame ``k`` with audio centred at
  ``k + 0.5`` s jittered by ``U(-0.33 clip, +0.33 clip)`` and clamped into the file; eval, every annotated frame
  is one item with its own centred window (the official ``dense=True`` evaluation, flattened).
- Flickr / VGG-SS: the centred clip of the wav, the one jpg squash-resized (EZ-VSL test protocol: the boxes are
  in the coordinates of the squashed 224 x 224 image, so no crop may be applied).

Audio is mono at ``cfg.data.sample_rate``, mirror-padded to ``cfg.data.clip_samples`` (``waveform``) and turned into
the log-mel by ``avlib.audio.AudioFrontEnd`` (random gain at train time). Images go through ``avlib.image``'s
torchvision-v2 ``train_transform`` / ``eval_transform``, jointly with the AVSBench label map.

**Bad inputs.** Listed files that are absent (or 0 bytes) are found when the index is built, counted and
reported (one ``SkippedItemWarning`` with examples; ``dataset.skipped``), never silently dropped. Files that
exist but do not decode (truncated, garbage) are dropped up front in evaluation sets (``build_benchmark`` calls
``dataset.validate()``, which opens every file), so an evaluation scores exactly its readable items and the warning
says how many were dropped; an evaluation item that still fails later raises ``MediaError`` (never replaced). In
training sets they are found lazily: ``__getitem__`` catches ``MediaError`` only, records the file, and
deterministically tries the next index (``i + 1``, ``i + 2``, ...), remembering bad items per process; the
``index`` key of the returned dict says which item was actually read.
A dataset with no usable item raises ``EmptyDatasetError`` naming the root and what was searched; malformed
annotation rows raise ``AnnotationError`` naming the file and line.

**Official bugs fixed on purpose** (docs/official_implementation.md §7; each is also marked ``# FIX`` where it
happens):
AudioSet loaders' ``class_resample`` TypeError (``audioset_bal`` implements the intended class-uniform resampling);
``DenseVideoDataset.__repr__`` on missing attributes (every dataset here has a safe ``__repr__``);
VGGSound-Music ``class_desc=None`` / dicts passed as file lists, and its eval CSV class names (``"violin,_fiddle"``)
that do not match the sanitized folder names; MUSIC's unexpected ``oversample`` argument, its ``len // 130`` slice
step that is 0 on small trees, and the ``clips`` vs ``clips_360p_segm`` disagreement; the AVSBench label filter
(see ``AVSBenchDataset``); the random evaluation frame; VGGSound class indices taken from the folders present on
disk (here from the annotation file, so a missing class folder does not shift every later index).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
import xml.parsers.expat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avlib.data.media import MediaError, SkipLog, SkippedItemWarning, open_media, read_image, read_mask
from avlib.paths import CACHE, ROOT, DataNotFoundError

__all__ = [
    "build_benchmark", "BENCHMARKS", "AnnotationError", "EmptyDatasetError", "resolve_root", "find_metadata",
    "BenchmarkDataset", "VideoClipDataset", "LocalizationDataset", "AVSBenchDataset", "MixtureBenchmarkDataset",
    "flickr_gt_map", "vggss_gt_map", "parse_flickr_xml", "vggsound_folder", "clip_window",
]

LOC_SIZE = 224          # Flickr / VGG-SS ground-truth maps are 224 x 224 (docs/metrics.md#ground-truth-maps)
AVS_NUM_CLASSES = 71    # AVSBench-semantic: 70 classes + background


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
class AnnotationError(ValueError):
    """A malformed annotation row / element; the message names the file and the line."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return (AnnotationError, (self.path, self.line, self.reason))


class EmptyDatasetError(DataNotFoundError):
    """A benchmark with no usable item; the message names the root and what was searched."""


# ----------------------------------------------------------------------------------------------
# Roots and metadata
# ----------------------------------------------------------------------------------------------
# canonical name -> (environment variables tried in order, sub-folder of a shared data root)
_ROOTS = {
    "vggsound": (("AVLIB_VGGSOUND_ROOT",), "vggsound"),
    "audioset": (("AVLIB_AUDIOSET_ROOT",), "audioset"),
    "flickr": (("AVLIB_FLICKR_ROOT",), "flickr"),
    "vggss": (("AVLIB_VGGSS_ROOT",), "vggss"),
    "avsbench": (("AVLIB_AVSBENCH_ROOT",), "avsbench"),
    # VGGSound-Music reads the VGGSound clip tree
    "vggsound_music": (("AVLIB_VGGSOUND_MUSIC_ROOT", "AVLIB_VGGSOUND_ROOT"), "vggsound"),
    "music": (("AVLIB_MUSIC_ROOT",), "music"),
}


def resolve_root(family: str, root=None, cfg=None) -> Path:
    """Root folder of a benchmark: ``root`` argument, then ``$AVLIB_<NAME>_ROOT``, then ``<cfg.data.root>/<name>``,
    ``$AVLIB_DATA_ROOT/<name>`` and ``<cache>/<name>``. An explicit choice that does not exist is an error."""
    envs, sub = _ROOTS[family]
    if root is not None:
        p = Path(root).expanduser()
        if not p.is_dir():
            raise DataNotFoundError(f"{family}: root {p} (argument) is not a folder")
        return p
    for env in envs:
        if os.environ.get(env):
            p = Path(os.environ[env]).expanduser()
            if not p.is_dir():
                raise DataNotFoundError(f"{family}: root {p} (from ${env}) is not a folder")
            return p
    tried = [f"${e} (unset)" for e in envs]
    data_root = getattr(getattr(cfg, "data", None), "root", None)
    for base, why in ((data_root, "cfg.data.root"), (os.environ.get("AVLIB_DATA_ROOT"), "$AVLIB_DATA_ROOT"),
                      (CACHE, "cache")):
        if base:
            p = Path(base).expanduser() / sub
            tried.append(f"{p} ({why})")
            if p.is_dir():
                return p
    raise DataNotFoundError(f"{family}: benchmark data not found; looked in: {', '.join(tried)}.\n"
                            f"Fix: pass root=..., or set ${envs[0]} to the folder in the official layout "
                            f"(see avlib/data/benchmarks.py and DATASETS.md of the official repo).")


def find_metadata(filename: str, root: Path, metadata_dir=None, *, required: bool = True) -> Path | None:
    """Locate an official metadata file (see the module docstring for the search order)."""
    cands = []
    if metadata_dir is not None:
        cands.append(Path(metadata_dir))
    if os.environ.get("AVLIB_METADATA_DIR"):
        cands.append(Path(os.environ["AVLIB_METADATA_DIR"]))
    cands += [Path(root) / "metadata", Path(root), ROOT / "metadata"]
    for c in cands:
        if (c / filename).is_file():
            return c / filename
    if required:
        raise DataNotFoundError(f"metadata file {filename!r} not found; looked in: "
                                + ", ".join(str(c) for c in cands)
                                + ". It ships in the official repo's metadata/ folder: pass metadata_dir=... "
                                  "or set $AVLIB_METADATA_DIR.")
    return None


# ----------------------------------------------------------------------------------------------
# Annotation parsing (every malformed row -> AnnotationError(file, line))
# ----------------------------------------------------------------------------------------------
def _read_text(path) -> str:
    """An annotation file's text (UTF-8). A file that is not text (binary garbage, a truncated multi-byte
    character, another encoding) raises ``AnnotationError`` naming the line of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"annotation file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(path, data.count(b"\n", 0, err.start) + 1,
                              f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): the file is "
                              "binary or damaged. Fix: download the annotation file again (the official "
                              "release / metadata folder)") from None


def _csv_rows(path, *, skip_comments: bool = False, skipinitialspace: bool = False):
    """``[(line_number, row), ...]`` of non-empty rows; ``line_number`` is 1-based (first line of the row)."""
    path = Path(path)
    out = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), skipinitialspace=skipinitialspace)
    prev = 0
    try:
        for row in reader:
            line, prev = prev + 1, reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if skip_comments and row[0].lstrip().startswith("#"):
                continue
            out.append((line, row))
    except csv.Error as err:
        raise AnnotationError(path, reader.line_num, f"CSV error: {err}") from None
    return out


def _as_int(path, line, value, what) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise AnnotationError(path, line, f"{what} must be an integer, got {value!r}") from None


def _as_float(path, line, value, what) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise AnnotationError(path, line, f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise AnnotationError(path, line, f"{what} must be finite, got {value!r}")
    return x


def vggsound_folder(label: str) -> str:
    """The official VGGSound folder name of a class: ' ', '(', ')', ',' -> '_'."""
    return label.replace(" ", "_").replace("(", "_").replace(")", "_").replace(",", "_")


def parse_flickr_xml(path) -> list[tuple[int, int, int, int]]:
    """Every annotator's ``<bbox>`` of a SoundNet-Flickr XML, as ``(xmin, ymin, xmax, ymax)`` in the 256-px frame.

    A ``<bbox>`` holds a leading label element then the four coordinates (named ``xmin/ymin/xmax/ymax``; the
    official parser takes children ``[1:]`` by position, which is the fallback when the names differ).
    Parsed with expat so that an error can name the line.
    """
    path = Path(path)
    boxes, stack, cur = [], [], None

    parser = xml.parsers.expat.ParserCreate()

    def start(tag, attrs):
        nonlocal cur
        stack.append(tag)
        if tag == "bbox":
            cur = {"line": parser.CurrentLineNumber, "children": []}
        elif cur is not None and len(stack) >= 2 and stack[-2] == "bbox":
            cur["children"].append([tag, "", parser.CurrentLineNumber])

    def end(tag):
        nonlocal cur
        stack.pop()
        if tag == "bbox" and cur is not None:
            boxes.append(cur)
            cur = None

    def text(data):
        if cur is not None and cur["children"] and len(stack) >= 2 and stack[-2] == "bbox":
            cur["children"][-1][1] += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        parser.Parse(path.read_bytes(), True)
    except xml.parsers.expat.ExpatError as err:
        raise AnnotationError(path, err.lineno, f"XML error: {xml.parsers.expat.ErrorString(err.code)}") from None
    out = []
    for b in boxes:
        named = {t: (v, ln) for t, v, ln in b["children"]}
        keys = ("xmin", "ymin", "xmax", "ymax")
        if all(k in named for k in keys):
            vals = [named[k] for k in keys]
        else:
            vals = [(v, ln) for _, v, ln in b["children"][1:]]
        if len(vals) != 4:
            raise AnnotationError(path, b["line"], f"<bbox> needs 4 coordinates (xmin, ymin, xmax, ymax), "
                                                   f"found {len(vals)}")
        coords = [_as_int(path, ln, v, "bbox coordinate") for v, ln in vals]
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise AnnotationError(path, b["line"], f"<bbox> has xmax < xmin or ymax < ymin: {coords}")
        out.append(tuple(coords))
    return out


def flickr_gt_map(boxes_256: Sequence[Sequence[int]], size: int = LOC_SIZE) -> np.ndarray:
    """Soft consensus map ``(224, 224)``: boxes scaled 256 -> 224 with integer arithmetic
    (``v * 224 // 256``), +1 per box, then ``/ 2`` and clipped to 1 (1.0 where >= 2 annotators agree,
    0.5 where one does) [code §2.4; docs/metrics.md#ground-truth-maps]."""
    gt = np.zeros((size, size), np.float32)
    for box in boxes_256:
        x0, y0, x1, y1 = (int(v) * size // 256 for v in box)
        gt[y0:y1, x0:x1] += 1
    return np.clip(gt / 2, 0, 1)


def vggss_gt_map(boxes_norm: Sequence[Sequence[float]], size: int = LOC_SIZE) -> np.ndarray:
    """Binary union ``(224, 224)`` of normalized boxes: clip to [0, 1], ``* 224``, cast to int
    [docs/metrics.md#ground-truth-maps]."""
    gt = np.zeros((size, size), np.float32)
    for box in boxes_norm:
        x0, y0, x1, y1 = (int(v) for v in np.clip(np.asarray(box, np.float64), 0, 1) * size)
        gt[y0:y1, x0:x1] = 1
    return gt


def _json_array_with_lines(path) -> list[tuple[int, Any]]:
    """Top-level JSON array -> ``[(line_of_element, element), ...]`` (so that a bad entry can name its line)."""
    path = Path(path)
    text = _read_text(path)
    dec = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:pos + 1] == "[":
        raise AnnotationError(path, text.count("\n", 0, pos) + 1, "expected a JSON array of entries")
    pos += 1
    out = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            return out
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise AnnotationError(path, err.lineno, f"JSON error: {err.msg}") from None
        out.append((text.count("\n", 0, pos) + 1, obj))
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return out
        else:
            raise AnnotationError(path, text.count("\n", 0, pos) + 1, "expected ',' or ']' between JSON entries")


# ----------------------------------------------------------------------------------------------
# Selection helpers
# ----------------------------------------------------------------------------------------------
def _uniform(lo: float, hi: float) -> float:
    """Uniform draw from torch's global RNG (seeded per DataLoader worker by PyTorch)."""
    return lo + (hi - lo) * float(torch.rand(()))


def clip_window(start: float, end: float, clip_seconds: float, train: bool) -> tuple[float, float]:
    """``(t0, t1)`` of the clip: train, centre uniform in ``[start + clip/2, end - clip/2]``; eval, the midpoint.
    A file shorter than one clip gets the centred (over-long) window; the reader returns what exists and the
    waveform is mirror-padded."""
    half = clip_seconds / 2
    if train and end - start > clip_seconds:
        mid = _uniform(start + half, end - half)
    else:
        mid = (start + end) / 2
    return mid - half, mid + half


def _frame_time(t0: float, t1: float, lo: float, hi: float, train: bool) -> float:
    """Train: uniform in the clip (∩ the video); eval: the clip centre (deterministic: FIX of the official
    random evaluation frame)."""
    a, b = max(t0, lo), min(t1, hi)
    if b <= a:
        return (lo + hi) / 2
    return _uniform(a, b) if train else (a + b) / 2


def _pad(wave: torch.Tensor, n: int) -> torch.Tensor:
    from avlib.audio import mirror_pad
    return mirror_pad(wave, n)


def _plain(x):
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------------------------
# Base dataset
# ----------------------------------------------------------------------------------------------
@dataclass
class _Listing:
    """What index-time discovery found: usable items plus what was searched / missing (for messages)."""

    searched: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)
    listed: int = 0


class BenchmarkDataset(Dataset):
    """Shared machinery: config-derived front ends, skip accounting, deterministic retry, safe ``__repr__``.

    Subclasses fill ``self.items`` and implement ``_load(i) -> dict`` and ``_item_files(i) -> [paths]``.
    """

    def __init__(self, name: str, split: str, cfg, root: Path, train: bool, *, items: list,
                 listing: _Listing, oversample: int = 1, image_transform: Callable | None = None,
                 audio_frontend: Callable | None = None, max_retries: int = 64):
        self.name, self.split, self.cfg, self.root, self.train = name, split, cfg, Path(root), bool(train)
        self.items = list(items)
        self.oversample = max(1, int(oversample))
        self.max_retries = int(max_retries)
        self.skipped = SkipLog(f"{name}/{split}")
        self.missing = [p for p, _ in listing.missing]
        self._bad: set[int] = set()         # per process: items known to fail
        self.sample_rate = int(cfg.data.sample_rate)
        self.clip_seconds = float(cfg.data.clip_seconds)
        self.clip_samples = int(cfg.data.clip_samples)
        self.image_size = tuple(cfg.model.image_size)
        self._image_transform = image_transform
        self._audio_frontend = audio_frontend
        for path, reason in listing.missing:
            self.skipped.record(path, reason, "missing" if "not found" in reason else "empty", warn=False)
        if listing.missing:
            ex = ", ".join(p for p, _ in listing.missing[:3])
            warnings.warn(f"[{name}/{split}] {len(listing.missing)} of {listing.listed} listed items are missing or "
                          f"empty under {root} (e.g. {ex}); they are left out and counted in dataset.skipped",
                          SkippedItemWarning, stacklevel=3)
        if not self.items:
            raise EmptyDatasetError(
                f"{name} ({split}): no usable item under {root}. Searched: {'; '.join(listing.searched)}. "
                + (f"{len(listing.missing)} listed items missing/empty, e.g. "
                   f"{[p for p, _ in listing.missing[:3]]}." if listing.missing else "Nothing was listed."))

    # -- front ends (built lazily: the dataset stays cheap to pickle into workers)
    @property
    def audio_frontend(self):
        if self._audio_frontend is None:
            from avlib.audio import AudioFrontEnd
            self._audio_frontend = AudioFrontEnd(self.cfg.data, train=self.train)
        return self._audio_frontend

    def _default_image_transform(self):
        from avlib import image as I
        if self.train:
            return I.train_transform(self.image_size, self.cfg.data.crop_min)
        return I.eval_transform(self.image_size, self.cfg.data.eval_resize_ratio)

    @property
    def image_transform(self):
        if self._image_transform is None:
            self._image_transform = self._default_image_transform()
        return self._image_transform

    def _image(self, img, mask=None):
        """PIL -> normalized float ``(3, H, W)`` (and the jointly transformed ``tv_tensors.Mask``)."""
        if mask is None:
            out = self.image_transform(img)
            return _plain(_finish_image(out))
        out_img, out_mask = self.image_transform(img, mask)
        return _plain(_finish_image(out_img)), _plain(out_mask)

    def _audio(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S,)`` at any length -> (mirror-padded waveform ``(S,)``, log-mel ``(1, F, T)``)."""
        wave = _pad(wave, self.clip_samples)
        return wave, self.audio_frontend(wave)

    # -- indexing
    @property
    def num_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items) * self.oversample

    def _resolve(self, idx: int) -> int:
        return idx % len(self.items)

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {self.name} ({len(self)} items)")
        n = len(self.items)
        base = self._resolve(idx % len(self))
        tries = min(n, self.max_retries + 1)
        for k in range(tries):
            i = (base + k) % n        # deterministic substitute: the next item
            if i in self._bad:
                continue
            try:
                out = self._load(i)
            except MediaError as err:
                self._bad.add(i)
                self.skipped.record(err.path, err.reason, err.kind, warn=self.train)
                if not self.train:   # a score over substituted items would not be the score of this set
                    raise MediaError(err.path, f"{err.reason}; item {i} of the evaluation set {self.name}/"
                                     f"{self.split} cannot be read, and evaluation items are never replaced by a "
                                     "neighbour. Fix: restore or remove the file, or build the set with "
                                     "validate='decode' to drop such items up front", err.kind) from None
                continue
            out["index"] = torch.tensor(i)
            return out
        if len(self._bad) >= n:
            raise EmptyDatasetError(f"{self.name} ({self.split}): none of the {n} items under {self.root} could "
                                    f"be read; {self.skipped!r}")
        raise RuntimeError(f"{self.name} ({self.split}): {tries} consecutive items from index {base} could not be "
                           f"read under {self.root} (max_retries={self.max_retries}); {self.skipped!r}")

    def _load(self, i: int) -> dict:
        raise NotImplementedError

    def _item_files(self, i: int) -> list[Path]:
        raise NotImplementedError

    def validate(self, decode: bool = False) -> dict:
        """Open every item's files now (``decode=True``: also decode a little of each) and drop the unreadable
        ones, recording each in ``self.skipped`` and warning with the count. Returns ``skip_summary()``.
        ``build_benchmark`` does this for every evaluation set, so that it scores exactly its readable items."""
        keep = []
        for i in range(len(self.items)):
            try:
                for p in self._item_files(i):
                    if Path(p).suffix.lower() in (".jpg", ".jpeg", ".png"):
                        (read_mask if "labels" in Path(p).parts[-2] else read_image)(p)
                        continue
                    with open_media(p) as m:
                        if decode:
                            if m.info.has_audio:
                                m.read_audio(None, m.info.start, min(0.5, max(m.info.duration, 0.01)))
                            if m.info.has_video:
                                m.read_frame((m.info.start + m.info.end) / 2)
                keep.append(self.items[i])
            except MediaError as err:
                self.skipped.record(err.path, err.reason, err.kind, warn=False)
        dropped = len(self.items) - len(keep)
        if dropped:
            warnings.warn(f"[{self.name}/{self.split}] validate(): {dropped} of {len(self.items)} items unreadable "
                          f"and dropped; see dataset.skipped", SkippedItemWarning, stacklevel=2)
        if not keep:
            raise EmptyDatasetError(f"{self.name} ({self.split}): none of the {len(self.items)} items under "
                                    f"{self.root} is readable; {self.skipped!r}")
        self.items, self._bad = keep, set()
        return self.skip_summary()

    def skip_summary(self, examples: int = 5) -> dict:
        """``{name, root, items, missing, skipped_files, events, by_kind, examples}``."""
        s = self.skipped.summary(examples)
        return {"name": self.name, "split": self.split, "root": str(self.root), "items": len(self.items),
                "missing": len(self.missing), **{k: v for k, v in s.items() if k != "name"}}

    def __repr__(self) -> str:
        # FIX: the official DenseVideoDataset.__repr__ crashes on attributes it never set; this one only
        # reads what __init__ always sets.
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, train={self.train}, root={str(self.root)!r}, "
                f"items={len(self.items)}, len={len(self)}, skipped={len(self.skipped)})")


def _finish_image(x) -> torch.Tensor:
    """Accept whatever a transform returned: a float tensor is taken as already normalized; a PIL image or a
    uint8 tensor is scaled to [0, 1] and ImageNet-normalized."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    from avlib.image import to_normalized_tensor
    return to_normalized_tensor()(x)


def _scan_tree(folder: Path, depth: int = 2) -> dict[str, int]:
    """``{"<sub>/<name>": size}`` for every file ``depth`` levels below ``folder`` (one pass, like the official
    glob, but also giving sizes so that 0-byte files are caught at index time)."""
    out: dict[str, int] = {}
    if not folder.is_dir():
        return out

    def walk(d: Path, prefix: str, level: int):
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            if level == depth:
                if e.is_file():
                    out[prefix + e.name] = e.stat().st_size
            elif e.is_dir():
                walk(Path(e.path), prefix + e.name + "/", level + 1)

    walk(folder, "", 1)
    return out


def _check_listed(rel: str, tree: dict[str, int], base: Path, listing: _Listing) -> bool:
    size = tree.get(rel)
    if size is None:
        listing.missing.append((str(base / rel), "file not found"))
        return False
    if size == 0:
        listing.missing.append((str(base / rel), "empty (0-byte) file"))
        return False
    return True


# ----------------------------------------------------------------------------------------------
# VGGSound and AudioSet: one clip -> one frame + 3 s of audio
# ----------------------------------------------------------------------------------------------
class VideoClipDataset(BenchmarkDataset):
    """Classification clips (official ``VideoDataset``). Items are ``(relative path, target)`` with target an
    int (single label -> ``label``) or a list of ints (multi-label -> ``labels`` multi-hot over
    ``len(self.classes)``)."""

    def __init__(self, *args, clip_dir: Path, classes: list[str], multi_label: bool,
                 class_balanced: bool = False, **kw):
        super().__init__(*args, **kw)
        self.clip_dir, self.classes, self.multi_label = Path(clip_dir), list(classes), multi_label
        self.class_balanced = bool(class_balanced)
        if self.class_balanced:
            by_class = defaultdict(list)
            for i, (_, target) in enumerate(self.items):
                for c in (target if isinstance(target, (list, tuple)) else [target]):
                    by_class[c].append(i)
            self._by_class = [by_class[c] for c in sorted(by_class)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        counts = torch.zeros(self.num_classes)
        for _, t in self.items:
            for c in (t if isinstance(t, (list, tuple)) else [t]):
                counts[c] += 1
        return counts

    def _resolve(self, idx: int) -> int:
        # FIX (official AudioSet 'audioset-bal'): the intended class-uniform resampling, which the official
        # loaders never ran (TypeError on the class_resample argument): a class uniformly, then one of its clips.
        if self.class_balanced and self.train:
            group = self._by_class[int(torch.randint(len(self._by_class), ()))]
            return group[int(torch.randint(len(group), ()))]
        return idx % len(self.items)

    def _item_files(self, i):
        return [self.clip_dir / self.items[i][0]]

    def _load(self, i: int) -> dict:
        rel, target = self.items[i]
        with open_media(self.clip_dir / rel) as m:
            info = m.info
            if not (info.has_video and info.has_audio):
                raise MediaError(m.path, "needs both a video and an audio stream", "no_stream")
            t0, t1 = clip_window(info.start, info.end, self.clip_seconds, self.train)
            frame = m.read_frame(_frame_time(t0, t1, info.video_start or 0.0, info.video_end or t1, self.train))
            wave = m.read_audio(self.sample_rate, t0, self.clip_seconds)
        waveform, audio = self._audio(wave)
        out = {"image": self._image(frame), "audio": audio, "waveform": waveform}
        if self.multi_label:
            labels = torch.zeros(self.num_classes)
            labels[list(target)] = 1.0
            out["labels"] = labels
        else:
            out["label"] = torch.tensor(int(target))
        return out


def _vggsound(split, cfg, root, train, **kw) -> VideoClipDataset:
    part = "train" if split == "train" else "test"
    ann = root / "annotations" / "vggsound.csv"
    rows = []
    for line, row in _csv_rows(ann, skip_comments=True):
        if line == 1 and len(row) == 4 and not row[1].strip().isdigit():
            continue                                   # tolerate a header row ("YouTube ID, start seconds, ...")
        if len(row) != 4:
            raise AnnotationError(ann, line, f"expected 4 columns (ytid, start_s, label, split), got {len(row)}")
        ytid, start, label, sp = (c.strip() for c in row)
        start = _as_int(ann, line, start, "start_s")
        if sp not in ("train", "test"):
            raise AnnotationError(ann, line, f"split must be 'train' or 'test', got {sp!r}")
        if not ytid or not label:
            raise AnnotationError(ann, line, "empty ytid or label")
        rows.append((ytid, start, vggsound_folder(label), sp))
    # FIX: class index from the annotation file (sorted sanitized labels), not from sorted(os.listdir(clips)),
    # which silently shifts every later class when a folder is absent. Identical when all 310 folders exist.
    classes = sorted({r[2] for r in rows})
    cls_idx = {c: k for k, c in enumerate(classes)}
    clip_dir = root / "clips"
    tree = _scan_tree(clip_dir, depth=2)
    listing = _Listing(searched=[f"{ann} (split {part!r})", f"{clip_dir}/<label>/<ytid>_<s>_<s+10>.mp4"])
    items = []
    for ytid, start, folder, sp in rows:
        if sp != part:
            continue
        listing.listed += 1
        rel = f"{folder}/{ytid}_{start:06d}_{start + 10:06d}.mp4"
        if _check_listed(rel, tree, clip_dir, listing):
            items.append((rel, cls_idx[folder]))
    return VideoClipDataset("vggsound", split, cfg, root, train, items=items, listing=listing, clip_dir=clip_dir,
                            classes=classes, multi_label=False, **kw)


def _audioset(split, cfg, root, train, *, variant: str = "audioset", **kw) -> VideoClipDataset:
    if split == "train":
        part = "balanced_train" if variant == "audioset_bal_orig" else "unbalanced_train"
    else:
        part = "eval"
    ann_dir = root / "annotations"
    onto_path = ann_dir / "class_labels_indices.csv"
    onto = _csv_rows(onto_path)
    if not onto:
        raise AnnotationError(onto_path, None, "empty ontology file")
    mids, names = [], []
    for line, row in onto[1:]:                                      # header: index,mid,display_name
        if len(row) != 3:
            raise AnnotationError(onto_path, line, f"expected 3 columns (index, mid, display_name), got {len(row)}")
        idx = _as_int(onto_path, line, row[0], "index")
        if idx != len(mids):
            raise AnnotationError(onto_path, line, f"class indices must be 0..N-1 in order; got {idx} at "
                                                   f"position {len(mids)}")
        mids.append(row[1].strip())
        names.append(row[2].strip())
    mid_idx = {m: k for k, m in enumerate(mids)}
    seg_path = ann_dir / f"{part}_segments.csv"
    clip_dir = root / "clips"
    tree = _scan_tree(clip_dir, depth=2)
    listing = _Listing(searched=[str(seg_path), f"{clip_dir}/<ytid[:2]>/<ytid>_<start>_<end>.mp4"])
    items = []
    for line, row in _csv_rows(seg_path, skip_comments=True, skipinitialspace=True):
        # YTID, start_seconds, end_seconds, "label,label,..." (the official reader splits the quoted list on ','
        # and strips quotes; joining the tail handles both quoting styles)
        if len(row) < 4:
            raise AnnotationError(seg_path, line, f"expected YTID, start, end, labels; got {len(row)} columns")
        ytid = row[0].strip()
        st = _as_float(seg_path, line, row[1], "start_seconds")
        et = _as_float(seg_path, line, row[2], "end_seconds")
        labels = [c.strip().strip('"').strip() for c in ",".join(row[3:]).split(",")]
        labels = [c for c in labels if c]
        if not ytid or not labels:
            raise AnnotationError(seg_path, line, "empty YTID or label list")
        unknown = [c for c in labels if c not in mid_idx]
        if unknown:
            raise AnnotationError(seg_path, line, f"labels {unknown} not in {onto_path.name}")
        listing.listed += 1
        rel = f"{ytid[:2]}/{ytid}_{int(st):06d}_{int(et):06d}.mp4"
        if _check_listed(rel, tree, clip_dir, listing):
            items.append((rel, sorted({mid_idx[c] for c in labels})))
    return VideoClipDataset(variant, split, cfg, root, train, items=items, listing=listing, clip_dir=clip_dir,
                            classes=names, multi_label=True, class_balanced=(variant == "audioset_bal"), **kw)


# ----------------------------------------------------------------------------------------------
# Flickr-SoundNet and VGG-SS: one jpg + centred 3 s of a wav + box ground truth
# ----------------------------------------------------------------------------------------------
class LocalizationDataset(BenchmarkDataset):
    """Sound-source localization test sets. Items: ``(id, frame path, audio path, gt map (224, 224), boxes in
    224 px, label)``. The image is squash-resized to ``cfg.model.image_size`` (EZ-VSL test protocol) so that
    ``loc_map`` (always 224 x 224, the grid the metric is defined on) stays aligned with it."""

    def __init__(self, *args, classes: list[str] | None = None, **kw):
        super().__init__(*args, **kw)
        self.classes = classes

    def _default_image_transform(self):
        from torchvision.transforms import v2
        from avlib.image import to_normalized_tensor
        return v2.Compose([v2.Resize(self.image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                           to_normalized_tensor()])

    def _item_files(self, i):
        return [self.items[i]["frame"], self.items[i]["audio"]]

    def _load(self, i: int) -> dict:
        it = self.items[i]
        img = read_image(it["frame"])
        with open_media(it["audio"]) as m:                 # centred clip of the wav [code §2.4]
            t0, _ = clip_window(m.info.start, m.info.end, self.clip_seconds, train=False)
            wave = m.read_audio(self.sample_rate, max(t0, m.info.start), self.clip_seconds)
        waveform, audio = self._audio(wave)
        boxes = it["boxes"]
        box = torch.tensor(boxes[0] if boxes else (0, 0, 0, 0), dtype=torch.float32)
        out = {"image": self._image(img), "audio": audio, "waveform": waveform,
               "loc_map": torch.from_numpy(it["gt_map"]().copy()), "box": box}
        if it.get("label") is not None:
            out["label"] = torch.tensor(it["label"])
        return out


class _LazyMap:
    """Ground-truth map built on first use (Flickr parses its XML then) and cached per process."""

    def __init__(self, fn, *args):
        self.fn, self.args, self._v = fn, args, None

    def __call__(self):
        if self._v is None:
            self._v = self.fn(*self.args)
        return self._v


def _flickr(split, cfg, root, train, *, metadata_dir=None, **kw) -> LocalizationDataset:
    if split == "train" or train:
        raise ValueError("flickr: only the test split exists in the official release (use split='test')")
    ids_file = find_metadata("flickr_test.csv", root, metadata_dir, required=False)
    searched = []
    if ids_file is not None:
        ids = []
        for line, row in _csv_rows(ids_file):
            if not row[0].strip():
                raise AnnotationError(ids_file, line, "empty id")
            ids.append(row[0].strip())
        searched.append(f"{ids_file} ({len(ids)} ids)")
    else:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
        warnings.warn(f"flickr: flickr_test.csv not found (see find_metadata); using all {len(ids)} annotated ids "
                      f"in {root / 'Annotations'}", UserWarning, stacklevel=3)
        searched.append(f"{root / 'Annotations'}/*.xml (no flickr_test.csv found)")
    searched.append(f"{root}/{{frames/<id>.jpg, audio/<id>.wav, Annotations/<id>.xml}}")
    listing = _Listing(searched=searched)
    items = []
    for vid in ids:
        listing.listed += 1
        paths = {"frame": root / "frames" / f"{vid}.jpg", "audio": root / "audio" / f"{vid}.wav",
                 "xml": root / "Annotations" / f"{vid}.xml"}
        bad = [(str(p), "file not found" if not p.is_file() else "empty (0-byte) file")
               for p in paths.values() if not p.is_file() or p.stat().st_size == 0]
        if bad:
            listing.missing.extend(bad)
            continue
        boxes = parse_flickr_xml(paths["xml"])            # malformed XML: AnnotationError now, not in a worker
        boxes_224 = [tuple(int(v) * LOC_SIZE // 256 for v in b) for b in boxes]
        items.append({"id": vid, "frame": paths["frame"], "audio": paths["audio"], "boxes": boxes_224,
                      "gt_map": _LazyMap(flickr_gt_map, boxes)})
    return LocalizationDataset("flickr", "test", cfg, root, False, items=items, listing=listing, **kw)


def _vggss(split, cfg, root, train, *, metadata_dir=None, **kw) -> LocalizationDataset:
    if split == "train" or train:
        raise ValueError("vggss: only the test split exists (use split='test')")
    js = find_metadata("vggss.json", root, metadata_dir)
    entries = {}
    for line, e in _json_array_with_lines(js):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or "bbox" not in e:
            raise AnnotationError(js, line, "entry must be an object with 'file' (str) and 'bbox'")
        boxes = e["bbox"]
        if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 and
                                                  all(isinstance(v, (int, float)) for v in b) for b in boxes):
            raise AnnotationError(js, line, f"'bbox' must be a list of [x1, y1, x2, y2] numbers, got {boxes!r}")
        entries[e["file"]] = (boxes, e.get("class"))
    test_csv = find_metadata("vggss_test.csv", root, metadata_dir, required=False)
    if test_csv is not None:
        ids = [row[0].strip() for _, row in _csv_rows(test_csv) if row[0].strip()]
        unknown = [i for i in ids if i not in entries]
        if unknown:
            raise AnnotationError(test_csv, None, f"{len(unknown)} ids have no boxes in {js.name}, e.g. {unknown[:3]}")
    else:
        ids = list(entries)
    classes = sorted({c for _, c in entries.values() if c})
    cls_idx = {c: k for k, c in enumerate(classes)}
    listing = _Listing(searched=[f"{js} ({len(entries)} entries)", f"{test_csv or '(no vggss_test.csv)'}",
                                 f"{root}/{{frames/<file>.jpg, audio/<file>.wav}}"])
    items = []
    for vid in ids:
        listing.listed += 1
        frame, audio = root / "frames" / f"{vid}.jpg", root / "audio" / f"{vid}.wav"
        bad = [(str(p), "file not found" if not p.is_file() else "empty (0-byte) file")
               for p in (frame, audio) if not p.is_file() or p.stat().st_size == 0]
        if bad:
            listing.missing.extend(bad)
            continue
        boxes, cls = entries[vid]
        boxes_224 = [tuple(int(v) for v in np.clip(np.asarray(b, np.float64), 0, 1) * LOC_SIZE) for b in boxes]
        items.append({"id": vid, "frame": frame, "audio": audio, "boxes": boxes_224,
                      "gt_map": _LazyMap(vggss_gt_map, boxes), "label": cls_idx.get(cls, -1)})
    return LocalizationDataset("vggss", "test", cfg, root, False, items=items, listing=listing, classes=classes, **kw)


# ----------------------------------------------------------------------------------------------
# AVSBench (semantic release)
# ----------------------------------------------------------------------------------------------
class AVSBenchDataset(BenchmarkDataset):
    """AVSBench S4 / MS3 / AVSS. Items are ``(sample folder, [annotated frame ids], sounding class ids)``; at
    evaluation each annotated frame is its own item.

    Label maps ``labels_semantic/<k>.png`` hold 0-based class ids (0 = background), the classes of
    ``label2idx.json`` shifted by that file's first index. A pixel is kept when its class is one of the
    sample's sounding objects (``a_obj``; ``off-the-screen`` = background), otherwise it becomes background.

    FIX / note on the official filter ``lbl if lbl + 1 in class_labels else 0``: it hard-codes that
    ``label2idx.json`` is 1-based (the AVSBench file has ``background: 1``). With a 0-based ``label2idx`` it keeps
    the wrong class and drops the right one (the off-by-one noted in the reference). Here the offset is read from
    the file (``min(label2idx.values())``), which reproduces the official result on the official file and stays
    right on a 0-based one. The official ``range(n_frames)`` assumption (frames named 0..n-1) is also replaced
    by the annotated frame ids actually present.
    """

    def __init__(self, *args, binary: bool, class_names: list[str], **kw):
        super().__init__(*args, **kw)
        self.binary, self.classes = binary, class_names

    def _default_image_transform(self):
        from avlib import image as I
        if self.train:
            return I.train_transform(self.image_size, self.cfg.data.crop_min)
        return I.eval_transform(self.image_size, 1.0)   # segmentation eval: Resize(224) + CenterCrop(224) [§2.2]

    def _item_files(self, i):
        d, frames = self.items[i][0], self.items[i][1]
        return [d / "audio.wav"] + [d / "frames" / f"{k}.jpg" for k in frames] + \
               [d / "labels_semantic" / f"{k}.png" for k in frames]

    def _load(self, i: int) -> dict:
        from torchvision import tv_tensors
        folder, frames, sounding = self.items[i]
        k = frames[int(torch.randint(len(frames), ()))] if self.train else frames[0]
        img = read_image(folder / "frames" / f"{k}.jpg")
        png = folder / "labels_semantic" / f"{k}.png"
        lab = read_mask(png)
        if lab.max() >= AVS_NUM_CLASSES:
            raise AnnotationError(png, None, f"label map values must be class ids < {AVS_NUM_CLASSES}, found "
                                             f"{int(lab.max())} (a 0/255 binary mask? expected labels_semantic/)")
        keep = np.isin(lab, list(sounding))
        lab = np.where(keep, lab, 0).astype(np.int64)
        if lab.shape != (img.height, img.width):     # masks and frames of a sample should match; make sure
            from PIL import Image
            lab = np.array(Image.fromarray(lab.astype(np.uint8)).resize((img.width, img.height), Image.NEAREST),
                           dtype=np.int64)
        image, mask = self._image(img, tv_tensors.Mask(torch.from_numpy(lab)[None]))
        mask = mask[0]
        # audio: 1 annotated frame per second, frame k shows t = k + 0.5 s [code §2.3]
        with open_media(folder / "audio.wav") as m:
            dur = m.info.duration
            jit = _uniform(-0.33 * self.clip_seconds, 0.33 * self.clip_seconds) if self.train else 0.0
            start = max(min(k + 0.5 + jit - self.clip_seconds / 2, dur - self.clip_seconds), 0.0)
            wave = m.read_audio(self.sample_rate, m.info.start + start, self.clip_seconds)
        waveform, audio = self._audio(wave)
        labels = torch.zeros(AVS_NUM_CLASSES)
        labels[[c for c in sounding if c > 0] or [0]] = 1.0
        out = {"image": image, "audio": audio, "waveform": waveform, "labels": labels,
               "label": torch.tensor(min([c for c in sounding if c > 0], default=0)),
               "frame": torch.tensor(k)}
        out["seg_mask"] = (mask > 0).float() if self.binary else mask.long()
        return out


def _avsbench(split, cfg, root, train, *, subset: str, **kw) -> AVSBenchDataset:
    meta = root / "metadata.csv"
    l2i_path = root / "label2idx.json"
    if not l2i_path.is_file():
        raise DataNotFoundError(f"avsbench: {l2i_path} not found (AVSBench semantic release layout)")
    try:
        label2idx = json.loads(_read_text(l2i_path))
    except json.JSONDecodeError as err:
        raise AnnotationError(l2i_path, err.lineno, f"JSON error: {err.msg}") from None
    if not isinstance(label2idx, dict) or not all(isinstance(v, int) for v in label2idx.values()):
        raise AnnotationError(l2i_path, None, "expected an object {class name: integer index}")
    offset = min(label2idx.values())        # 1 in the official file (background = 1); see AVSBenchDataset
    names = [None] * (max(label2idx.values()) - offset + 1)
    for n, v in label2idx.items():
        names[v - offset] = n
    version = {"avsbench_s4": "v1s", "avsbench_ms3": "v1m", "avsbench_avss": None}[subset]
    rows = _csv_rows(meta)
    if not rows:
        raise AnnotationError(meta, None, "empty metadata file")
    listing = _Listing(searched=[f"{meta} (split {split!r}, subset {version or 'all'})",
                                 f"{root}/<label>/<uid>/{{audio.wav, frames/<k>.jpg, labels_semantic/<k>.png}}"])
    items = []
    for line, row in rows[1:]:                                  # vid, uid, s_min, s_sec, a_obj, split, label
        if len(row) != 7:
            raise AnnotationError(meta, line, f"expected 7 columns (vid, uid, s_min, s_sec, a_obj, split, label), "
                                              f"got {len(row)}")
        _, uid, _, _, a_obj, sp, label = (c.strip() for c in row)
        if sp != split or (version is not None and label != version):
            continue
        listing.listed += 1
        sounding = set()
        for c in a_obj.split("_"):
            c = c.replace("off-the-screen", "background")
            if c not in label2idx:
                raise AnnotationError(meta, line, f"a_obj class {c!r} not in {l2i_path.name}")
            sounding.add(label2idx[c] - offset)
        d = root / label / uid
        if not d.is_dir():
            listing.missing.append((str(d), "file not found"))
            continue
        seg_dir = d / "labels_semantic"
        frames = sorted(int(p.stem) for p in seg_dir.glob("*.png") if p.stem.isdigit()) if seg_dir.is_dir() else []
        if not frames:
            listing.missing.append((str(seg_dir / "*.png"), "file not found (no annotated frame)"))
            continue
        sounding = sorted(sounding | {0})
        if train:
            items.append((d, frames, sounding))
        else:
            items.extend((d, [k], sounding) for k in frames)
    # official train oversampling: 10x S4, 100x MS3, 5x AVSS
    over = {"avsbench_s4": 10, "avsbench_ms3": 100, "avsbench_avss": 5}[subset] if train else 1
    over = kw.pop("oversample", over)
    return AVSBenchDataset(subset, split, cfg, root, train, items=items, listing=listing, oversample=over,
                           binary=(subset != "avsbench_avss"), class_names=names, **kw)


# ----------------------------------------------------------------------------------------------
# Separation: mix-and-separate of K = 2 clips (VGGSound-Music, MUSIC)
# ----------------------------------------------------------------------------------------------
class MixtureBenchmarkDataset(BenchmarkDataset):
    """Mix-and-separate (official ``MixtureVideoDataset``, K = 2).

    Train: ``items`` are videos ``(video id, [(relative clip path, class), ...])``; an item takes a random clip of
    its video and a random clip of a *different* video, each with its own random clip centre and frame.
    Eval: ``items`` are fixed pairs ``((path 1, class 1), (path 2, class 2))``; centred clips, centre frames.

    The mixture is the plain sum of the two (mirror-padded) waveforms. Train-time random gain is applied to each
    source waveform *before* mixing, so ``mix_waveform`` is exactly the sum of ``source_waveforms`` and the
    log-mels of mixture and sources are consistent (the official code gains each log-mel input independently).
    """

    def __init__(self, *args, clip_dir: Path, classes: list[str], **kw):
        super().__init__(*args, **kw)
        self.clip_dir, self.classes = Path(clip_dir), list(classes)
        self._bad_clips: set[str] = set()     # per process: clips known to fail (train groups)
        if self.train and len(self.items) < 2:
            raise EmptyDatasetError(f"{self.name} ({self.split}): mix-and-separate needs clips from at least 2 "
                                    f"videos, found {len(self.items)} under {self.root}")

    def _item_files(self, i):
        it = self.items[i]
        if self.train:
            return [self.clip_dir / p for p, _ in it[1]]
        return [self.clip_dir / it[0][0], self.clip_dir / it[1][0]]

    def _source(self, rel: str):
        with open_media(self.clip_dir / rel) as m:
            info = m.info
            if not (info.has_video and info.has_audio):
                raise MediaError(m.path, "needs both a video and an audio stream", "no_stream")
            t0, t1 = clip_window(info.start, info.end, self.clip_seconds, self.train)
            frame = m.read_frame(_frame_time(t0, t1, info.video_start or 0.0, info.video_end or t1, self.train))
            wave = m.read_audio(self.sample_rate, t0, self.clip_seconds)
        return frame, _pad(wave, self.clip_samples)

    def _pick(self, group: list[tuple[str, int]]):
        """A random readable clip of a video: ``((rel, class), frame, waveform)``. A clip that fails is recorded and
        another clip of the same video is tried; ``MediaError`` only when none of them reads."""
        bad, err = self._bad_clips, None
        for _ in range(len(group)):
            good = [c for c in group if c[0] not in bad]
            if not good:
                break
            clip = good[int(torch.randint(len(good), ()))]
            try:
                return (clip, *self._source(clip[0]))
            except MediaError as e:
                bad.add(clip[0])
                self.skipped.record(e.path, e.reason, e.kind)
                err = e
        raise err or MediaError(self.clip_dir / group[0][0], "no readable clip in this video", "no_data")

    def _load(self, i: int) -> dict:
        if self.train:
            first = self._pick(self.items[i][1])            # failure: this item is unreadable (retry logic)
            n, second = len(self.items), None
            # partner: other videos in a random order; a bad partner is recorded and replaced, item i stays good
            for o in torch.randperm(n - 1)[:16].tolist():
                j = (i + 1 + o) % n
                try:
                    second = self._pick(self.items[j][1])
                    break
                except MediaError:
                    continue
            if second is None:
                raise MediaError(self.clip_dir, f"no readable partner clip for video {self.items[i][0]}", "no_data")
            (c1, f1, w1), (c2, f2, w2) = first, second
            pair, frames, waves = (c1, c2), [f1, f2], [w1, w2]
        else:
            pair = self.items[i]
            frames, waves = [], []
            for rel, _ in pair:
                f, w = self._source(rel)
                frames.append(f)
                waves.append(w)
        if self.train:
            from avlib.audio import random_gain
            waves = [random_gain(w, float(self.cfg.data.gain_db)) for w in waves]
        sources = torch.stack(waves)                                          # (K, S)
        mix = sources.sum(0)                                                  # (S,) plain sum [code §2.3]
        front = self.audio_frontend
        return {"images": torch.stack([self._image(f) for f in frames]),      # (K, 3, H, W)
                "source_waveforms": sources, "mix_waveform": mix,
                "mix_audio": front(mix, train=False),                         # (1, F, T)
                "source_audio": front(sources, train=False),                  # (K, 1, F, T)
                "source_labels": torch.tensor([c for _, c in pair])}


def _group_train(items: list[tuple[str, str, int]]) -> list[tuple[str, list[tuple[str, int]]]]:
    groups: dict[str, list] = defaultdict(list)
    for vid, rel, c in items:
        groups[vid].append((rel, c))
    return [(vid, groups[vid]) for vid in sorted(groups)]


# The official train list uses short instrument names for two VGGSound classes
_VGGMUSIC_ALIASES = {"violin": "violin__fiddle", "steel_guitar": "steel_guitar__slide_guitar"}


def _vggmusic_folder(name: str) -> str:
    # FIX: exact-name aliases (the official str.replace would turn 'violin__fiddle' into 'violin__fiddle__fiddle'),
    # and the VGGSound sanitization for the eval CSV's 'violin,_fiddle' (officially read as a folder with a comma).
    name = vggsound_folder(name.strip())
    return _VGGMUSIC_ALIASES.get(name, name)


def _vggmusic_clip(path, line, ytid_start: str, cls: str) -> str:
    ytid_start = ytid_start.strip()
    if len(ytid_start) < 18 or ytid_start[-7] != "_":
        raise AnnotationError(path, line, f"expected '<11-char ytid>_<start:06d>', got {ytid_start!r}")
    start = _as_int(path, line, ytid_start[-6:], "start")
    return f"playing_{_vggmusic_folder(cls)}/{ytid_start[:11]}_{start:06d}_{start + 10:06d}.mp4"


def _vggsound_music(split, cfg, root, train, *, metadata_dir=None, **kw) -> MixtureBenchmarkDataset:
    clip_dir = root / "clips"
    tree = _scan_tree(clip_dir, depth=2)
    train_txt = find_metadata("vggmusic_train.txt", root, metadata_dir, required=(split == "train"))
    classes: list[str] = []
    if train_txt is not None:
        rows = _csv_rows(train_txt)
        for line, row in rows:
            if len(row) != 2:
                raise AnnotationError(train_txt, line, f"expected 'ytid_start,instrument', got {len(row)} columns")
        classes = sorted({_vggmusic_folder(r[1]) for _, r in rows})
    if split == "train":
        listing = _Listing(searched=[str(train_txt), f"{clip_dir}/playing_<instrument>/<ytid>_<s>_<s+10>.mp4"])
        flat = []
        for line, (ys, cls) in rows:
            listing.listed += 1
            rel = _vggmusic_clip(train_txt, line, ys, cls)
            if _check_listed(rel, tree, clip_dir, listing):
                flat.append((ys.strip()[:11], rel, classes.index(_vggmusic_folder(cls))))
        # FIX: the official loader passes dicts {ytid: [files]} as the file list (crash) and class_desc=None
        # (len(None) crash); here the clips are grouped per video explicitly.
        items = _group_train(flat)
    else:
        ev = find_metadata("vggmusic_eval_ss.csv", root, metadata_dir)
        rows = _csv_rows(ev)
        if not classes:
            classes = sorted({_vggmusic_folder(c) for _, r in rows[1:] if len(r) == 5 for c in r[2:4]})
        listing = _Listing(searched=[str(ev), f"{clip_dir}/playing_<instrument>/<ytid>_<s>_<s+10>.mp4"])
        items = []
        for line, row in rows[1:]:                     # source_1, source_2, class_1, class_2, sep_type
            if len(row) != 5:
                raise AnnotationError(ev, line, f"expected 5 columns (source_1, source_2, class_1, class_2, "
                                                f"sep_type), got {len(row)}")
            listing.listed += 1
            r1, r2 = _vggmusic_clip(ev, line, row[0], row[2]), _vggmusic_clip(ev, line, row[1], row[3])
            ok = [_check_listed(r, tree, clip_dir, listing) for r in (r1, r2)]
            if all(ok):
                c1, c2 = (classes.index(_vggmusic_folder(c)) if _vggmusic_folder(c) in classes else -1
                          for c in row[2:4])
                items.append(((r1, c1), (r2, c2)))
    return MixtureBenchmarkDataset("vggsound_music", split, cfg, root, train, items=items, listing=listing,
                                   clip_dir=clip_dir, classes=classes, **kw)


def _music(split, cfg, root, train, *, version: str = "music", eval_videos: int = 130, test_videos: int = 85,
           **kw) -> MixtureBenchmarkDataset:
    files = {"music_solo": [("music_solo.csv", "solo")], "music_solo21": [("music21_solo.csv", "solo")],
             "music": [("music_solo.csv", "solo"), ("music21_duet.csv", "duet")]}[version]
    data = []
    for fn, kind in files:
        path = root / "anno" / fn
        for line, row in _csv_rows(path)[1:]:           # header row
            if len(row) != 3:
                raise AnnotationError(path, line, f"expected 3 columns (youtube id, instrument, ...), got {len(row)}")
            if not row[0].strip() or not row[1].strip():
                raise AnnotationError(path, line, "empty youtube id or instrument")
            data.append((row[0].strip(), row[1].strip().replace(" ", "_"), kind))
    # FIX: DATASETS.md says clips/, the code reads clips_360p_segm/: accept both (the code's name first)
    clip_dir = next((root / d for d in ("clips_360p_segm", "clips") if (root / d).is_dir()), root / "clips_360p_segm")
    tree = _scan_tree(clip_dir, depth=2)
    by_prefix: dict[tuple[str, str], list[str]] = defaultdict(list)   # (class, yid) -> segments '<yid>.*.mp4'
    for rel, size in tree.items():
        cls, name = rel.split("/", 1)
        if name.endswith(".mp4") and name.count(".") >= 2 and size > 0:
            by_prefix[(cls, name.split(".", 1)[0])].append(rel)
    vocab = sorted({c for _, c, _ in data})
    segs, kind_of = defaultdict(list), {}
    listing = _Listing(searched=[f"{root / 'anno'}/{{{', '.join(f for f, _ in files)}}}",
                                 f"{clip_dir}/<class>/<yid>.*.mp4"])
    for yid, cls, kind in data:
        listing.listed += 1
        found = sorted(by_prefix.get((cls, yid), []))
        if not found:
            listing.missing.append((str(clip_dir / cls / f"{yid}.*.mp4"), "file not found"))
            continue
        segs[yid].extend((rel, vocab.index(cls)) for rel in found)
        kind_of[yid] = kind
    # official deterministic split: every (len // 130)-th solo video is eval, every (len // 85)-th duet is test.
    # FIX: the step is at least 1 (the official slice step is 0, a ValueError, below 130 solo videos).
    solo = sorted(v for v, k in kind_of.items() if k == "solo")
    duet = sorted(v for v, k in kind_of.items() if k == "duet")
    eval_vids = set(solo[::max(1, len(solo) // eval_videos)]) if solo else set()
    test_vids = set(duet[::max(1, len(duet) // test_videos)]) if duet else set()
    if split == "train":
        vids = sorted(set(segs) - eval_vids - test_vids)
        items = [(v, segs[v]) for v in vids]
        # FIX: the official call passes an unexpected oversample= (TypeError); its intent, one item per
        # segment on average, is kept: len = videos * ceil(segments / videos).
        over = kw.pop("oversample", math.ceil(sum(len(segs[v]) for v in vids) / max(1, len(vids))))
    else:
        # the official code evaluates on the solo eval videos for any non-train partition
        vids = sorted(eval_vids)
        flat = [(v, s) for v in vids for s in segs[v]]
        # deterministic partners: segment i with the first segment from another video, starting half-way round
        items, m = [], len(flat)
        for i, (v, s) in enumerate(flat):
            partner = next((flat[(i + m // 2 + k) % m] for k in range(m) if flat[(i + m // 2 + k) % m][0] != v), None)
            if partner is not None:
                items.append((s, partner[1]))
        over = kw.pop("oversample", 1)
    return MixtureBenchmarkDataset(version, split, cfg, root, train, items=items, listing=listing, oversample=over,
                                   clip_dir=clip_dir, classes=vocab, **kw)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
BENCHMARKS: dict[str, tuple[str, Callable, dict]] = {
    # name: (root family, builder, fixed kwargs)
    "vggsound": ("vggsound", _vggsound, {}),
    "audioset": ("audioset", _audioset, {"variant": "audioset"}),
    "audioset_bal": ("audioset", _audioset, {"variant": "audioset_bal"}),
    "audioset_bal_orig": ("audioset", _audioset, {"variant": "audioset_bal_orig"}),
    "flickr": ("flickr", _flickr, {}),
    "vggss": ("vggss", _vggss, {}),
    "avsbench_s4": ("avsbench", _avsbench, {"subset": "avsbench_s4"}),
    "avsbench_ms3": ("avsbench", _avsbench, {"subset": "avsbench_ms3"}),
    "avsbench_avss": ("avsbench", _avsbench, {"subset": "avsbench_avss"}),
    "vggsound_music": ("vggsound_music", _vggsound_music, {}),
    "music": ("music", _music, {"version": "music"}),
    "music_solo": ("music", _music, {"version": "music_solo"}),
    "music_solo21": ("music", _music, {"version": "music_solo21"}),
}
_ALIASES = {"flickr_soundnet": "flickr", "flickr_soundnet_5k": "flickr", "vgg_ss": "vggss", "avsbench": "avsbench_s4",
            "s4": "avsbench_s4", "ms3": "avsbench_ms3", "avss": "avsbench_avss", "vggmusic": "vggsound_music"}
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "eval": "test"}


def build_benchmark(name: str, split: str = "train", cfg=None, root=None, train: bool | None = None, *,
                    validate: bool | str | None = None, **kwargs) -> BenchmarkDataset:
    """Build a benchmark dataset in its official layout.

    Args:
        name: one of ``BENCHMARKS`` (``-`` and ``_`` are interchangeable; e.g. ``avsbench-s4``).
        split: ``train`` | ``val`` | ``test``. VGGSound / AudioSet / VGGSound-Music / MUSIC have train and test
            (``val`` means test); Flickr and VGG-SS only test; AVSBench train / val / test (the official code
            evaluates on ``val``).
        cfg: an ``avlib.config.Config`` (sizes: ``cfg.data`` audio front end, ``cfg.model.image_size``);
            ``None`` = the ``paper`` profile.
        root: the benchmark folder; default ``$AVLIB_<NAME>_ROOT`` etc. (see ``resolve_root``).
        train: augmentation and random clip/frame selection; default ``split == "train"``.
        validate: probe every file now and drop unreadable items (``dataset.validate()``; ``"decode"``: also
            decode a little of each). Default: for evaluation sets (``train=False``) only, so that an evaluation
            scores exactly the readable items (the count dropped is in the warning and ``skip_summary()``).
        **kwargs: ``metadata_dir``, ``image_transform``, ``audio_frontend``, ``max_retries``, ``oversample``,
            and MUSIC's ``eval_videos`` / ``test_videos`` (split sizes, official 130 / 85).
    """
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    split = _SPLITS[split]
    if cfg is None:
        from avlib.config import make_config
        cfg = make_config("paper")
    if not (hasattr(cfg, "data") and hasattr(cfg, "model")):
        raise TypeError("cfg must be a full avlib.config.Config (image size from cfg.model, audio from cfg.data), "
                        f"got {type(cfg).__name__}")
    family, builder, fixed = BENCHMARKS[key]
    if not key.startswith("avsbench") and split == "val":
        split = "test"
    train = (split == "train") if train is None else bool(train)
    root = resolve_root(family, root, cfg)
    ds = builder(split, cfg, root, train, **fixed, **kwargs)
    if validate is None:
        validate = not train
    if validate not in (True, False, "decode"):
        raise ValueError(f"validate={validate!r}: None (evaluation sets), True, False or 'decode'")
    if validate:
        ds.validate(decode=validate == "decode")
    return ds

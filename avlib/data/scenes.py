"""AV-Digits, the kit's real-data benchmark, and synthetic scenes with the same structure.

A *scene* is a ``grid x grid`` image of distinct objects (MNIST digits, or procedurally drawn shapes) and a
clip in which one of them "speaks" (an FSDD recording of that digit, or a class-specific synthetic
timbre). ``cfg.data.distractors`` can limit how many non-sounding objects stay on screen (the other
cells are then plain background; default: every cell holds an object). Everything a downstream task
needs comes with it (ARCHITECTURE.md, batch contract)::

    image (3, H, W)     ImageNet-normalized       audio (1, F, T)   log-mel (AudioFrontEnd)
    waveform (S,)       what `audio` was computed from (after the train-time gain)
    label ()            class of the (first) sounding object, -1 when nothing on screen sounds
    labels (10,)        multi-hot of the sounding objects
    loc_map (H, W)      1 on the sounding cell(s)           box (4,)  x0, y0, x1, y1 of the first sounding cell
    seg_mask (H, W)     the sounding object's pixels (intensity > 0.5 inside its cell)
    extras: cell_classes (g*g,) (-1 = empty cell), sounding (g*g,), source_ids (2,) (FSDD bank rows,
            -1 = none), index ()

Scene ``i`` of a split is composed from ``numpy.random.default_rng([seed, split, i, epoch])`` only, so the
same seed gives the same scene bit for bit whatever the worker count or order. ``set_epoch`` changes the
training scenes (fresh compositions each epoch); the test scenes never change.

Generalization splits: MNIST train vs test images, FSDD takes 5-49 vs 0-4 (or held-out speakers,
``cfg.data.holdout_speakers``). ``MixtureDataset`` builds the mix-and-separate pairs for separation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avlib.audio import AudioFrontEnd, random_gain
from avlib.image import normalize

__all__ = ["NUM_CLASSES", "SceneDataset", "MixtureDataset", "AlternateMixtureDataset", "DigitContent", "ShapeContent",
           "SHAPE_NAMES"]

NUM_CLASSES = 10
_SPLIT_ID = {"train": 0, "test": 1, "val": 2}
# The validation split (for choosing budgets and recipes; the test split is only ever reported) is carved
# from the training sources, so validation scenes share no recording and no picture with training or test
# scenes: FSDD takes 5-9 of every speaker and digit (takes 0-4 are the official test split) and the last
# 10,000 MNIST training images. "train" keeps takes 10-49 and the first 50,000 training images.
VAL_TAKES = range(5, 10)
MNIST_VAL_IMAGES = 10_000
GLYPH_FILL = 0.875            # object size relative to its cell
SEG_THRESHOLD = 0.5           # seg_mask = object intensity > this


# ----------------------------------------------------------------------------------------------
# Content: where the pictures and sounds of each class come from
# ----------------------------------------------------------------------------------------------
class DigitContent:
    """MNIST digits (pictures) + FSDD recordings (sounds) of one split (``train``, ``val`` or ``test``;
    ``val`` and ``train`` divide the official training sources, see ``VAL_TAKES``)."""

    name = "avdigits"

    def __init__(self, split: str, sample_rate: int, root=None, holdout_speakers=()):
        from avlib.data.sources import load_fsdd, load_mnist, mnist_by_class

        source = "test" if split == "test" else "train"
        self.images, self.labels = load_mnist(root, source)
        self.bank = load_fsdd(root, split=source, sample_rate=sample_rate, holdout_speakers=tuple(holdout_speakers))
        self.by_class = mnist_by_class(self.labels, NUM_CLASSES)       # MNIST rows of each digit
        self.by_digit = list(self.bank.by_digit)                       # FSDD bank rows of each digit
        if source == "train":
            first_val = len(self.labels) - MNIST_VAL_IMAGES
            in_val = np.isin(self.bank.takes, list(VAL_TAKES))
            want = split == "val"
            self.by_class = [rows[(rows >= first_val) == want] for rows in self.by_class]
            self.by_digit = [rows[in_val[rows] == want] for rows in self.by_digit]
        missing = [d for d in range(NUM_CLASSES) if len(self.by_digit[d]) == 0 or len(self.by_class[d]) == 0]
        if missing:
            raise ValueError(f"AV-Digits {split}: no recordings/images for digits {missing}")

    def glyphs(self, classes: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, size, size)`` float32 intensities in [0, 1] and the MNIST row of each."""
        ids = np.array([self.by_class[c][rng.integers(len(self.by_class[c]))] for c in classes], dtype=np.int64)
        g = self.images[ids].astype(np.float32) * (1.0 / 255.0)
        if size != g.shape[-1]:
            t = torch.from_numpy(g).unsqueeze(1)
            g = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)[:, 0].clamp_(0, 1).numpy()
        return g, ids

    def sound(self, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        rows = self.by_digit[cls]
        i = int(rows[rng.integers(len(rows))])
        return self.bank.clip(i), i

    def alternate_sound(self, cls: int, source_id: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Another recording of the same source: the same digit by the same speaker, another take of this
        split (``AlternateMixtureDataset``, Mix-and-Localize's "another clip of the same speaker"). The
        recording itself only when the split holds no other take (FSDD has 5 per split at least)."""
        rows = self.by_digit[cls]
        same = rows[(self.bank.speaker_ids[rows] == self.bank.speaker_ids[source_id]) & (rows != source_id)]
        i = int(same[rng.integers(len(same))]) if len(same) else int(source_id)
        return self.bank.clip(i), i


SHAPE_NAMES = ("disk", "square", "triangle", "ring", "plus", "cross", "diamond", "hbar", "vbar", "frame")
_SHAPE_F0 = (130.8, 164.8, 196.0, 233.1, 277.2, 329.6, 392.0, 466.2, 554.4, 659.3)   # class pitch (Hz)


def _shape_mask(c: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary mask of shape class ``c`` on coordinates ``u`` (x, right) and ``v`` (y, down) in [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    if c in (0, 3):
        r = np.sqrt(u * u + v * v)
        return r < 0.8 if c == 0 else (r > 0.5) & (r < 0.85)
    cheb = np.maximum(au, av)
    if c == 1:
        return cheb < 0.7
    if c == 2:
        return (v > -0.75) & (v < 0.65) & (au < (v + 0.75) * (0.8 / 1.4))
    if c == 4:
        return ((au < 0.22) & (av < 0.85)) | ((av < 0.22) & (au < 0.85))
    if c == 5:
        return (np.abs(au - av) < 0.25) & (cheb < 0.8)
    if c == 6:
        return (au + av) < 0.9
    if c == 7:
        return (av < 0.25) & (au < 0.85)
    if c == 8:
        return (au < 0.25) & (av < 0.85)
    return (cheb > 0.45) & (cheb < 0.8)                                         # 9: frame


class ShapeContent:
    """Procedural objects and sounds: no files at all.

    Class ``k`` is a shape (``SHAPE_NAMES[k]``) and a timbre: a harmonic stack at ``_SHAPE_F0[k]`` (+-3 %),
    spectral tilt ``k % 4``, odd harmonics only for odd ``k``, envelope ``k % 3`` (decay / sustained /
    tremolo), small vibrato; 0.35-0.7 s long, peak 0.5 (like the normalized FSDD clips).
    """

    name = "synthetic"

    def __init__(self, split: str, sample_rate: int):
        self.split = split
        self.sample_rate = int(sample_rate)

    def glyphs(self, classes: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(classes)
        lin = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1          # pixel centres in [-1, 1]
        scale = rng.uniform(0.75, 1.0, n).astype(np.float32)[:, None, None]
        du, dv = (rng.uniform(-0.08, 0.08, (2, n)).astype(np.float32)[..., None, None])
        u = (lin[None, None, :] - du) / scale                                    # (n, 1, size) x
        v = (lin[None, :, None] - dv) / scale                                    # (n, size, 1) y (down)
        out = np.zeros((n, size, size), np.float32)
        for i, c in enumerate(classes):
            ui, vi = np.broadcast_arrays(u[i], v[i])
            out[i] = _shape_mask(int(c), ui, vi)
        return out, np.full(n, -1, np.int64)

    def sound(self, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        sr = self.sample_rate
        n = int(rng.uniform(0.35, 0.7) * sr)
        t = np.arange(n, dtype=np.float64) / sr
        f0 = _SHAPE_F0[cls] * rng.uniform(0.97, 1.03)
        hs = np.arange(1, 25, dtype=np.float64)
        if cls % 2 == 1:
            hs = hs[::2]                                                         # odd harmonics only
        hs = hs[hs * f0 < 0.45 * sr]
        amp = (hs ** (-(0.5 + 0.5 * (cls % 4)))).astype(np.float32)
        vib = 0.004 * np.sin(2 * np.pi * rng.uniform(4.0, 7.0) * t)              # vibrato (relative)
        phase0 = (2 * np.pi * f0 * (t + np.cumsum(vib) / sr)) % (2 * np.pi)
        phases = rng.uniform(0, 2 * np.pi, (len(hs), 1))
        arg = (hs[:, None] * phase0[None, :] + phases).astype(np.float32)
        x = amp @ np.sin(arg)
        kind = cls % 3
        if kind == 0:                                                            # percussive decay
            env = np.exp(-t * rng.uniform(5.0, 8.0))
        elif kind == 1:                                                          # sustained, soft edges
            ramp = max(1, int(0.04 * sr))
            env = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / ramp)
        else:                                                                    # tremolo
            env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(7.0, 10.0) * t)
            env *= np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / max(1, int(0.02 * sr)))
        x = x * env + rng.normal(0.0, 0.01, n)
        x = 0.5 * x / max(np.abs(x).max(), 1e-8)
        return x.astype(np.float32), -1

    def alternate_sound(self, cls: int, source_id: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Another clip of the same source: a fresh draw of class ``cls``'s timbre (synthetic sounds have
        no speaker; pitch, phases, envelope and noise are drawn anew)."""
        return self.sound(cls, rng)


def _content(cfg, split: str, root=None):
    kind = cfg.data.dataset
    if kind == "synthetic":
        return ShapeContent(split, cfg.data.sample_rate)
    if kind == "avdigits":
        return DigitContent(split, cfg.data.sample_rate, root if root is not None else cfg.data.root,
                            cfg.data.holdout_speakers)
    raise ValueError(f"data.dataset={kind!r} is not a scene dataset (avdigits | synthetic); "
                     "the real benchmarks come from avlib.data.benchmarks.build_benchmark")


# ----------------------------------------------------------------------------------------------
# Scene composition
# ----------------------------------------------------------------------------------------------
@dataclass
class _Scene:
    image: np.ndarray            # (H, W, 3) float32 in [0, 1]
    classes: np.ndarray          # (g*g,) class per cell, row-major
    glyph_ids: np.ndarray        # (g*g,) MNIST rows (-1 synthetic)
    sounding: list[int]          # sounding cells, first = primary
    sources: list[np.ndarray]    # the waveform of each sound placed in the clip (S,), in order
    source_ids: list[int]        # FSDD bank rows (-1 synthetic / none)
    source_classes: list[int]    # class of each sound (an off-screen class possible)
    offsets: list[int]
    offscreen: str | None        # None | "silence" | "offscreen"
    alpha: np.ndarray            # (H, W) object intensity
    cells: list[tuple[int, int, int, int]]   # (x0, y0, x1, y1) per cell
    glyph_boxes: list[tuple[int, int, int]] = field(default_factory=list)  # (x, y, size) per cell


class _Composer:
    """Composes scenes for one (config, split). Shared by SceneDataset and MixtureDataset."""

    def __init__(self, cfg, split: str, root=None):
        if split not in _SPLIT_ID:
            raise ValueError(f"split={split!r}: 'train' or 'test'")
        self.cfg = cfg
        self.split = split
        d = cfg.data
        self.grid = int(d.grid)
        if not 1 <= self.grid * self.grid <= NUM_CLASSES:
            raise ValueError(f"data.grid={d.grid}: grid*grid must be 1..{NUM_CLASSES} (distinct classes per image)")
        self.H, self.W = cfg.model.image_size
        ys = np.linspace(0, self.H, self.grid + 1).round().astype(int)
        xs = np.linspace(0, self.W, self.grid + 1).round().astype(int)
        self.cells = [(int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1]))
                      for r in range(self.grid) for c in range(self.grid)]
        self.glyph_size = max(4, int(min(ys[1] - ys[0], xs[1] - xs[0]) * GLYPH_FILL))
        self.S = int(d.clip_samples)
        self.content = _content(cfg, split, root)

    def rng(self, index: int, epoch: int = 0, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.cfg.seed), _SPLIT_ID[self.split], int(index), int(epoch), salt])

    def _place(self, clip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        S = self.S
        if len(clip) > S:                                   # longer than the clip: a random window
            start = int(rng.integers(0, len(clip) - S + 1))
            clip = clip[start:start + S]
        off = int(rng.integers(0, S - len(clip) + 1))
        out = np.zeros(S, np.float32)
        out[off:off + len(clip)] = clip
        return out, off

    def compose(self, rng: np.random.Generator, *, force_class: int | None = None,
                mode: str | None = None, n_sources: int | None = None, distractors: int | None = None,
                distractors_p: float = 1.0) -> _Scene:
        """One scene. ``distractors``: how many non-sounding objects stay on screen (``None``: all; the
        others' cells are left as plain background and their class is -1). With ``distractors_p < 1``
        that limit applies to a random ``distractors_p`` fraction of the scenes and the others keep
        ``cfg.data.distractors`` (the task scenes' count). All other random draws do not depend on
        ``distractors``: a scene differs from its ``None`` version only in the cleared cells."""
        d = self.cfg.data
        n_cells = self.grid * self.grid
        if force_class is None:
            classes = rng.choice(NUM_CLASSES, n_cells, replace=False)
        else:
            others = rng.choice([c for c in range(NUM_CLASSES) if c != force_class], n_cells - 1, replace=False)
            classes = np.insert(others, int(rng.integers(n_cells)), force_class)
        classes = classes.astype(np.int64)

        # --- picture ---------------------------------------------------------------------------
        gs = self.glyph_size
        glyphs, glyph_ids = self.content.glyphs(classes, rng, gs)
        fg = rng.uniform(0.55, 1.0, (n_cells, 3)).astype(np.float32)
        bg = rng.uniform(0.0, 0.3, (n_cells, 3)).astype(np.float32)
        alpha = np.zeros((self.H, self.W), np.float32)
        glyph_boxes = []
        for k, (x0, y0, x1, y1) in enumerate(self.cells):
            gx = x0 + int(rng.integers(0, max(1, x1 - x0 - gs + 1)))
            gy = y0 + int(rng.integers(0, max(1, y1 - y0 - gs + 1)))
            alpha[gy:gy + gs, gx:gx + gs] = glyphs[k]
            glyph_boxes.append((gx, gy, gs))
        image = np.empty((self.H, self.W, 3), np.float32)
        for k, (x0, y0, x1, y1) in enumerate(self.cells):
            image[y0:y1, x0:x1] = bg[k] + alpha[y0:y1, x0:x1, None] * (fg[k] - bg[k])

        # --- sound -------------------------------------------------------------------------------
        if mode is None:
            mode = "onscreen"
            if d.p_offscreen > 0 and rng.random() < d.p_offscreen:
                mode = "silence" if rng.random() < 0.5 else "offscreen"
        if force_class is not None:
            mode = "onscreen"
        sounding: list[int] = []
        src_classes: list[int] = []
        if mode == "onscreen":
            if n_sources is None:
                n_sources = 2 if (n_cells > 1 and d.p_two_sources > 0 and rng.random() < d.p_two_sources) else 1
            if force_class is not None:
                first = int(np.flatnonzero(classes == force_class)[0])
                rest = [k for k in range(n_cells) if k != first]
                sounding = [first] + [int(k) for k in rng.choice(rest, n_sources - 1, replace=False)]
            else:
                sounding = [int(k) for k in rng.choice(n_cells, n_sources, replace=False)]
            src_classes = [int(classes[k]) for k in sounding]
        elif mode == "offscreen":
            absent = [c for c in range(NUM_CLASSES) if c not in set(classes.tolist())]
            if absent:
                src_classes = [int(absent[rng.integers(len(absent))])]
            else:
                mode = "silence"
        elif mode != "silence":
            raise ValueError(f"mode={mode!r}")
        sources, ids, offsets = [], [], []
        for c in src_classes:
            clip, sid = self.content.sound(c, rng)
            placed, off = self._place(clip, rng)
            sources.append(placed)
            ids.append(int(sid))
            offsets.append(off)
        if distractors_p < 1.0 and rng.random() >= distractors_p:
            distractors = d.distractors                    # this scene is a task scene
        if distractors is not None:                        # clear the cells of non-sounding objects (last,
            quiet = [k for k in range(n_cells) if k not in sounding]   # so the other draws stay the same)
            shown = set(sounding) | {int(k) for k in rng.permutation(quiet)[:max(0, int(distractors))]}
            for k, (x0, y0, x1, y1) in enumerate(self.cells):
                if k not in shown:
                    alpha[y0:y1, x0:x1] = 0.0
                    image[y0:y1, x0:x1] = bg[k]
                    classes[k] = glyph_ids[k] = -1
        return _Scene(image=image, classes=classes, glyph_ids=glyph_ids, sounding=sounding, sources=sources,
                      source_ids=ids, source_classes=src_classes, offsets=offsets,
                      offscreen=None if mode == "onscreen" else mode, alpha=alpha, cells=self.cells,
                      glyph_boxes=glyph_boxes)

    # --- ground truth ----------------------------------------------------------------------------
    def targets(self, sc: _Scene) -> dict[str, torch.Tensor]:
        H, W = self.H, self.W
        loc = np.zeros((H, W), np.float32)
        seg = np.zeros((H, W), np.float32)
        labels = np.zeros(NUM_CLASSES, np.float32)
        box = np.zeros(4, np.float32)
        for j, k in enumerate(sc.sounding):
            x0, y0, x1, y1 = sc.cells[k]
            loc[y0:y1, x0:x1] = 1.0
            seg[y0:y1, x0:x1] = (sc.alpha[y0:y1, x0:x1] > SEG_THRESHOLD)
            labels[sc.classes[k]] = 1.0
            if j == 0:
                box[:] = (x0, y0, x1, y1)
        label = int(sc.classes[sc.sounding[0]]) if sc.sounding else -1
        sounding = np.zeros(len(sc.classes), np.float32)
        sounding[sc.sounding] = 1.0
        sid = (sc.source_ids + [-1, -1])[:2]
        img = normalize(torch.from_numpy(sc.image).permute(2, 0, 1))
        return {"image": img.contiguous(), "label": torch.tensor(label, dtype=torch.long),
                "labels": torch.from_numpy(labels), "loc_map": torch.from_numpy(loc), "box": torch.from_numpy(box),
                "seg_mask": torch.from_numpy(seg), "cell_classes": torch.from_numpy(sc.classes),
                "sounding": torch.from_numpy(sounding), "source_ids": torch.tensor(sid, dtype=torch.long)}


class _one_thread:
    """Run the per-item tensor ops on one intra-op thread. A scene's ops are tiny: with 2+ OpenMP threads on
    a busy 2-core machine they spin and wait (measured 25 ms vs 2 ms per item). The previous count is
    restored, so a training loop in the same process (num_workers=0) keeps its threads."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)
        return False


def _gain_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
class _ComposedDataset(Dataset):
    """What scene and mixture datasets share: a composer for ``split``, the audio front end, a size and
    an epoch (training items are re-composed every epoch; ``fit`` calls ``set_epoch``)."""

    def __init__(self, cfg, split: str, root, epoch: int, size: int | None, pretraining: bool = False):
        self.cfg, self.split, self.epoch = cfg, split, int(epoch)
        self.composer = _Composer(cfg, split, root)
        self.front = AudioFrontEnd(cfg.data)
        self.train = split == "train"
        self.size = int(size if size is not None else (cfg.data.train_size if self.train else cfg.data.test_size))
        # pre-training scenes may show fewer non-sounding objects than the task scenes (data.pretrain_distractors)
        self.pretraining = bool(pretraining)
        d = cfg.data
        own = self.pretraining and d.pretrain_distractors is not None
        self.distractors = d.pretrain_distractors if own else d.distractors
        self.distractors_p = float(d.pretrain_distractors_p) if own else 1.0

    @property
    def content(self):
        return self.composer.content

    @property
    def num_classes(self) -> int:
        """Classes of objects / sounds (digits 0-9, or the ten synthetic shapes)."""
        return NUM_CLASSES

    def set_epoch(self, epoch: int) -> None:
        """Fresh training scenes for ``epoch`` (the test split ignores it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self._check(index)
        with _one_thread():
            return self._with_audio([self._item(index)])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """The DataLoader's batched fetch, ``[self[i] for i in indices]``. With ``cfg.data.batch_front_end``
        the items are composed one by one and the audio front end then runs once on every clip of the
        batch: the same log-mels bit for bit (the front end treats the rows of a batch independently)."""
        if not self.cfg.data.batch_front_end:
            return [self[i] for i in indices]
        for i in indices:
            self._check(i)
        with _one_thread():
            return self._with_audio([self._item(i) for i in indices])

    def _check(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(index)

    def _with_audio(self, items: list[dict]) -> list[dict]:
        """Add the log-mels to composed items: one front-end call on all their clips ``(n, S)``."""
        clips = [self._clips(it) for it in items]
        mel = self.front(torch.cat(clips))                                     # (n, 1, F, T)
        start = 0
        for it, c in zip(items, clips):
            self._set_audio(it, mel[start:start + len(c)])
            start += len(c)
        return items

    # what a subclass composes (without log-mels), which clips its log-mels come from, where they go
    def _item(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _clips(self, item: dict) -> torch.Tensor:
        raise NotImplementedError

    def _set_audio(self, item: dict, mel: torch.Tensor) -> None:
        raise NotImplementedError


class SceneDataset(_ComposedDataset):
    """AV-Digits (``cfg.data.dataset='avdigits'``) or synthetic scenes (``'synthetic'``), one split.

    ``len = cfg.data.train_size / test_size``; items are dicts of tensors (module docstring). The train
    split applies the random gain (+-``cfg.data.gain_db``); geometry is never augmented, so the maps stay
    aligned with the grid. ``root`` overrides ``cfg.data.root`` (then ``$AVLIB_DATA_ROOT``, then the cache).
    """

    def __init__(self, cfg, split: str = "train", *, pretraining: bool = False, root=None, epoch: int = 0,
                 size: int | None = None):
        super().__init__(cfg, split, root, epoch, size, pretraining)

    def _rng(self, index: int) -> np.random.Generator:
        return self.composer.rng(index, self.epoch if self.train else 0)

    def scene(self, index: int) -> _Scene:
        """The raw composition (numpy) of item ``index``: classes, sounding cells, sources, offsets..."""
        self._check(index)
        return self.composer.compose(self._rng(index), distractors=self.distractors, distractors_p=self.distractors_p)

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        sc = self.composer.compose(rng, distractors=self.distractors, distractors_p=self.distractors_p)
        wave = np.sum(sc.sources, axis=0) if sc.sources else np.zeros(self.composer.S, np.float32)
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if self.train:
            wave = random_gain(wave, self.cfg.data.gain_db, _gain_generator(rng))
        item = self.composer.targets(sc)
        item["waveform"] = wave
        item["index"] = torch.tensor(index, dtype=torch.long)
        return item

    def _clips(self, item: dict) -> torch.Tensor:
        return item["waveform"][None]

    def _set_audio(self, item: dict, mel: torch.Tensor) -> None:
        item["audio"] = mel[0]                                                # (1, F, T)

    def describe(self, index: int) -> dict[str, Any]:
        """Human-readable provenance of item ``index`` (for notebooks and tests)."""
        sc = self.scene(index)
        names = []
        bank = getattr(self.content, "bank", None)
        for sid in sc.source_ids:
            names.append(bank.recordings[sid].name if (bank is not None and sid >= 0) else None)
        return {"classes": sc.classes.reshape(self.composer.grid, -1).tolist(), "sounding_cells": sc.sounding,
                "source_classes": sc.source_classes, "recordings": names, "offsets": sc.offsets,
                "glyph_ids": sc.glyph_ids.tolist(), "offscreen": sc.offscreen}


class MixtureDataset(_ComposedDataset):
    """Mix-and-separate pairs (K = 2) for separation: two scenes, each with exactly one sounding object
    and different sounding classes; ``mix_waveform`` = plain sum of the two (after the train-time
    per-source gain), as the official ``MixtureVideoDataset``.

    Keys: ``images (K,3,H,W)``, ``source_waveforms (K,S)``, ``mix_waveform (S,)``, ``mix_audio (1,F,T)``,
    ``source_audio (K,1,F,T)``, ``labels (K,)`` (class of each source), ``loc_maps``/``seg_masks (K,H,W)``,
    ``boxes (K,4)``, ``source_ids (K,)``, ``index``.
    """

    K = 2

    def __init__(self, cfg, split: str = "train", *, pretraining: bool = False, root=None, epoch: int = 0,
                 size: int | None = None):
        super().__init__(cfg, split, root, epoch, size, pretraining)

    def _compose(self, index: int) -> tuple[list[_Scene], np.random.Generator]:
        self._check(index)
        rng = self.composer.rng(index, self.epoch if self.train else 0, salt=1)
        classes = rng.choice(NUM_CLASSES, self.K, replace=False)
        return [self.composer.compose(rng, force_class=int(c), n_sources=1, distractors=self.distractors,
                                      distractors_p=self.distractors_p)
                for c in classes], rng

    def scenes(self, index: int) -> list[_Scene]:
        """The K raw compositions (numpy) of item ``index``."""
        return self._compose(index)[0]

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        scenes, rng = self._compose(index)
        src = torch.from_numpy(np.stack([s.sources[0] for s in scenes]).astype(np.float32))
        if self.train:
            src = random_gain(src, self.cfg.data.gain_db, _gain_generator(rng))
        mix = src.sum(0)
        tg = [self.composer.targets(s) for s in scenes]
        return {"images": torch.stack([t["image"] for t in tg]), "source_waveforms": src,
                "mix_waveform": mix,
                "labels": torch.stack([t["label"] for t in tg]),
                "loc_maps": torch.stack([t["loc_map"] for t in tg]),
                "seg_masks": torch.stack([t["seg_mask"] for t in tg]),
                "boxes": torch.stack([t["box"] for t in tg]),
                "source_ids": torch.stack([t["source_ids"][0] for t in tg]),
                "index": torch.tensor(index, dtype=torch.long)}

    def _clips(self, item: dict) -> torch.Tensor:
        return torch.cat([item["source_waveforms"], item["mix_waveform"][None]])   # (K+1, S)

    def _set_audio(self, item: dict, mel: torch.Tensor) -> None:
        item["mix_audio"], item["source_audio"] = mel[-1], mel[:-1]            # (1, F, T), (K, 1, F, T)


class AlternateMixtureDataset(MixtureDataset):
    """``MixtureDataset`` pairs that also carry a second mixture of the *same* K sources made of other
    recordings of them, for Mix-and-Localize (Hu, Chen & Owens, CVPR 2022; hxixixh/mix-and-localize
    ``data/voxceleb_img_aud_pair.py`` draws "another clip of the same speaker"). Here the other
    recording is the same digit by the same speaker, another take of the split (``alternate_sound``;
    synthetic scenes: a fresh draw of the class timbre), placed at its own random offset, with its own
    train-time gain, and summed like the first mixture.

    Every key of ``MixtureDataset`` is unchanged (bit for bit); added: ``alt_source_waveforms (K,S)``,
    ``alt_mix_waveform (S,)`` (= their plain sum), ``alt_mix_audio (1,F,T)`` (its log-mel) and
    ``alt_source_ids (K,)`` (FSDD bank rows, -1 synthetic), source k of the second mixture being another
    clip of source k of the first. Deterministic: drawn from the item's own stream with another salt
    (``composer.rng(index, epoch, salt=2)``), so the first mixture does not depend on it.
    """

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        item = super()._item(index)
        rng = self.composer.rng(index, self.epoch if self.train else 0, salt=2)
        clips, ids = [], []
        for cls, sid in zip(item["labels"].tolist(), item["source_ids"].tolist()):
            clip, alt_id = self.content.alternate_sound(int(cls), int(sid), rng)
            clips.append(self.composer._place(clip, rng)[0])
            ids.append(alt_id)
        src = torch.from_numpy(np.stack(clips).astype(np.float32))                   # (K, S)
        if self.train:
            src = random_gain(src, self.cfg.data.gain_db, _gain_generator(rng))
        mix = src.sum(0)
        item.update(alt_source_waveforms=src, alt_mix_waveform=mix, alt_source_ids=torch.tensor(ids, dtype=torch.long))
        return item

    def _clips(self, item: dict) -> torch.Tensor:
        return torch.cat([super()._clips(item), item["alt_mix_waveform"][None]])    # (K+2, S)

    def _set_audio(self, item: dict, mel: torch.Tensor) -> None:
        super()._set_audio(item, mel[:-1])
        item["alt_mix_audio"] = mel[-1]                                        # (1, F, T)

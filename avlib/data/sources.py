"""Reading the two real sources of AV-Digits from the data root (never copied into the repository).

* **FSDD** (Free Spoken Digit Dataset): ``<root>/fsdd/recordings/{digit}_{speaker}_{take}.wav``, 8 kHz mono
  16-bit, 6 speakers x 10 digits x 50 takes. Official split: takes 0-4 test, 5-49 train.
* **MNIST**: ``<root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (original idx gzip files).

Both are cached per process (``load_fsdd`` / ``load_mnist`` return the same object for the same
arguments), so a dataset, its DataLoader workers (forked after loading) and a notebook share one copy.
The root is resolved with :func:`avlib.paths.data_root` (explicit argument -> ``$AVLIB_DATA_ROOT`` -> the
download cache); when nothing is found the error names the download command and the synthetic fallback.
"""
from __future__ import annotations

import gzip
import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avlib.paths import DataNotFoundError, data_root

__all__ = ["FSDDRecording", "FSDDBank", "fsdd_index", "fsdd_split", "load_fsdd", "load_mnist", "read_idx",
           "mnist_by_class", "FSDD_RATE", "FSDD_TEST_TAKES", "MNIST_FILES", "SPLITS", "clear_caches"]

FSDD_RATE = 8000
FSDD_TEST_TAKES = range(0, 5)           # official split: takes 0-4 test, 5-49 train
SPLITS = ("train", "test")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_LOCK = threading.Lock()
_FSDD_CACHE: dict = {}
_MNIST_CACHE: dict = {}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    return split


def clear_caches() -> None:
    """Forget every cached FSDD bank / MNIST array (tests, or after moving the data)."""
    with _LOCK:
        _FSDD_CACHE.clear()
        _MNIST_CACHE.clear()


# ----------------------------------------------------------------------------------------------
# FSDD
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FSDDRecording:
    digit: int
    speaker: str
    take: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def split(self) -> str:
        return "test" if self.take in FSDD_TEST_TAKES else "train"


def _fsdd_dir(root) -> Path:
    return data_root(root, require=("fsdd/recordings",)) / "fsdd" / "recordings"


def fsdd_index(root: str | os.PathLike | None = None) -> list[FSDDRecording]:
    """Every FSDD recording (parsed from its file name), sorted by (digit, speaker, take)."""
    rec_dir = _fsdd_dir(root)
    out, bad = [], []
    for entry in os.scandir(rec_dir):
        if not entry.name.endswith(".wav"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            bad.append(entry.name)
            continue
        out.append(FSDDRecording(int(m.group(1)), m.group(2), int(m.group(3)), Path(entry.path)))
    if bad:
        raise ValueError(f"{rec_dir}: {len(bad)} wav files do not follow '{{digit}}_{{speaker}}_{{take}}.wav', "
                         f"e.g. {bad[:3]}")
    if not out:
        raise DataNotFoundError(f"{rec_dir} holds no .wav files; run `python -m avlib.data.download`")
    out.sort(key=lambda r: (r.digit, r.speaker, r.take))
    return out


def fsdd_split(index: list[FSDDRecording], split: str, holdout_speakers: tuple[str, ...] | list[str] = ()
               ) -> list[FSDDRecording]:
    """The official split (takes 0-4 test, 5-49 train).

    With ``holdout_speakers``, those speakers never appear in ``train`` and ``test`` holds *only* them
    (all their takes): the test set then measures generalization to unseen voices.
    """
    _check_split(split)
    hold = set(holdout_speakers)
    if hold:
        known = {r.speaker for r in index}
        unknown = hold - known
        if unknown:
            raise ValueError(f"holdout_speakers {sorted(unknown)} not in FSDD (speakers: {sorted(known)})")
        if split == "train":
            return [r for r in index if r.speaker not in hold and r.split == "train"]
        return [r for r in index if r.speaker in hold]
    return [r for r in index if r.split == split]


class FSDDBank:
    """All recordings of one split, decoded, resampled and held in memory.

    ``waves`` is one float32 array (every clip back to back), ``offsets``/``lengths`` locate clip ``i``;
    ``digits``/``takes``/``speaker_ids`` describe it; ``by_digit[d]`` lists the clips of digit ``d``.
    Each clip is peak-normalized to ``peak`` (FSDD levels vary a lot between speakers) unless ``peak`` is None.

    Recordings that cannot be read (0-byte, header cut, cut mid-data, not audio: ``avlib.data.media``
    decides) are left out, counted in ``skipped`` (a ``SkipLog``) and named in one ``SkippedItemWarning``;
    ``recordings`` lists only the clips held. A split with no readable recording raises ``ValueError``.
    """

    def __init__(self, recordings: list[FSDDRecording], sample_rate: int, peak: float | None = 0.5):
        import warnings

        from avlib.data.media import MediaError, SkipLog, SkippedItemWarning, read_audio

        self.sample_rate = int(sample_rate)
        self.skipped = SkipLog("fsdd", spool=False)      # read once, in this process
        self.recordings, clips = [], []
        for r in recordings:
            try:
                x = read_audio(r.path, self.sample_rate).numpy()   # mono; torchaudio resampling if needed
            except MediaError as err:
                self.skipped.record(err.path, err.reason, err.kind, warn=False)
                continue
            if peak is not None:
                m = float(np.abs(x).max())
                if m > 0:
                    x = x * (peak / m)
            self.recordings.append(r)
            clips.append(x.astype(np.float32, copy=False))
        if self.skipped:
            bad = self.skipped.items
            msg = (f"FSDD: {len(bad)} of {len(recordings)} recordings unreadable, left out: "
                   + "; ".join(f"{p} ({why})" for p, why in bad[:5]) + (" ..." if len(bad) > 5 else "")
                   + ". Fix: restore these files from the FSDD release (`python -m avlib.data.download --force` "
                     "fetches it again into the download cache)")
            if not self.recordings:
                raise ValueError(msg)
            warnings.warn(msg, SkippedItemWarning, stacklevel=3)
        self.lengths = np.array([len(c) for c in clips], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.waves = np.concatenate(clips) if clips else np.zeros(0, np.float32)
        self.digits = np.array([r.digit for r in self.recordings], dtype=np.int64)
        self.takes = np.array([r.take for r in self.recordings], dtype=np.int64)
        self.speakers = sorted({r.speaker for r in self.recordings})
        self.speaker_ids = np.array([self.speakers.index(r.speaker) for r in self.recordings], dtype=np.int64)
        self.by_digit = [np.flatnonzero(self.digits == d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.recordings)

    def clip(self, i: int) -> np.ndarray:
        o = self.offsets[i]
        return self.waves[o:o + self.lengths[i]]


def load_fsdd(root: str | os.PathLike | None = None, *, split: str = "train", sample_rate: int = FSDD_RATE,
              holdout_speakers: tuple[str, ...] = (), peak: float | None = 0.5) -> FSDDBank:
    """One split of FSDD as an in-memory :class:`FSDDBank` at ``sample_rate`` (cached per process)."""
    _check_split(split)
    rec_dir = _fsdd_dir(root)
    key = (str(rec_dir), split, int(sample_rate), tuple(sorted(holdout_speakers)), peak)
    with _LOCK:
        bank = _FSDD_CACHE.get(key)
        if bank is None:
            recs = fsdd_split(fsdd_index(rec_dir.parent.parent), split, holdout_speakers)
            if not recs:
                raise ValueError(f"FSDD split {split!r} with holdout_speakers={holdout_speakers} is empty")
            bank = _FSDD_CACHE[key] = FSDDBank(recs, sample_rate, peak)
    return bank


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) into a numpy array, checking the header against the size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:   # zlib.error: damaged deflate data inside a .gz
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or cut short. Fix: "
                         "`python -m avlib.data.download` replaces MNIST files that fail their checksum") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    start = 4 + 4 * ndim
    n = int(np.prod(dims)) * dtype.itemsize
    if len(data) - start != n:
        raise ValueError(f"{path}: header says {dims} ({n} bytes) but the file holds {len(data) - start}")
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of MNIST train (60k) or test (10k); cached."""
    _check_split(split)
    mdir = data_root(root, require=("mnist",)) / "mnist"
    key = (str(mdir), split)
    with _LOCK:
        hit = _MNIST_CACHE.get(key)
        if hit is None:
            img_name, lab_name = MNIST_FILES[split]
            missing = [n for n in (img_name, lab_name) if not (mdir / n).exists()]
            if missing:
                from avlib.paths import _HOW_TO_FIX
                raise DataNotFoundError(f"{mdir} is missing {missing}.\n{_HOW_TO_FIX}")
            images = read_idx(mdir / img_name)
            labels = read_idx(mdir / lab_name).astype(np.int64)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(f"{mdir}: MNIST {split} images {images.shape} and labels {labels.shape} disagree")
            images.setflags(write=False)
            labels.setflags(write=False)
            hit = _MNIST_CACHE[key] = (images, labels)
    return hit


def mnist_by_class(labels: np.ndarray, num_classes: int = 10) -> list[np.ndarray]:
    """Indices of each class: ``out[d]`` = positions with label ``d``."""
    return [np.flatnonzero(labels == d) for d in range(num_classes)]

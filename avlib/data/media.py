"""Decoding audio, video frames and images, and keeping count of the inputs we could not read.

Everything here returns plain tensors / PIL images and raises one exception type, :class:`MediaError`,
for any input that cannot be used (missing, 0-byte, truncated, undecodable, no stream of the kind
asked for). The benchmark loaders (``avlib.data.benchmarks``) catch exactly that exception, record the
file in a :class:`SkipLog` and move on; any *other* exception is a bug and propagates.

Readers::

    read_audio(path, sample_rate, start=None, duration=None) -> (S,) float32 mono at sample_rate
    read_frame(path, time, precise=True)                      -> PIL.Image RGB
    read_frames(path, times)                                  -> [PIL.Image RGB, ...]
    video_duration(path)                                      -> float seconds
    probe(path)                                               -> MediaInfo (streams, spans, rates)
    read_image(path) / read_mask(path)                        -> PIL RGB / (H, W) uint8 array

Audio is decoded at its native rate, **averaged over channels** and resampled with
``torchaudio.functional.resample`` (default Hann-sinc, as the official ``torchaudio.transforms.Resample``
[code §2.1]). WAV/FLAC go through ``soundfile`` (fast, sample-exact seeks); every other container
through PyAV. Times are container timestamps in seconds (the same clock as ``MediaInfo.start``/``end``).

For many reads from one file use ``with open_media(path) as m: m.read_audio(...); m.read_frame(...)``:
the container is opened once.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "MediaError", "SkippedItemWarning", "SkipLog", "MediaInfo", "MediaFile", "open_media", "probe",
    "read_audio", "read_frame", "read_frames", "video_duration", "read_image", "read_mask", "check_file",
    "audio_duration",
]

SOUNDFILE_SUFFIXES = (".wav", ".flac")


# ----------------------------------------------------------------------------------------------
# Errors and bad-input accounting
# ----------------------------------------------------------------------------------------------
class MediaError(RuntimeError):
    """An input file that cannot be used.

    ``kind`` is one of ``missing | empty | truncated | undecodable | no_stream | no_data`` (loaders
    count skips per kind); ``path`` and ``reason`` say which file and why.
    """

    def __init__(self, path, reason: str, kind: str = "undecodable"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):                      # picklable across DataLoader workers
        return (MediaError, (self.path, self.reason, self.kind))


class SkippedItemWarning(UserWarning):
    """A dataset item was skipped because its media could not be read (see ``dataset.skipped``)."""


def _remove_spool(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


class SkipLog:
    """Per-dataset record of skipped inputs: counters per kind plus the list of ``(path, reason)``.

    Safe enough for a ``DataLoader``: a lock guards in-process updates (threads), and a record made in
    another process (a worker holds a pickled copy of the dataset) is also appended as one JSON line to
    a spool folder created with the log, so the parent's ``summary()`` sees the workers' skips too.
    Each path is warned about once per process (``SkippedItemWarning``); events are all counted.
    """

    def __init__(self, name: str, *, spool: bool = True):
        self.name = name
        self._lock = threading.Lock()
        self._events: Counter = Counter()            # kind -> number of skip events
        self._items: dict[str, tuple[str, str]] = {}  # path -> (kind, reason), first reason kept
        self._warned: set[str] = set()
        self._pid = os.getpid()
        self._spool = tempfile.mkdtemp(prefix="avlib-skips-") if spool else None
        if self._spool:   # removed when the log dies in the process that made it (never from a forked worker)
            weakref.finalize(self, _remove_spool, self._spool, self._pid)

    # pickling (DataLoader workers): drop the lock, keep the spool folder and what is known so far
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def record(self, path, reason: str, kind: str = "undecodable", *, warn: bool = True) -> None:
        path = str(path)
        with self._lock:
            self._events[kind] += 1
            self._items.setdefault(path, (kind, reason))
            first = path not in self._warned
            self._warned.add(path)
        if self._spool and os.getpid() != self._pid:
            line = json.dumps({"path": path, "reason": reason, "kind": kind}) + "\n"
            try:   # one short O_APPEND write per event: atomic on POSIX
                fd = os.open(os.path.join(self._spool, f"{os.getpid()}.jsonl"),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
        if warn and first:
            warnings.warn(f"[{self.name}] skipping {path}: {reason}", SkippedItemWarning, stacklevel=3)

    def _merged(self) -> tuple[Counter, dict[str, tuple[str, str]]]:
        with self._lock:
            events, items = Counter(self._events), dict(self._items)
        if self._spool and os.path.isdir(self._spool):
            for fn in sorted(os.listdir(self._spool)):
                try:
                    lines = Path(self._spool, fn).read_text().splitlines()
                except OSError:
                    continue
                for line in lines:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    events[r["kind"]] += 1
                    items.setdefault(r["path"], (r["kind"], r["reason"]))
        return events, items

    @property
    def counts(self) -> dict[str, int]:
        """Skip events per kind (an item hit twice counts twice)."""
        return dict(self._merged()[0])

    @property
    def items(self) -> list[tuple[str, str]]:
        """Distinct skipped files, ``[(path, reason), ...]`` in the order first seen."""
        return [(p, r) for p, (_, r) in self._merged()[1].items()]

    def __len__(self) -> int:
        return len(self._merged()[1])

    def __iter__(self):
        return iter(self.items)

    def summary(self, examples: int = 5) -> dict:
        events, items = self._merged()
        by_kind = Counter(k for k, _ in items.values())
        return {"name": self.name, "skipped_files": len(items), "events": sum(events.values()),
                "by_kind": dict(by_kind),
                "examples": [(p, r) for p, (_, r) in list(items.items())[:examples]]}

    def __repr__(self) -> str:
        s = self.summary(3)
        return (f"SkipLog({self.name!r}: {s['skipped_files']} files skipped {s['by_kind']}"
                + (f", e.g. {s['examples']}" if s["examples"] else "") + ")")


def check_file(path) -> Path:
    """Raise ``MediaError`` unless ``path`` is an existing, non-empty regular file."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "file not found", "missing")
    if not p.is_file():
        raise MediaError(p, "not a regular file", "missing")
    if p.stat().st_size == 0:
        raise MediaError(p, "empty (0-byte) file", "empty")
    return p


def _looks_like_container(path) -> bool:
    """ISO-BMFF (mp4/mov/m4a: 'ftyp' box first) or RIFF/WAVE header: a file that starts right but does not
    decode is most likely cut short (an interrupted download or extraction)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"WAVE")


def _ffmpeg_error(path, err: Exception) -> MediaError:
    msg = getattr(err, "strerror", None) or str(err)
    kind = "truncated" if ("moov atom" in msg or _looks_like_container(path)) else "undecodable"
    return MediaError(path, f"cannot decode ({type(err).__name__}: {msg})", kind)


def _check_riff_size(path) -> None:
    """A WAV whose RIFF header promises more bytes than the file holds was cut short: libsndfile would
    silently return the shorter signal, we refuse it (placeholder sizes 0 / 0xFFFFFFFF are accepted)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    declared = int.from_bytes(head[4:8], "little")
    actual = os.path.getsize(path)
    if declared not in (0, 0xFFFFFFFF) and declared + 8 > actual:
        raise MediaError(path, f"truncated WAV: header declares {declared + 8} bytes, file has {actual}", "truncated")


# ----------------------------------------------------------------------------------------------
# Stream information
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaInfo:
    """What a container holds. Times are seconds on the container clock."""

    path: str
    has_video: bool
    has_audio: bool
    video_start: float | None = None
    video_end: float | None = None
    audio_start: float | None = None
    audio_end: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None

    @property
    def start(self) -> float:
        """Start of the span covered by every stream present (official mixture loader: intersection)."""
        starts = [s for s in (self.video_start, self.audio_start) if s is not None]
        return max(starts) if starts else 0.0

    @property
    def end(self) -> float:
        ends = [e for e in (self.video_end, self.audio_end) if e is not None]
        return min(ends) if ends else 0.0

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


def _stream_span(stream, container) -> tuple[float | None, float | None]:
    tb = stream.time_base
    c_start = container.start_time / 1e6 if container.start_time is not None else 0.0
    start = float(stream.start_time * tb) if (stream.start_time is not None and tb) else c_start
    if stream.duration is not None and tb:
        return start, start + float(stream.duration * tb)
    if container.duration is not None:
        return start, c_start + container.duration / 1e6
    return start, None


# ----------------------------------------------------------------------------------------------
# PyAV helpers
# ----------------------------------------------------------------------------------------------
_SCALE = {"u8": None, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0, "flt": 1.0, "dbl": 1.0}


def _frame_to_array(frame) -> np.ndarray:
    """PyAV audio frame -> float32 ``(C, n)`` in [-1, 1]."""
    arr = frame.to_ndarray()
    fmt = frame.format.name.rstrip("p")
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:                       # packed: (1, n * C), interleaved
        arr = arr.reshape(-1, channels).T
    if fmt == "u8":
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    else:
        arr = arr.astype(np.float32) / np.float32(_SCALE.get(fmt, 1.0))
    return arr


class MediaFile:
    """One opened media file (PyAV container, or soundfile for WAV/FLAC). Use through ``open_media``."""

    def __init__(self, path):
        self.path = check_file(path)
        self._container = None
        self._sf_info = None
        if self.path.suffix.lower() in SOUNDFILE_SUFFIXES:
            import soundfile as sf
            _check_riff_size(self.path)
            try:
                self._sf_info = sf.info(str(self.path))
            except Exception as err:   # libsndfile refuses it: maybe another codec in a .wav; try FFmpeg
                self._sf_error = err
        if self._sf_info is None:
            import av
            try:
                self._container = av.open(str(self.path))
            except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
                raise _ffmpeg_error(self.path, err) from None
        self.info = self._probe()

    # -- context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._container is not None:
            self._container.close()
            self._container = None

    # -- info
    def _probe(self) -> MediaInfo:
        if self._sf_info is not None:
            i = self._sf_info
            if i.frames <= 0:
                raise MediaError(self.path, "no audio samples", "no_data")
            return MediaInfo(str(self.path), has_video=False, has_audio=True, audio_start=0.0,
                             audio_end=i.frames / i.samplerate, sample_rate=int(i.samplerate),
                             channels=int(i.channels))
        c = self._container
        kw: dict = dict(has_video=bool(c.streams.video), has_audio=bool(c.streams.audio))
        if not kw["has_video"] and not kw["has_audio"]:
            raise MediaError(self.path, "no audio or video stream", "no_stream")
        if c.streams.video:
            v = c.streams.video[0]
            kw["video_start"], kw["video_end"] = _stream_span(v, c)
            rate = v.average_rate or v.base_rate
            kw.update(fps=float(rate) if rate else None, width=v.codec_context.width,
                      height=v.codec_context.height)
        if c.streams.audio:
            a = c.streams.audio[0]
            kw["audio_start"], kw["audio_end"] = _stream_span(a, c)
            kw.update(sample_rate=int(a.codec_context.sample_rate or a.rate or 0) or None,
                      channels=a.codec_context.channels)
        return MediaInfo(str(self.path), **kw)

    # -- audio
    def read_audio(self, sample_rate: int | None = None, start: float | None = None,
                   duration: float | None = None) -> torch.Tensor:
        """Mono float32 ``(S,)`` from ``start`` (default: stream start) for ``duration`` seconds (default:
        to the end), resampled to ``sample_rate`` (default: native). May be shorter than asked when the
        file ends first; callers pad (``avlib.audio.mirror_pad``)."""
        if not self.info.has_audio:
            raise MediaError(self.path, "no audio stream", "no_stream")
        if duration is not None and duration <= 0:
            raise ValueError(f"duration must be > 0, got {duration}")
        if self._sf_info is not None:
            data, native = self._read_soundfile(start, duration)
        else:
            data, native = self._read_pyav_audio(start, duration)
        if data.shape[-1] == 0:
            raise MediaError(self.path, f"no audio samples in [{start}, +{duration}] s", "no_data")
        wave = torch.from_numpy(np.ascontiguousarray(data)).mean(0)          # (C, n) -> (S,) downmix
        if sample_rate is not None and int(sample_rate) != int(native):
            import torchaudio.functional as AF
            wave = AF.resample(wave, int(native), int(sample_rate))
            if duration is not None:
                wave = wave[: int(round(duration * sample_rate))]
        return wave.float().contiguous()

    def _read_soundfile(self, start, duration):
        import soundfile as sf
        sr = int(self._sf_info.samplerate)
        s0 = max(0, int(round((start or 0.0) * sr)))
        n = -1 if duration is None else int(round(duration * sr))
        try:
            data = sf.read(str(self.path), start=s0, frames=n, dtype="float32", always_2d=True)[0]
        except Exception as err:
            raise MediaError(self.path, f"cannot decode ({type(err).__name__}: {err})", "undecodable") from None
        return data.T, sr                                                   # (C, n)

    def _read_pyav_audio(self, start, duration):
        import av
        sr = self.info.sample_rate
        a0 = self.info.audio_start or 0.0
        t_start = a0 if start is None else max(float(start), a0)
        t_end = None if duration is None else (a0 if start is None else float(start)) + duration
        try:
            # always seek: an earlier read on this container (a video frame) moved the demuxer
            got = self._decode_audio(t_start, t_end, seek=True)
            if got is None:   # no timestamps after a seek: samples cannot be placed; decode from the start
                self.close()
                self._container = av.open(str(self.path))
                got = self._decode_audio(t_start, t_end, seek=False)
        except av.FFmpegError as err:
            raise _ffmpeg_error(self.path, err) from None
        chunks, first_t = got
        if not chunks:
            raise MediaError(self.path, "no audio frames decoded", "no_data")
        data = np.concatenate(chunks, axis=1)                                # (C, n)
        off = max(0, int(round((t_start - first_t) * sr)))
        if t_end is None:
            return data[:, off:], sr
        n = max(0, int(round((t_end - max(t_start, first_t)) * sr)))
        return data[:, off: off + n], sr

    def _decode_audio(self, t_start, t_end, seek: bool):
        """Decoded chunks ``[(C, n), ...]`` covering [t_start, t_end] and the time of the first sample;
        ``None`` when a seek was made but frames carry no timestamps."""
        c = self._container
        stream = c.streams.audio[0]
        sr = self.info.sample_rate
        a0 = self.info.audio_start or 0.0
        if seek and stream.time_base:
            # land on a frame at or before t_start (margin for codecs whose frames overlap)
            target = max(t_start - 0.25, a0)
            c.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        chunks, first_t, n_samples = [], None, 0
        for frame in c.decode(stream):
            t = frame.time
            if t is None:
                if seek:
                    return None
                t = a0 + n_samples / sr
            if first_t is None:
                first_t = t
            arr = _frame_to_array(frame)
            chunks.append(arr)
            n_samples += arr.shape[1]
            if t_end is not None and t > t_end:
                break
        return chunks, (first_t if first_t is not None else a0)

    # -- video
    def read_frame(self, time: float, precise: bool = True):
        """RGB ``PIL.Image`` at ``time`` seconds.

        ``precise=True``: the frame on screen at ``time`` (the last frame with ``pts <= time``; decodes from
        the preceding keyframe). ``precise=False``: the official ``quick_random_frame`` behaviour, i.e. seek
        and return the first decoded frame, which lands on a keyframe [code §2.3].
        """
        import av
        if not self.info.has_video:
            raise MediaError(self.path, "no video stream", "no_stream")
        c = self._container
        stream = c.streams.video[0]
        time = float(time)
        best = None
        try:
            if stream.time_base:
                c.seek(max(0, int(time / stream.time_base)), stream=stream, backward=True, any_frame=False)
            for frame in c.decode(stream):
                t = frame.time
                if not precise or best is None or (t is not None and t <= time + 1e-6):
                    best = frame
                if not precise or (t is not None and t > time + 1e-6):
                    break
            if best is None and time > (self.info.video_start or 0.0):
                # seeking past the last keyframe can decode nothing: read from the start, keep the last one
                c.seek(0, stream=stream, backward=True, any_frame=False)
                for frame in c.decode(stream):
                    best = frame
            if best is None:
                raise MediaError(self.path, f"no video frame decoded at t={time:.3f}s", "no_data")
            return best.to_image().convert("RGB")
        except av.FFmpegError as err:
            raise _ffmpeg_error(self.path, err) from None

    def read_frames(self, times: Sequence[float], precise: bool = True) -> list:
        order = sorted(range(len(times)), key=lambda i: times[i])
        out = [None] * len(times)
        for i in order:
            out[i] = self.read_frame(times[i], precise=precise)
        return out


def open_media(path) -> MediaFile:
    """Open a media file once for several reads (``with open_media(p) as m: ...``)."""
    return MediaFile(path)


def probe(path) -> MediaInfo:
    with open_media(path) as m:
        return m.info


def read_audio(path, sample_rate: int | None, start: float | None = None,
               duration: float | None = None) -> torch.Tensor:
    """Mono float32 ``(S,)`` at ``sample_rate`` (channels averaged; ``None`` keeps the native rate)."""
    with open_media(path) as m:
        return m.read_audio(sample_rate, start, duration)


def read_frame(path, time: float, precise: bool = True):
    """RGB ``PIL.Image`` of the video frame at ``time`` seconds (see ``MediaFile.read_frame``)."""
    with open_media(path) as m:
        return m.read_frame(time, precise)


def read_frames(path, times: Iterable[float], precise: bool = True) -> list:
    """RGB frames at several times, one container open; returned in the order of ``times``."""
    with open_media(path) as m:
        return m.read_frames(list(times), precise)


def video_duration(path) -> float:
    """Seconds of the video stream (container duration when the stream does not say)."""
    info = probe(path)
    if not info.has_video:
        raise MediaError(path, "no video stream", "no_stream")
    if info.video_end is None:
        raise MediaError(path, "video duration unknown", "undecodable")
    return info.video_end - (info.video_start or 0.0)


def audio_duration(path) -> float:
    info = probe(path)
    if not info.has_audio or info.audio_end is None:
        raise MediaError(path, "no audio stream", "no_stream")
    return info.audio_end - (info.audio_start or 0.0)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def read_image(path):
    """RGB ``PIL.Image`` (grayscale, palette, RGBA, CMYK ... are converted). Fully decoded here so a
    truncated file fails now, not inside a transform."""
    from PIL import Image, UnidentifiedImageError
    p = check_file(path)
    try:
        with Image.open(p) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        kind = "truncated" if "truncated" in str(err).lower() else "undecodable"
        raise MediaError(p, f"cannot decode image ({type(err).__name__}: {err})", kind) from None


def read_mask(path) -> np.ndarray:
    """Label map ``(H, W)`` uint8 as stored: palette PNGs give their palette indices, ``L`` its values,
    ``1`` gives {0, 1}; RGB masks are converted to ``L``."""
    from PIL import Image, UnidentifiedImageError
    p = check_file(path)
    try:
        with Image.open(p) as img:
            img.load()
            if img.mode == "1":
                return np.asarray(img, dtype=np.uint8)
            if img.mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            if img.mode in ("I", "I;16", "I;16B", "F"):
                return np.array(img).astype(np.uint8)
            return np.array(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MediaError(p, f"cannot decode mask ({type(err).__name__}: {err})", "undecodable") from None

"""avlib.data.media: PyAV / soundfile decoding and bad-input accounting, on files the tests write themselves."""
from __future__ import annotations

import pickle
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avlib.data import media
from avlib.data.media import MediaError, SkipLog, SkippedItemWarning
from benchmark_trees import corrupt, frame_colour, write_jpg, write_video, write_wav


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "mp4_stereo": write_video(d / "stereo.mp4", duration=2.5, fps=4, sample_rate=44100, channels=2),
        "mp4_mono": write_video(d / "mono.mp4", duration=2.0, fps=5, sample_rate=16000, channels=1),
        "wav_16k": write_wav(d / "a16k.wav", duration=2.0, sample_rate=16000, freq=440),
        "wav_44k_stereo": write_wav(d / "a44k.wav", duration=2.0, sample_rate=44100, channels=2, freq=440),
        "jpg_gray": write_jpg(d / "gray.jpg", gray=True),
        "jpg_rgb": write_jpg(d / "rgb.jpg"),
        "dir": d,
    }


def _peak_hz(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x.double()).abs()
    return float(torch.argmax(spec)) * sr / x.numel()


# ----------------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------------
def test_wav_native_rate_exact(files):
    w = media.read_audio(files["wav_16k"], 16000)
    ref, sr = sf.read(files["wav_16k"], dtype="float32")
    assert w.dtype == torch.float32 and w.shape == (32000,) and sr == 16000
    assert torch.equal(w, torch.from_numpy(ref))
    seg = media.read_audio(files["wav_16k"], 16000, start=0.5, duration=0.25)
    assert torch.equal(seg, torch.from_numpy(ref[8000:12000]))


def test_wav_wrong_rate_is_resampled_and_stereo_downmixed(files, tmp_path):
    w = media.read_audio(files["wav_44k_stereo"], 16000)
    assert w.shape == (32000,) and torch.isfinite(w).all()
    assert abs(_peak_hz(w, 16000) - 440) < 5          # channel 0 is 440 Hz, channel 1 880 Hz at the same level
    # downmix = average of the channels: x and -x cancel exactly
    x = np.sin(2 * np.pi * 300 * np.arange(22050) / 22050).astype(np.float32) * 0.5
    p = tmp_path / "anti.wav"
    sf.write(p, np.stack([x, -x], 1), 22050, subtype="FLOAT")
    assert media.read_audio(p, None).abs().max() < 1e-6
    y = media.read_audio(p, 8000)
    assert y.shape == (8000,) and y.abs().max() < 1e-5


def test_mp4_audio_resampled_downmixed_and_windowed(files):
    p = files["mp4_stereo"]
    full = media.read_audio(p, 16000)
    assert full.dtype == torch.float32 and full.dim() == 1 and torch.isfinite(full).all()
    assert abs(full.numel() - 40000) < 400            # 2.5 s at 16 kHz (AAC may add a few padding samples)
    assert min(abs(_peak_hz(full, 16000) - f) for f in (440, 880)) < 5    # channels at 440 / 880 Hz
    seg = media.read_audio(p, 16000, start=1.0, duration=0.5)
    assert seg.shape == (8000,)
    # the seeked read agrees with slicing the full decode (same clock)
    ref = full[16000:24000]
    assert torch.allclose(seg, ref, atol=2e-2), float((seg - ref).abs().max())
    tail = media.read_audio(p, 16000, start=2.0, duration=3.0)   # asks past the end: shorter, not an error
    assert 7000 < tail.numel() < 8500


def test_probe_and_durations(files):
    info = media.probe(files["mp4_stereo"])
    assert info.has_video and info.has_audio and info.sample_rate == 44100 and info.channels == 2
    assert info.fps == 4 and (info.width, info.height) == (64, 48)
    assert media.video_duration(files["mp4_stereo"]) == pytest.approx(2.5, abs=0.05)
    assert info.duration == pytest.approx(2.5, abs=0.05)
    assert media.audio_duration(files["wav_44k_stereo"]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# frames and images
# ----------------------------------------------------------------------------------------------
def test_read_frame_precise_picks_the_frame_on_screen(files):
    p, n = files["mp4_stereo"], 10               # 4 fps x 2.5 s
    for t, k in [(0.0, 0), (0.3, 1), (0.74, 2), (1.25, 5), (2.49, 9), (7.0, 9)]:
        img = media.read_frame(p, t)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 48)
        assert abs(int(np.asarray(img)[10, 10, 0]) - frame_colour(k, n)) <= 4, (t, k)
    frames = media.read_frames(p, [2.0, 0.0, 1.0])      # returned in the order asked
    got = [int(np.asarray(f)[10, 10, 0]) for f in frames]
    assert [abs(g - frame_colour(k, n)) <= 4 for g, k in zip(got, (8, 0, 4))] == [True] * 3
    quick = media.read_frame(p, 1.3, precise=False)      # official quick path: a frame near t, no error
    assert quick.size == (64, 48)


def test_open_media_many_reads_one_container(files):
    with media.open_media(files["mp4_mono"]) as m:
        f = m.read_frame(1.0)
        a = m.read_audio(8000, 0.2, 1.0)                 # audio after a video read: the demuxer was moved
        f2 = m.read_frame(0.0)
    assert a.shape == (8000,) and a.abs().max() > 0.1
    assert np.asarray(f)[0, 0, 0] > np.asarray(f2)[0, 0, 0]


def test_grayscale_and_rgba_images_become_rgb(files, tmp_path):
    g = media.read_image(files["jpg_gray"])
    assert g.mode == "RGB" and g.size == (64, 48)
    arr = np.asarray(g)
    assert (arr[..., 0] == arr[..., 1]).all()
    p = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((5, 6, 4), np.uint8)).save(p)
    assert media.read_image(p).mode == "RGB"
    pal = Image.fromarray(np.array([[0, 3], [70, 1]], np.uint8), mode="P")
    pal.putpalette([i % 256 for i in range(768)])
    pal.save(tmp_path / "pal.png")
    assert media.read_mask(tmp_path / "pal.png").tolist() == [[0, 3], [70, 1]]     # palette indices kept


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,how,kind", [
    ("mp4_stereo", "delete", "missing"), ("mp4_stereo", "empty", "empty"), ("mp4_stereo", "truncate", "truncated"),
    ("mp4_stereo", "garbage", "undecodable"), ("wav_16k", "empty", "empty"), ("wav_16k", "truncate", "truncated"),
    ("wav_16k", "garbage", "undecodable"), ("jpg_rgb", "truncate", "truncated"), ("jpg_rgb", "garbage", "undecodable"),
])
def test_bad_inputs_raise_media_error(files, tmp_path, name, how, kind):
    src = files[name]
    bad = corrupt(shutil.copy(src, tmp_path / src.name), how)
    if name.startswith("jpg"):
        readers = [lambda: media.read_image(bad)]
    elif name.startswith("wav"):
        readers = [lambda: media.read_audio(bad, 16000)]
    else:
        readers = [lambda: media.read_audio(bad, 16000), lambda: media.read_frame(bad, 1.0)]
    for read in readers:
        with pytest.raises(MediaError) as err:
            read()
        assert err.value.kind == kind and str(bad) in str(err.value)
    e = pickle.loads(pickle.dumps(err.value))          # crosses DataLoader worker boundaries intact
    assert (e.path, e.kind) == (err.value.path, err.value.kind)


def test_missing_stream_is_a_media_error(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(MediaError, match="no audio stream"):
        media.read_audio(silent, 16000)
    with pytest.raises(MediaError, match="no video stream"):
        media.read_frame(write_wav(tmp_path / "a.wav", duration=0.5), 0.1)


# ----------------------------------------------------------------------------------------------
# SkipLog
# ----------------------------------------------------------------------------------------------
def test_skiplog_counts_warns_once_and_pickles():
    log = SkipLog("demo")
    with pytest.warns(SkippedItemWarning, match="skipping a.mp4"):
        log.record("a.mp4", "cannot decode", "undecodable")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # the same file again: counted, not warned
        log.record("a.mp4", "cannot decode", "undecodable")
        log.record("b.mp4", "file not found", "missing", warn=False)
    assert len(log) == 2 and log.counts == {"undecodable": 2, "missing": 1}
    assert log.items == [("a.mp4", "cannot decode"), ("b.mp4", "file not found")]
    s = log.summary()
    assert s["skipped_files"] == 2 and s["by_kind"] == {"undecodable": 1, "missing": 1}
    clone = pickle.loads(pickle.dumps(log))
    assert clone.items == log.items and "demo" in repr(clone)


def test_skiplog_sees_records_made_in_another_process():
    import multiprocessing as mp
    log = SkipLog("workers")
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_record_in_child, args=(log,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert ("child.mp4", "bad") in log.items and log.counts == {"truncated": 1}


def _record_in_child(log):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.record("child.mp4", "bad", "truncated")

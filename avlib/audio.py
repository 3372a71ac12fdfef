"""Audio front end (waveform -> log-mel) and the inverse path (mel mask -> waveform).

The forward path is the official DeepAVFusion pipeline [code §2.1] at any size::

    mirror pad to clip_samples -> (train) random gain +-gain_db, clamp [-1, 1]
    -> torchaudio MelSpectrogram (n_fft, win = n_fft, hop, periodic Hann, center/reflect, power 2,
       HTK mel scale, f_min 0, f_max = sr / 2, no filterbank norm)
    -> log10(x + 1e-7) -> drop the last frame

At the ``paper`` profile (16 kHz, 3 s, n_fft 800, hop 250, 128 mels) this reproduces the official
front end bit for bit (``mel_fixture.pt``). Shapes::

    (S,)      -> (1, F, T)          one clip
    (B, S)    -> (B, 1, F, T)       a batch of mono clips
    (B, 1, S) -> (B, 1, F, T)       a batch with an explicit channel axis

with ``F = n_mels`` and ``T = clip_samples // hop_length``.

``mel_to_waveform`` goes back from a log-mel alone (no phase anywhere): undo the log, least-squares
back to linear frequency, Griffin-Lim for a phase. It lets you *listen* to spectrograms the model
made (02's reconstructions); every clip compared this way should go through it, the original included.

The inverse path is the official separation inference (``SpectrogramMasking`` [code §3.6]): a mask on the
mel grid is padded with one zero frame, mapped to linear frequency with the same filterbank
(``M_lin = fb @ M``), multiplied with the complex STFT of the mixture (mixture phase kept) and inverted
with the iSTFT.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT
from torch import nn

__all__ = ["AudioFrontEnd", "MaskToWaveform", "apply_mel_mask", "mel_to_waveform", "mirror_pad", "random_gain",
           "resample", "to_mono", "LOG_EPS"]

LOG_EPS = 1e-7


def _params(data_cfg: Any) -> dict:
    """The front-end numbers from a ``DataConfig`` (or a full ``Config``)."""
    d = getattr(data_cfg, "data", data_cfg)
    sr = int(d.sample_rate)
    clip = int(getattr(d, "clip_samples", round(sr * d.clip_seconds)))
    return dict(sample_rate=sr, clip_samples=clip, n_fft=int(d.n_fft), hop_length=int(d.hop_length),
                n_mels=int(d.n_mels), gain_db=float(getattr(d, "gain_db", 0.0)))


# ----------------------------------------------------------------------------------------------
# Small waveform helpers
# ----------------------------------------------------------------------------------------------
def mirror_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Official ``aT.Pad``: while shorter than ``length`` append the time-reversed signal, then crop.

    Works on the last axis of any shape. ``[x, rev(x), x, rev(x), ...][:length]``.
    """
    if x.shape[-1] == 0:
        raise ValueError("mirror_pad: empty waveform")
    while x.shape[-1] < length:
        x = torch.cat([x, torch.flip(x, dims=(-1,))], dim=-1)
    return x[..., :length]


def random_gain(x: torch.Tensor, gain_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Official ``aT.RandomVol``: a gain uniform in [-gain_db, +gain_db] dB, then clamp to [-1, 1].

    ``(S,)`` gets one gain; ``(B, S)`` / ``(B, 1, S)`` get one gain per clip. The multiplication is
    ``torchaudio.functional.gain`` (``x * 10 ** (g / 20)``), vectorized over the batch.
    """
    if gain_db <= 0:
        return x.clamp(-1.0, 1.0)
    if x.dim() == 1:
        g = (torch.rand((), generator=generator) * 2 - 1) * gain_db
        return AF.gain(x, float(g)).clamp(-1.0, 1.0)
    g = (torch.rand(x.shape[0], generator=generator, dtype=torch.float64) * 2 - 1) * gain_db
    ratio = (10.0 ** (g / 20.0)).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (x * ratio).clamp(-1.0, 1.0)


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` on the last axis (default Hann-sinc, like the official
    ``torchaudio.transforms.Resample``); a no-op when the rates agree."""
    if int(orig_sr) == int(new_sr):
        return x
    return AF.resample(x, int(orig_sr), int(new_sr))


def to_mono(x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Average over channels (the official reader averages channels). ``(C, S) -> (S,)`` by default;
    1-D input is returned unchanged."""
    if x.dim() == 1:
        return x
    return x.mean(dim=channel_dim)


# ----------------------------------------------------------------------------------------------
# Forward: waveform -> log-mel
# ----------------------------------------------------------------------------------------------
class AudioFrontEnd(nn.Module):
    """Waveform -> log10 mel ``(.., 1, F, T)``; see the module docstring for the exact recipe.

    ``AudioFrontEnd(cfg.data)``; ``front(wave)`` is the eval transform, ``front(wave, train=True,
    generator=g)`` adds the random gain (reproducible through ``generator``).
    """

    def __init__(self, data_cfg: Any, *, train: bool = False):
        super().__init__()
        p = _params(data_cfg)
        self.sample_rate = p["sample_rate"]
        self.clip_samples = p["clip_samples"]
        self.n_fft = p["n_fft"]
        self.hop_length = p["hop_length"]
        self.n_mels = p["n_mels"]
        self.gain_db = p["gain_db"]
        self.train_mode = bool(train)
        self.mel = AT.MelSpectrogram(sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.n_fft,
                                     hop_length=self.hop_length, f_min=0.0, f_max=self.sample_rate / 2,
                                     n_mels=self.n_mels, power=2.0, normalized=False, center=True,
                                     pad_mode="reflect", norm=None, mel_scale="htk")

    @property
    def num_frames(self) -> int:
        return self.clip_samples // self.hop_length

    @property
    def filterbank(self) -> torch.Tensor:
        """``(n_fft // 2 + 1, n_mels)`` HTK triangles, float32, exactly torchaudio's ``MelScale.fb``."""
        return self.mel.mel_scale.fb

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return mirror_pad(x, self.clip_samples)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Already padded waveform ``(..., S)`` -> ``(..., F, T)`` (log10, last frame dropped)."""
        return torch.log10(self.mel(x) + LOG_EPS)[..., :-1]

    def forward(self, waveform: torch.Tensor, *, train: bool | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.as_tensor(waveform)
        if not x.is_floating_point():
            raise TypeError(f"AudioFrontEnd expects a float waveform in [-1, 1], got {x.dtype}")
        if x.dim() == 1:
            x = x.unsqueeze(0)                        # (1, S): a single clip with its channel axis
        elif x.dim() == 2:
            x = x.unsqueeze(1)                        # (B, S) -> (B, 1, S)
        elif x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"AudioFrontEnd: waveform must be (S,), (B, S) or (B, 1, S); got {tuple(x.shape)} "
                             "(downmix with avlib.audio.to_mono first)")
        x = self.pad(x)
        if self.train_mode if train is None else train:
            x = random_gain(x, self.gain_db, generator)
        return self.log_mel(x)

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, clip_samples={self.clip_samples}, n_fft={self.n_fft}, "
                f"hop_length={self.hop_length}, n_mels={self.n_mels}, gain_db={self.gain_db}, "
                f"train={self.train_mode}")


# ----------------------------------------------------------------------------------------------
# Inverse: mel-grid mask -> waveform (separation inference)
# ----------------------------------------------------------------------------------------------
class MaskToWaveform(nn.Module):
    """Apply a mel-grid mask to a mixture and return the separated waveform ``(B, S)``.

    ``mask`` is ``(B, 1, F, T)`` (or ``(B, F, T)``) on the front end's grid, either probabilities in [0, 1]
    or logits (``logits=True`` applies the sigmoid, as the official ``SpectrogramMasking`` does).
    """

    def __init__(self, data_cfg: Any):
        super().__init__()
        p = _params(data_cfg)
        self.sample_rate = p["sample_rate"]
        self.clip_samples = p["clip_samples"]
        self.n_fft = p["n_fft"]
        self.hop_length = p["hop_length"]
        self.n_mels = p["n_mels"]
        fb = AF.melscale_fbanks(self.n_fft // 2 + 1, f_min=0.0, f_max=self.sample_rate / 2, n_mels=self.n_mels,
                                sample_rate=self.sample_rate, norm=None, mel_scale="htk")
        self.register_buffer("fb", fb, persistent=False)                       # (n_freq, n_mels)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def stft(self, waveform: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``(B, n_fft//2+1, S//hop + 1)`` with the front end's framing."""
        return torch.stft(waveform, self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                          window=self.window.to(waveform.device, waveform.dtype), center=True,
                          pad_mode="reflect", normalized=False, onesided=True, return_complex=True)

    def linear_mask(self, mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Mel mask ``(B, [1,] F, T)`` -> linear-frequency mask ``(B, n_freq, num_frames)`` (zero-frame pad)."""
        if mask.dim() == 4:
            if mask.shape[1] != 1:
                raise ValueError(f"mask must have one channel, got {tuple(mask.shape)}")
            mask = mask[:, 0]
        if mask.dim() != 3 or mask.shape[1] != self.n_mels:
            raise ValueError(f"mask must be (B, 1, {self.n_mels}, T), got {tuple(mask.shape)}")
        pad = num_frames - mask.shape[-1]
        if pad < 0:
            raise ValueError(f"mask has {mask.shape[-1]} frames but the STFT only {num_frames}")
        mask = torch.nn.functional.pad(mask, (0, pad))                        # the official zero frame
        return torch.einsum("fm,bmt->bft", self.fb.to(mask.dtype), mask)

    def forward(self, mix_waveform: torch.Tensor, mask: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
        squeeze = mix_waveform.dim() == 1
        x = mix_waveform.unsqueeze(0) if squeeze else mix_waveform
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2:
            raise ValueError(f"mix_waveform must be (S,), (B, S) or (B, 1, S); got {tuple(mix_waveform.shape)}")
        n = x.shape[-1]
        m = torch.sigmoid(mask) if logits else mask
        if m.dim() == 2:
            m = m.unsqueeze(0)
        spec = self.stft(x)
        m_lin = self.linear_mask(m.to(x.dtype), spec.shape[-1])
        out = torch.istft(spec * m_lin, self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                          window=self.window.to(x.device, x.dtype), center=True, normalized=False,
                          onesided=True, length=n)
        return out[0] if squeeze else out


def apply_mel_mask(mix_waveform: torch.Tensor, mask: torch.Tensor, data_cfg: Any = None, *,
                   logits: bool = False) -> torch.Tensor:
    """Functional form of :class:`MaskToWaveform`: ``(B, S)``, ``(B, 1, F, T)`` -> ``(B, S)``.
    ``data_cfg=None`` uses the paper front end (``DataConfig()``). The module (filterbank, window) is built
    once per front-end geometry and device, not per call."""
    if data_cfg is None:
        from avlib.config import DataConfig
        data_cfg = DataConfig()
    key = tuple(sorted(_params(data_cfg).items()))
    return _mask_to_waveform(key, str(mix_waveform.device))(mix_waveform, mask, logits=logits)


@functools.lru_cache(maxsize=8)
def _mask_to_waveform(params: tuple, device: str) -> MaskToWaveform:
    p = dict(params)
    return MaskToWaveform(SimpleNamespace(**p, clip_seconds=p["clip_samples"] / p["sample_rate"])).to(device)


# ----------------------------------------------------------------------------------------------
# Inverse without a phase: log-mel -> waveform (listening to reconstructions)
# ----------------------------------------------------------------------------------------------
def mel_to_waveform(log_mel: torch.Tensor, data_cfg: Any = None, *, n_iter: int = 32) -> torch.Tensor:
    """A waveform for a log10-mel spectrogram of the front end, ``(F, T)`` / ``(1, F, T)`` -> ``(S,)``
    or ``(B, 1, F, T)`` -> ``(B, S)`` with ``S = clip_samples``.

    ``10 ** x - LOG_EPS`` undoes the log (the floor, ``log10(1e-7)``, becomes silence), the mel
    filterbank is inverted by least squares, clipped at 0 (``torchaudio`` ``InverseMelScale``), the frame
    the front end dropped is repeated from the last one, and Griffin-Lim (``n_iter`` iterations from a
    zero phase, so the result is deterministic) finds a phase. Mel smoothing and the invented phase make
    it sound muffled and a little metallic: compare clips inverted the same way, never one of them with
    the recording. ``data_cfg=None``: the paper front end (``DataConfig()``)."""
    if data_cfg is None:
        from avlib.config import DataConfig
        data_cfg = DataConfig()
    p = _params(data_cfg)
    x = torch.as_tensor(log_mel).detach().float().cpu()
    batched = x.dim() == 4
    if x.dim() == 3 and not batched:
        x = x[0] if x.shape[0] == 1 else x
    if x.dim() == 2:
        x = x.unsqueeze(0)                                         # (1, F, T)
    elif batched:
        x = x[:, 0]                                                # (B, F, T)
    if x.dim() != 3 or x.shape[-2] != p["n_mels"]:
        raise ValueError(f"log_mel must be ([B, 1,] {p['n_mels']}, T), got {tuple(torch.as_tensor(log_mel).shape)}")
    power = (10.0 ** x - LOG_EPS).clamp_min(0.0)
    power = torch.cat([power, power[..., -1:]], dim=-1)            # the frame the front end dropped
    n_stft = p["n_fft"] // 2 + 1
    inv = AT.InverseMelScale(n_stft, n_mels=p["n_mels"], sample_rate=p["sample_rate"], f_min=0.0,
                             f_max=p["sample_rate"] / 2, norm=None, mel_scale="htk", driver="gelsd")
    linear = inv(power).clamp_min(0.0)
    gl = AT.GriffinLim(n_fft=p["n_fft"], n_iter=int(n_iter), win_length=p["n_fft"], hop_length=p["hop_length"],
                       power=2.0, length=p["clip_samples"], rand_init=False)
    wave = gl(linear)
    return wave if batched else wave[0]

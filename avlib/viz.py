"""Figures for the notebooks and the paper. Every function takes data (tensors, arrays, dicts of
metrics), never a live model, and returns a ``matplotlib.figure.Figure`` with labelled axes.

Figures are built with ``Figure()`` rather than ``pyplot``: nothing is shown or kept behind your back,
so a notebook cell ends with ``fig`` (displayed once) and widgets can redraw without piling up open
figures. Save with ``nb.save_fig(fig, out_dir, name)``.

Conventions (see ARCHITECTURE.md): images are ImageNet-normalized ``(3, H, W)``; spectrograms are
log-mel ``(1, F, T)`` or ``(F, T)`` with frequency on rows (drawn low frequencies at the bottom);
maps and masks are ``(H, W)`` or a coarser token grid (stretched over the image); token masks are
``(N,)`` row-major over the patch grid with 1 = masked.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from . import image as image_lib                  # one home for ImageNet normalization (STYLE pitfall 3)

__all__ = ["to_numpy", "denormalize", "show_scene", "show_spectrogram", "show_masking", "show_reconstruction",
           "plot_history", "show_attention", "localization_figure", "segmentation_figure",
           "separation_figure", "compare_bars", "ablation_plot", "ablation_sweeps", "draw_gt", "METRIC_LABELS",
           "SYMMETRIC_METRICS", "METHOD_NAMES", "method_name", "readable", "value_range"]

MAP_CMAP = "jet"          # localization heat maps (the supplement's figures use jet overlays)
SPEC_CMAP = "magma"
GT_COLOR = (0.1, 0.9, 0.3)          # ground truth, in every figure: a green outline (``draw_gt``)
PRED_COLOR = (0.95, 0.3, 0.2)       # thresholded predictions: a red fill
LEGEND_FONTSIZE = 10                # legends, value labels and per-row titles stay readable at notebook width
SMALL_FONTSIZE = 9

# Axis labels (with units) for the metric and loss keys of avlib.tasks / avlib.train; see ``readable``.
METRIC_LABELS = {
    "top1": "top-1 (%)", "top5": "top-5 (%)", "top1_audio": "top-1, audio head (%)",
    "top1_visual": "top-1, visual head (%)", "top1_fusion": "top-1, fusion head (%)", "nn_acc": "1-NN accuracy (%)",
    "auc": "AUC", "ciou": "cIoU (success @0.5)", "ciou_mean": "cIoU mean", "cell_acc": "cell accuracy",
    "avsbench_miou": "AVSBench mIoU", "avsbench_f": "AVSBench F", "davf_miou": "DeepAVFusion mIoU (bg+fg)",
    "davf_miou_nobg": "DeepAVFusion mIoU (fg)", "davf_f": "DeepAVFusion F",
    "sdr": "SDR (dB)", "sdri": "SDRi (dB)", "sir": "SIR (dB)", "sar": "SAR (dB)", "sdr_mix": "SDR of the mixture (dB)",
    "loss": "loss", "lr": "learning rate",
}
_TASK_LABELS = {"linprobe": "linear probe", "finetune": "fine-tuning"}
# Display names of the initializations and comparison methods (the keys of ``tasks.compare_inits`` and of
# ``<task>/<init>/<metric>`` records), for figure columns and legends; see ``method_name``.
METHOD_NAMES = {"scratch": "scratch", "unimodal": "unimodal (warm start)", "deepavfusion": "DeepAVFusion",
                "deepavfusion_curated": "DeepAVFusion (curated scenes)",
                "ezvsl": "EZ-VSL", "slavc": "SLAVC", "mix_and_localize": "Mix-and-Localize",
                "sound_of_pixels": "Sound-of-Pixels", "ccol": "CCoL", "oneavm": "OneAVM-style"}
# Metrics that measure a change (0 = no change): bar panels are symmetric about 0 and span at least
# +-the given value, so a difference of a few hundredths of a dB is not drawn as a large one.
SYMMETRIC_METRICS = {"SDRi (dB)": 1.0}
MIN_DB_SPAN = 1.0         # any other bar panel in dB spans at least this much from 0
_REF_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))    # reference lines, one style per label


def readable(key):
    """A metric / loss / task key as a label: ``"top1"`` -> ``"top-1 (%)"``, ``"sdr"`` -> ``"SDR (dB)"``,
    ``"loss_image"`` -> ``"image loss"``, ``"linprobe"`` -> ``"linear probe"``; other strings come back with
    ``_`` as spaces (labels that are already readable stay as they are), non-strings unchanged."""
    if not isinstance(key, str):
        return key
    if key in METRIC_LABELS or key in _TASK_LABELS:
        return METRIC_LABELS.get(key) or _TASK_LABELS[key]
    if key.startswith("loss_"):
        return f"{key[5:].replace('_', ' ')} loss"
    return key.replace("_", " ")


def method_name(key: str) -> str:
    """An initialization / method key as its display name: ``"deepavfusion"`` -> ``"DeepAVFusion"``,
    ``"mix_and_localize"`` -> ``"Mix-and-Localize"`` (``METHOD_NAMES``); other keys come back unchanged."""
    return METHOD_NAMES.get(key, key)


def _init_order(inits) -> list:
    """Initializations in the reports' column order (``reproduce.INIT_ORDER``: scratch, unimodal,
    DeepAVFusion, the comparison methods), any others after them in the order given."""
    from .reproduce import INIT_ORDER

    seen = list(dict.fromkeys(inits))
    return [i for i in INIT_ORDER if i in seen] + [i for i in seen if i not in INIT_ORDER]


# ----------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    """Tensor / array / list -> float numpy array on the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float32)


def denormalize(image, normalized: bool = True) -> np.ndarray:
    """``(3, H, W)`` or ``(H, W, 3)`` image -> ``(H, W, 3)`` RGB in [0, 1] (undoing ImageNet
    normalization when ``normalized``)."""
    x = to_numpy(image)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    elif x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)                         # (3, H, W) -> (H, W, 3)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if normalized:                                        # the one inverse: avlib.image.denormalize
        x = image_lib.denormalize(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    return np.clip(x, 0.0, 1.0)


def _mel(mel) -> np.ndarray:
    x = to_numpy(mel)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]                                          # (1, F, T) -> (F, T)
    if x.ndim != 2:
        raise ValueError(f"spectrogram must be (F, T) or (1, F, T), got shape {x.shape}")
    return x


def _map(m) -> np.ndarray:
    x = to_numpy(m)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    return x


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _is_prob(x) -> bool:
    """True when every finite value lies in [0, 1] (a probability map rather than logits / similarities)."""
    x = to_numpy(x)
    x = x[np.isfinite(x)]
    return bool(x.size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def value_range(m, name: str | None = None) -> str:
    """``"p in [0.21, 0.35]"``: the raw range of a map shown min-max scaled, so that a map whose values
    barely differ (noise) is recognizable. ``name`` defaults to ``p`` for maps in [0, 1], else ``value``."""
    x = to_numpy(m)
    name = name or ("p" if _is_prob(x) else "value")
    return f"{name} in [{float(np.nanmin(x)):.3g}, {float(np.nanmax(x)):.3g}]"


def _ref_lines(ax, refs: Mapping[str, float] | None, styles: dict) -> dict:
    """Dashed horizontal reference lines ``{label: y}`` (one line style per label, kept in ``styles``
    across panels); returns ``{label: line}`` for a legend. They count for autoscaling, so stay visible."""
    lines = {}
    for label, y in (refs or {}).items():
        ls = styles.setdefault(label, _REF_STYLES[len(styles) % len(_REF_STYLES)])
        lines[label] = ax.axhline(float(y), ls=ls, color="0.25", lw=1.3, label=label, zorder=3)
    return lines


def _legend_outside(ax, handles, labels, title=None):
    """A legend right of the axes, where it cannot cover data or reference lines."""
    return ax.legend(list(handles), list(labels), title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                     borderaxespad=0.0, fontsize=LEGEND_FONTSIZE, title_fontsize=LEGEND_FONTSIZE, frameon=False)


def _figure(nrows: int, ncols: int, size: tuple[float, float], **kw):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _image_ax(ax, title: str | None = None, ylabel: str | None = None):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)
    if ylabel:
        ax.set_ylabel(ylabel)


def _show_rgb(ax, rgb: np.ndarray):
    """Draw an (H, W, 3) image on pixel-edge coordinates: pixel (i, j) covers [j, j+1] x [i, i+1], so
    boxes in pixels and overlays of any resolution (drawn on the same extent) line up exactly."""
    H, W = rgb.shape[:2]
    return ax.imshow(rgb, extent=(0, W, H, 0), interpolation="nearest")


def _overlay_map(ax, rgb: np.ndarray, m, alpha: float = 0.5, normalize: bool = True, vmax: float = 1.0,
                 base: bool = True):
    """Image (when ``base``) with a heat map stretched over it (any resolution); returns the map's
    AxesImage for a colorbar."""
    H, W = rgb.shape[:2]
    if base:
        _show_rgb(ax, rgb)
    m = _map(m)
    return ax.imshow(_minmax(m) if normalize else m, cmap=MAP_CMAP, alpha=alpha, vmin=0.0, vmax=vmax,
                     extent=(0, W, H, 0), interpolation="bilinear")


def _overlay_mask(ax, rgb: np.ndarray, mask, color=PRED_COLOR, alpha: float = 0.55, threshold: float = 0.5,
                  base: bool = True):
    """Image (when ``base``) with a predicted binary mask (``mask >= threshold``) filled and outlined
    (ground truth is drawn by ``draw_gt`` instead)."""
    H, W = rgb.shape[:2]
    if base:
        _show_rgb(ax, rgb)
    m = _map(mask) >= threshold
    rgba = np.zeros(m.shape + (4,), np.float32)
    rgba[m] = (*color, alpha)
    ax.imshow(rgba, extent=(0, W, H, 0), interpolation="nearest")
    if m.shape == (H, W) and m.any() and not m.all():   # outline (coarse token masks read fine without)
        ax.contour(np.arange(W) + 0.5, np.arange(H) + 0.5, m.astype(float), levels=[0.5], colors=[color],
                   linewidths=1.0)


def _upsample_nearest(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse (h, w) grid stretched to (H, W) pixels, each cell a block (the pixel-edge extent)."""
    if m.shape == tuple(shape):
        return m
    rows = (np.arange(shape[0]) * m.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * m.shape[1]) // shape[1]
    return m[rows][:, cols]


def draw_gt(ax, gt, shape: tuple[int, int] | None = None, *, threshold: float = 0.5, lw: float = 2.0,
            label: str | None = "ground truth"):
    """The ground truth, drawn the one way every figure draws it: a green outline (``GT_COLOR``, with a
    dark halo so it reads over images and heat maps). ``gt``: a box ``(x0, y0, x1, y1)`` in pixels, or a
    map / mask ``(h, w)`` (any resolution, stretched over an ``shape = (H, W)`` image drawn on pixel
    edges) outlined where ``gt >= threshold``: the sounding cell of a localization map, the pixels of a
    segmentation mask, at least one annotator's box on Flickr-SoundNet (weight 0.5). An empty ground
    truth (nothing on screen sounds) draws nothing. Returns the drawn artist (None when empty)."""
    import matplotlib.patheffects as pe

    halo = [pe.Stroke(linewidth=lw + 1.6, foreground="black", alpha=0.7), pe.Normal()]
    g = to_numpy(gt)
    if g.ndim == 1 and g.shape[0] == 4:                   # a box
        x0, y0, x1, y1 = g.tolist()
        if not (x1 > x0 and y1 > y0):                      # all-zero box = nothing on screen sounds
            return None
        rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=lw, ec=GT_COLOR, label=label)
        rect.set_path_effects(halo)
        return ax.add_patch(rect)
    m = _map(g) >= threshold
    if shape is None:
        shape = m.shape
    m = _upsample_nearest(m, tuple(shape))
    H, W = m.shape
    if not m.any():
        return None
    if m.all():                                            # the whole frame: its border
        rect = Rectangle((0, 0), W, H, fill=False, lw=lw, ec=GT_COLOR, label=label)
        rect.set_path_effects(halo)
        return ax.add_patch(rect)
    padded = np.pad(m.astype(float), 1)                    # closed outlines at the image border
    cs = ax.contour(np.arange(-1, W + 1) + 0.5, np.arange(-1, H + 1) + 0.5, padded, levels=[0.5],
                    colors=[GT_COLOR], linewidths=lw)
    cs.set_path_effects(halo)
    if label:
        cs.set_label(label)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    return cs


def _spec_extent(F: int, T: int, sample_rate: int | None, hop_length: int | None):
    if sample_rate and hop_length:
        return (0.0, T * hop_length / sample_rate, 0, F), "time (s)"
    return (0, T, 0, F), "frame"


def _spec_ax(ax, mel: np.ndarray, sample_rate=None, hop_length=None, vmin=None, vmax=None, title=None):
    F, T = mel.shape
    extent, xlabel = _spec_extent(F, T, sample_rate, hop_length)
    im = ax.imshow(mel, origin="lower", aspect="auto", cmap=SPEC_CMAP, extent=extent, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mel bin")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return im


def _patch_mask_image(mask, shape: tuple[int, int], patch_size: int) -> np.ndarray:
    """(N,) row-major token mask over the patch grid of an (H, W) array -> (H, W) boolean pixel mask
    (pixels beyond the last whole patch stay unmasked)."""
    rows, cols = shape[0] // patch_size, shape[1] // patch_size
    m = to_numpy(mask).reshape(rows, cols) > 0.5
    px = np.kron(m, np.ones((patch_size, patch_size), dtype=bool)).astype(bool)
    out = np.zeros(shape, dtype=bool)
    out[: px.shape[0], : px.shape[1]] = px
    return out


# ----------------------------------------------------------------------------------------------
# Scenes, spectrograms, masking
# ----------------------------------------------------------------------------------------------
def show_spectrogram(mel, sample_rate: int | None = None, hop_length: int | None = None, ax=None, *,
                     title: str = "log-mel spectrogram", colorbar: bool = True) -> Figure:
    """A log-mel spectrogram ``(F, T)``/``(1, F, T)``; the time axis is in seconds when
    ``sample_rate`` and ``hop_length`` are given (else frames)."""
    if ax is None:
        fig, axes = _figure(1, 1, (6.0, 3.0))
        ax = axes[0, 0]
    fig = ax.figure
    im = _spec_ax(ax, _mel(mel), sample_rate, hop_length, title=title)
    if colorbar:
        fig.colorbar(im, ax=ax, label="log10 mel power")
    return fig


def show_scene(image, mel, *, loc_map=None, seg_mask=None, box=None, title: str | None = None,
               sample_rate: int | None = None, hop_length: int | None = None, normalized: bool = True) -> Figure:
    """One audio-visual scene: the frame (with the sounding box), the ground truth where it sounds
    (localization map and/or segmentation mask, outlined by ``draw_gt`` as in every figure: the map
    thick, the mask's pixels thin) and the spectrogram."""
    rgb = denormalize(image, normalized)
    has_gt = loc_map is not None or seg_mask is not None
    fig = Figure(figsize=(4.0 * (2 + has_gt) + 1.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 + has_gt, gridspec_kw={"width_ratios": [1] * (1 + has_gt) + [1.6]})
    ax = axes[0]
    _show_rgb(ax, rgb)
    _image_ax(ax, "frame")
    if box is not None and draw_gt(ax, box) is not None:
        ax.set_title("frame (box: sounding source)")
    if has_gt:
        ax = axes[1]
        _show_rgb(ax, rgb)
        parts = []
        if loc_map is not None and draw_gt(ax, loc_map, rgb.shape[:2]) is not None:
            parts.append("map")
        if seg_mask is not None and draw_gt(ax, seg_mask, rgb.shape[:2],
                                            lw=1.0 if loc_map is not None else 2.0) is not None:
            parts.append("mask")
        _image_ax(ax, "where it sounds (GT" + (f": {' and '.join(parts)})" if parts else ": nothing on screen)"))
    im = _spec_ax(axes[-1], _mel(mel), sample_rate, hop_length, title="audio (log-mel)")
    fig.colorbar(im, ax=axes[-1], label="log10 mel power")
    if title:
        fig.suptitle(title)
    return fig


def show_masking(image, mask_image, mel, mask_audio, patch_size: int, *, sample_rate: int | None = None,
                 hop_length: int | None = None, normalized: bool = True) -> Figure:
    """Masked modeling inputs: each modality next to what the encoder sees (masked patches greyed).
    ``mask_image (Nv,)``, ``mask_audio (Na,)``: 1 = masked, row-major over the patch grids."""
    rgb = denormalize(image, normalized)
    spec = _mel(mel)
    p = patch_size
    m_img = _patch_mask_image(mask_image, rgb.shape[:2], p)
    m_aud = _patch_mask_image(mask_audio, spec.shape, p)       # row 0 = lowest mel bins, drawn at the bottom
    fig = Figure(figsize=(13.0, 6.0), layout="constrained")
    axes = fig.subplots(2, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    masked_rgb = rgb.copy()
    masked_rgb[m_img] = 0.5
    axes[0, 0].imshow(rgb)
    _image_ax(axes[0, 0], "image", ylabel="input")
    axes[1, 0].imshow(masked_rgb)
    _image_ax(axes[1, 0], f"visible to the encoder ({m_img.mean():.0%} masked)", ylabel="masked")
    vmin, vmax = float(spec.min()), float(spec.max())
    im = _spec_ax(axes[0, 1], spec, sample_rate, hop_length, vmin, vmax, title="spectrogram")
    fig.colorbar(im, ax=axes[0, 1], label="log10 mel power")
    masked_spec = np.ma.masked_array(spec, mask=m_aud)
    cmap = _grey_bad(SPEC_CMAP)
    extent, xlabel = _spec_extent(*spec.shape, sample_rate, hop_length)
    im2 = axes[1, 1].imshow(masked_spec, origin="lower", aspect="auto", cmap=cmap, extent=extent,
                            vmin=vmin, vmax=vmax, interpolation="nearest")
    axes[1, 1].set(xlabel=xlabel, ylabel="mel bin", title=f"visible to the encoder ({m_aud.mean():.0%} masked)")
    axes[1, 1].grid(False)
    fig.colorbar(im2, ax=axes[1, 1], label="log10 mel power")
    return fig


def _grey_bad(cmap_name: str):
    import matplotlib

    return matplotlib.colormaps[cmap_name].with_extremes(bad=(0.5, 0.5, 0.5))


def show_reconstruction(original, masked, reconstruction, *, kind: str = "auto", mask=None,
                        patch_size: int | None = None, sample_rate: int | None = None,
                        hop_length: int | None = None, normalized: bool = True) -> Figure:
    """Original | masked input | reconstruction, for an image ``(3, H, W)`` or a spectrogram
    ``(1, F, T)``/``(F, T)`` (``kind`` = "image" | "audio" | "auto" from the channel count).
    ``masked`` may be None when ``mask`` (token mask, 1 = masked) and ``patch_size`` are given."""
    x = to_numpy(original)
    if kind == "auto":
        kind = "image" if (x.ndim == 3 and 3 in (x.shape[0], x.shape[-1])) else "audio"
    titles = ("original", "masked input", "reconstruction")
    if kind == "image":
        panels = [denormalize(original, normalized), None, denormalize(reconstruction, normalized)]
        if masked is not None:
            panels[1] = denormalize(masked, normalized)
        elif mask is not None and patch_size:
            grey = panels[0].copy()
            grey[_patch_mask_image(mask, grey.shape[:2], patch_size)] = 0.5
            panels[1] = grey
        panels = [(t, p) for t, p in zip(titles, panels) if p is not None]
        fig, axes = _figure(1, len(panels), (3.6, 3.6))
        for ax, (t, p) in zip(axes[0], panels):
            ax.imshow(p)
            _image_ax(ax, t)
        axes[0, 0].set_ylabel("image")
        return fig
    if kind != "audio":
        raise ValueError(f"kind must be 'image', 'audio' or 'auto', got {kind!r}")
    spec = _mel(original)
    panels = [spec, None, _mel(reconstruction)]
    if masked is not None:
        panels[1] = np.ma.masked_invalid(_mel(masked))
    elif mask is not None and patch_size:
        panels[1] = np.ma.masked_array(spec, mask=_patch_mask_image(mask, spec.shape, patch_size))
    panels = [(t, p) for t, p in zip(titles, panels) if p is not None]
    vmin, vmax = float(np.min(spec)), float(np.max(spec))   # one color scale for all three
    fig, axes = _figure(1, len(panels), (4.2, 3.0))
    cmap = _grey_bad(SPEC_CMAP)
    for ax, (t, p) in zip(axes[0], panels):
        F, T = p.shape
        extent, xlabel = _spec_extent(F, T, sample_rate, hop_length)
        im = ax.imshow(p, origin="lower", aspect="auto", cmap=cmap, extent=extent, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set(title=t, xlabel=xlabel, ylabel="mel bin")
        ax.grid(False)
    fig.colorbar(im, ax=list(axes[0]), label="log10 mel power")
    return fig


# ----------------------------------------------------------------------------------------------
# Training curves and attention
# ----------------------------------------------------------------------------------------------
def _history_records(h) -> list[dict] | None:
    """Step dicts from one run: a list of dicts, an ``avlib.train.History`` / its dict / its
    ``history.json`` path (``steps`` + ``evals``); None if ``h`` is none of these."""
    import json
    from pathlib import Path

    if isinstance(h, (str, Path)):
        h = json.loads(Path(h).read_text())
    if hasattr(h, "steps") and hasattr(h, "evals"):
        return list(h.steps) + list(h.evals)
    if isinstance(h, Mapping) and "steps" in h:
        return list(h["steps"]) + list(h.get("evals", []))
    if isinstance(h, (list, tuple)) and all(isinstance(r, Mapping) for r in h):
        return list(h)
    return None


def _history_frame(history, x: str):
    import pandas as pd

    if isinstance(history, pd.DataFrame):
        df = history.copy()
    elif (records := _history_records(history)) is not None:
        df = pd.DataFrame(records)                         # rows may lack keys (evals every N steps)
    elif isinstance(history, Mapping) and all(_history_records(v) is not None for v in history.values()):
        df = pd.concat([pd.DataFrame(_history_records(v)).assign(run=k) for k, v in history.items()],
                       ignore_index=True)                  # {run name: history} -> one curve per run
    else:
        df = pd.DataFrame(dict(history))                   # {"step": [...], "loss": [...]}
    if x not in df.columns:
        df[x] = df.groupby("run").cumcount() if "run" in df else np.arange(len(df))
    return df


def _run_groups(runs: list, sep: str | None) -> dict:
    """``{group: [(run, legend label)]}``: runs named ``"<group><sep><name>"`` (all of them, at least two
    groups) are split by group; otherwise one group ``None`` holding every run under its own name."""
    if sep and all(isinstance(r, str) and sep in r for r in runs):
        groups: dict = {}
        for r in runs:
            g, _, name = r.partition(sep)
            groups.setdefault(g, []).append((r, name))
        if len(groups) > 1:
            return groups
    return {None: [(r, r) for r in runs]}


def plot_history(history, keys: Sequence[str] | str | None = None, *, x: str = "step", logy: bool = False,
                 title: str | None = None, references: Mapping[str, float] | None = None,
                 group_sep: str | None = " / ", legend_title: str | None = None) -> Figure:
    """Training curves, one panel per key. ``history``: a list of step dicts (``{"step": 10,
    "loss": 0.7, ...}``; entries may lack keys, e.g. eval every N steps), an ``avlib.train.History``
    or its ``history.json`` path (steps and evals), a dict of lists, a DataFrame, or
    ``{run_name: any of those}`` to compare runs (one line per run, one legend right of the panels).

    Runs named ``"<group> / <run>"`` (e.g. ``"linprobe / scratch"``, ``"finetune / scratch"``) get one
    column of panels per group, so a 138-step fine-tune is not squashed against a 4,600-step probe
    (``group_sep=None`` keeps them in one panel). ``references``: ``{label: y}`` dashed lines on every
    panel, e.g. ``{"uniform guess (ln 10)": math.log(10)}``, or ``{key: {label: y}}`` for the panels of one
    key only (e.g. chance on an accuracy panel next to a loss panel). Keys are labelled with ``readable``;
    ``legend_title`` names the runs (default ``"run"``)."""
    df = _history_frame(history, x)
    if isinstance(keys, str):
        keys = [keys]
    if keys is None:
        skip = {x, "run", "epoch", "time", "lr", "samples_per_s"}
        keys = [c for c in df.columns if c not in skip and np.issubdtype(df[c].dtype, np.number)] or ["loss"]
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(f"history has no {missing}; it has {list(df.columns)}")
    runs = list(dict.fromkeys(df["run"])) if "run" in df else [None]
    groups = _run_groups(runs, group_sep)
    grouped = len(groups) > 1
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(n for g in groups.values() for _, n in g))}
    fig, axes = _figure(len(keys) if grouped else 1, len(groups) if grouped else len(keys), (4.5, 3.2),
                        sharey="row" if grouped else False)
    handles, styles = {}, {}
    for i, (ax, (key, group)) in enumerate(zip(axes.flat, [(k, g) for k in keys for g in groups])):
        for run, name in groups[group]:
            d = (df if run is None else df[df["run"] == run])[[x, key]].dropna()
            if len(d):
                (line,) = ax.plot(d[x], d[key], marker="o" if len(d) < 30 else None, ms=3, color=colors[name],
                                  label=name)
                if run is not None:
                    handles.setdefault(name, line)
        handles.update(_ref_lines(ax, _panel_refs(references, key), styles))
        label = readable(key)
        panel = label if group is None else readable(group) + (f": {label}" if len(keys) > 1 else "")
        first_col = not grouped or i % len(groups) == 0        # shared y: one label per row
        ax.set(xlabel=x, ylabel=label if first_col else "", title=panel)
        if logy:
            ax.set_yscale("log")
    if handles:
        _legend_outside(axes[0, -1], handles.values(), handles.keys(),
                        title=legend_title or ("run" if "run" in df else None))
    if title:
        fig.suptitle(title)
    return fig


def show_attention(attn, *, heads: Sequence[int] | None = None, q_groups: Sequence[tuple[str, int]] | None = None,
                   k_groups: Sequence[tuple[str, int]] | None = None, title: str = "attention",
                   max_heads: int = 8) -> Figure:
    """Attention weights ``(heads, Nq, Nk)`` (or ``(Nq, Nk)``), one heat map per head.
    ``q_groups`` / ``k_groups`` name consecutive token ranges, e.g. ``[("fusion", 12), ("image", 64),
    ("audio", 32)]``, drawn as separators and tick labels. ``attn`` may also be ``{label: weights}``
    (e.g. ``{"untrained": a0, "pre-trained": a1}``): one row per label, the same heads in the same
    columns, one color scale, so the rows compare directly."""
    rows = {k: to_numpy(v) for k, v in attn.items()} if isinstance(attn, Mapping) else {None: to_numpy(attn)}
    rows = {k: (a[None] if a.ndim == 2 else a) for k, a in rows.items()}
    for a in rows.values():
        if a.ndim != 3:
            raise ValueError(f"attn must be (heads, Nq, Nk) or (Nq, Nk), got shape {a.shape}")
    n_heads = min(a.shape[0] for a in rows.values())
    heads = list(heads) if heads is not None else list(range(min(n_heads, max_heads)))
    if len(rows) == 1:
        ncols = min(4, len(heads))
        nrows = -(-len(heads) // ncols)
        cells = [(None, h) for h in heads]
    else:
        ncols, nrows = len(heads), len(rows)
        cells = [(k, h) for k in rows for h in heads]
    fig, axes = _figure(nrows, ncols, (3.4, 3.2))
    vmax = max(float(a[heads].max()) for a in rows.values()) or 1.0
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    for i, (ax, (row, h)) in enumerate(zip(axes.flat, cells)):
        a = rows[row]
        im = ax.imshow(a[h], cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        ylabel = "query token" if row is None else (f"{row}\nquery token" if i % ncols == 0 else "")
        ax.set(title=f"head {h}" if row is None or i < ncols else "", xlabel="key token", ylabel=ylabel)
        ax.grid(False)
        for groups, axis in ((k_groups, "x"), (q_groups, "y")):
            if groups:
                edges = np.cumsum([0] + [n for _, n in groups])
                centers = (edges[:-1] + edges[1:]) / 2 - 0.5
                for e in edges[1:-1]:
                    (ax.axvline if axis == "x" else ax.axhline)(e - 0.5, color="white", lw=1)
                getattr(ax, f"set_{axis}ticks")(centers, [g for g, _ in groups])
    fig.colorbar(im, ax=list(axes.flat[:len(cells)]), label="attention weight", shrink=0.8)
    fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------
# Paper-style figures (supplement Figures 1-3)
# ----------------------------------------------------------------------------------------------
def _methods(maps) -> dict[str, Any]:
    return dict(maps) if isinstance(maps, Mapping) else {"prediction": maps}


def localization_figure(images, pred_maps, gt_maps, titles: Sequence[str] | None = None, *,
                        normalized: bool = True, alpha: float = 0.5, value_name: str | None = None) -> Figure:
    """Rows of samples; columns image | GT | one overlay per method (supplement Figure 1 style).
    ``images (N, 3, H, W)``; ``gt_maps (N, h, w)``; ``pred_maps``: ``(N, h, w)`` or ``{method: (N, h, w)}``
    (e.g. ``{"scratch": a, "DeepAVFusion": b}``). The ground truth is a green outline (``draw_gt``), in
    its own column and over every prediction. Maps may be coarser than the image (stretched over it)
    and are min-max scaled per sample for display; each panel's title gives the raw range
    (``value_name``, default ``p`` for probabilities, e.g. ``"cos"`` for similarity maps), so a map whose
    values barely differ shows up as noise rather than as a confident prediction."""
    methods = _methods(pred_maps)
    n = len(images)
    cols = ["image", "ground truth", *methods]
    fig, axes = _figure(n, len(cols), (2.6, 2.6))
    for i in range(n):
        rgb = denormalize(images[i], normalized)
        _show_rgb(axes[i, 0], rgb)
        _show_rgb(axes[i, 1], rgb)
        draw_gt(axes[i, 1], gt_maps[i], rgb.shape[:2])
        for j, ax in enumerate(axes[i]):
            _image_ax(ax, cols[j] if i == 0 else None,
                      (titles[i] if titles is not None else f"sample {i}") if j == 0 else None)
        for j, (method, maps) in enumerate(methods.items()):
            ax = axes[i, 2 + j]
            im = _overlay_map(ax, rgb, maps[i], alpha=alpha)
            draw_gt(ax, gt_maps[i], rgb.shape[:2], lw=1.5)
            rng = value_range(maps[i], value_name)
            ax.set_title(f"{method}\n{rng}" if i == 0 else rng, fontsize=SMALL_FONTSIZE if i else None)
    fig.colorbar(im, ax=list(axes[:, -1]), label="predicted sounding (min-max scaled)", shrink=0.6)
    fig.suptitle("green outline: ground truth")
    return fig


def segmentation_figure(images, pred_masks, gt_masks, titles: Sequence[str] | None = None, *,
                        threshold: float = 0.5, normalized: bool = True) -> Figure:
    """Rows of samples; columns image | GT mask | each method's predicted mask, thresholded at
    ``threshold`` (supplement Figure 2 style; red fill). The ground truth is a green outline
    (``draw_gt``), in its own column and over every prediction. ``pred_masks``: ``(N, H, W)``
    probabilities or ``{method: (N, H, W)}``."""
    methods = _methods(pred_masks)
    n = len(images)
    cols = ["image", "ground truth", *(f"{m} (≥ {threshold:g})" for m in methods)]
    fig, axes = _figure(n, len(cols), (2.6, 2.6))
    for i in range(n):
        rgb = denormalize(images[i], normalized)
        _show_rgb(axes[i, 0], rgb)
        _show_rgb(axes[i, 1], rgb)
        draw_gt(axes[i, 1], gt_masks[i], rgb.shape[:2])
        for j, masks in enumerate(methods.values()):
            _overlay_mask(axes[i, 2 + j], rgb, masks[i], threshold=threshold)
            draw_gt(axes[i, 2 + j], gt_masks[i], rgb.shape[:2], lw=1.5)
        for j, ax in enumerate(axes[i]):
            _image_ax(ax, cols[j] if i == 0 else None,
                      (titles[i] if titles is not None else f"sample {i}") if j == 0 else None)
    fig.suptitle("green outline: ground truth · red: predicted mask")
    return fig


def separation_figure(mix_mel, gt_mels, pred_mels_by_method, *, source_names: Sequence[str] | None = None,
                      sample_rate: int | None = None, hop_length: int | None = None) -> Figure:
    """Mix-and-separate (supplement Figure 3 style): the mixture, then one row per source with its
    ground truth and each method's separated spectrogram on a shared color scale.
    ``mix_mel (F, T)``; ``gt_mels (K, F, T)``; ``pred_mels_by_method``: ``{method: (K, F, T)}``."""
    mix = _mel(mix_mel)
    gts = [_mel(g) for g in gt_mels]
    methods = {k: [_mel(p) for p in v] for k, v in _methods(pred_mels_by_method).items()}
    K = len(gts)
    names = list(source_names) if source_names is not None else [f"source {k + 1}" for k in range(K)]
    cols = ["mixture", "ground truth", *methods]
    fig, axes = _figure(K, len(cols), (3.0, 2.4))
    vmin = min(float(mix.min()), *(float(g.min()) for g in gts))
    vmax = max(float(mix.max()), *(float(g.max()) for g in gts))
    for k in range(K):
        if k == 0:
            im = _spec_ax(axes[0, 0], mix, sample_rate, hop_length, vmin, vmax, title="mixture")
        else:
            axes[k, 0].set_visible(False)
        _spec_ax(axes[k, 1], gts[k], sample_rate, hop_length, vmin, vmax,
                 title="ground truth" if k == 0 else None)
        for j, (m, preds) in enumerate(methods.items()):
            _spec_ax(axes[k, 2 + j], preds[k], sample_rate, hop_length, vmin, vmax, title=m if k == 0 else None)
        for ax in axes[k, 1:]:
            ax.set_ylabel("")
        axes[k, 1].set_ylabel(f"{names[k]}\nmel bin")
    fig.colorbar(im, ax=list(axes[:, -1]), label="log10 mel power", shrink=0.8)
    return fig


# ----------------------------------------------------------------------------------------------
# Result plots
# ----------------------------------------------------------------------------------------------
def _tidy(results, label: str = "value"):
    """dict {task: {init: x}}, wide DataFrame (index task, columns init) or tidy DataFrame
    (task, init, value) -> tidy DataFrame."""
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        if {"task", "init", "value"} <= set(results.columns):
            return results
        wide = results
    else:
        wide = pd.DataFrame(results).T                    # rows: tasks, columns: inits
    wide = wide.rename_axis("task").reset_index()
    return wide.melt(id_vars="task", var_name="init", value_name="value").dropna(subset=["value"])


def _panel_refs(references, *names) -> dict:
    """The reference lines of one panel: ``{label: y}`` entries of ``references`` apply to every panel,
    ``{panel: {label: y}}`` entries to the panel named by one of ``names`` (task or metric)."""
    refs = {k: v for k, v in (references or {}).items() if not isinstance(v, Mapping)}
    for name in names:
        if isinstance((references or {}).get(name), Mapping):
            refs.update(references[name])
    return refs


def _bar_headroom(ax, values, refs, label: str, span: float | None = None) -> None:
    """y limits of a bar panel: from 0 (bars are sticky there) with 20% of the bars' span beyond the
    longest bar for its value label; reference lines stay inside (autoscale stays on, so lines added
    later do too). All zero: the metric's range, 0-100 for percentages, else 0-1. Panels in dB span at
    least ``MIN_DB_SPAN`` (1 dB) from 0.

    ``span`` (a metric of change, ``SYMMETRIC_METRICS``): limits symmetric about 0 covering at least
    ``+-span``, the bars with their labels and the reference lines, so that 0 ("no change") sits in the
    middle and a tiny difference stays tiny."""
    v = np.asarray(list(values), float)
    if span is not None:
        r = np.abs(np.asarray([float(x) for x in refs], float))
        m = max(float(span), 1.25 * float(np.abs(v).max(initial=0.0)), 1.1 * float(r.max(initial=0.0)))
        ax.set_ylim(-m, m)
        return
    lo, hi = min(v.min(initial=0.0), 0.0), max(v.max(initial=0.0), 0.0)
    if hi == lo and not any(refs):
        ax.set_ylim(0.0, 100.0 if "%" in label else 1.0)
        return
    pad = 0.2 * (hi - lo)
    top, bottom = (hi + pad if hi > 0 else 0.0), (lo - pad if lo < 0 else 0.0)
    if "dB" in label and top - bottom < MIN_DB_SPAN:      # a few hundredths of a dB are not drawn as a lot
        if lo < 0 and hi <= 0:
            bottom = top - MIN_DB_SPAN
        else:
            top = bottom + MIN_DB_SPAN
    ax.update_datalim([(0.0, top), (0.0, bottom)], updatex=False)
    ax.margins(y=0.06)
    ax.autoscale_view(scalex=False)


def compare_bars(results, *, ylabel: str = "score", title: str = "initializations compared",
                 references: Mapping[str, Any] | None = None, sharey: bool = False,
                 symmetric: Mapping[str, float] | None = None) -> Figure:
    """Initializations compared (scratch, unimodal, DeepAVFusion, comparison methods, or any others): one
    panel per task (and metric), each with its own y scale since tasks report different metrics (top-1,
    cIoU, SDR in dB), values on the bars, bars in the reports' column order (``reproduce.INIT_ORDER``, then
    the others as given). ``results``: ``{task: {"scratch": x, "deepavfusion": y}}``, a wide DataFrame
    (index task, columns init) or a tidy one with ``task, init, value`` and optionally ``metric`` (e.g. the
    rows of ``avlib.reproduce.comparisons``); ``ylabel`` names the metric when there is no ``metric`` column.
    Metric keys (``top1``, ``auc``, ``sdr``, ...) are labelled with their unit (``METRIC_LABELS``).

    The y axis starts at 0 for non-negative values (an all-zero panel shows the metric's whole range,
    0-1 or 0-100 %), with headroom for the value labels. Metrics of change (``symmetric``, default
    ``SYMMETRIC_METRICS``: SDRi) get limits symmetric about 0 of at least +-1 dB. ``sharey``: one y range
    for every panel (panels of the same metric, e.g. top-1 of the linear probe and of fine-tuning).
    ``references``: dashed lines with a legend below the panels, ``{panel: {label: y}}`` (panel = task
    or metric name) or ``{label: y}`` for every panel, e.g. ``{"AUC": {"oracle": 0.52, "random map": 0.195}}``."""
    import seaborn as sns

    df = _tidy(results)
    if "metric" not in df.columns:
        df = df.assign(metric=ylabel)
    symmetric = SYMMETRIC_METRICS if symmetric is None else symmetric
    inits = _init_order(df["init"])
    palette = dict(zip(inits, sns.color_palette(n_colors=len(inits))))
    groups = list(df.groupby(["task", "metric"], sort=False))
    fig, axes = _figure(1, len(groups), (max(2.6, (1.1 if len(inits) <= 3 else 0.6) * len(inits) + 1.0), 3.6))
    handles, styles = {}, {}
    for ax, ((task, metric), d) in zip(axes[0], groups):
        order = [i for i in inits if i in set(d["init"])]
        sns.barplot(data=d, x="init", y="value", hue="init", order=order, hue_order=order, palette=palette,
                    legend=False, ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3g", fontsize=SMALL_FONTSIZE, padding=2)
        refs = _panel_refs(references, task, metric)
        handles.update(_ref_lines(ax, refs, styles))
        ax.set(title=readable(task), xlabel="initialization", ylabel=readable(metric))
        _rotate_xticks(ax, None)
        span = next((symmetric[k] for k in (task, metric, readable(task), readable(metric)) if k in symmetric), None)
        _bar_headroom(ax, d["value"], refs.values(), readable(metric), span)
        if span is not None:
            ax.axhline(0.0, color="0.2", lw=0.8, zorder=2)         # the "no change" line
    if sharey and len(groups) > 1:
        lims = np.array([ax.get_ylim() for ax in axes[0]])
        for ax in axes[0]:
            ax.set_ylim(lims[:, 0].min(), lims[:, 1].max())
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles),
                   fontsize=LEGEND_FONTSIZE, frameon=False)
    fig.suptitle(title)
    return fig


def _rotate_xticks(ax, rotation: float | None) -> None:
    """Rotate long category labels (``rotation=None``: 30 degrees when they would crowd), right-aligned
    at the tick so each label ends under its bar."""
    texts = [t.get_text() for t in ax.get_xticklabels()]
    if rotation is None:
        rotation = 30 if texts and (max(map(len, texts)) > 10 or sum(map(len, texts)) > 36) else 0
    if rotation:
        ax.tick_params(axis="x", labelrotation=rotation)
        for t in ax.get_xticklabels():
            t.set(ha="right", rotation_mode="anchor")


def ablation_plot(results, x: str, y: str, hue: str | None = None, *, kind: str = "auto",
                  title: str | None = None, ax=None, ylabel: str | None = None, chance: float | None = None,
                  references: Mapping[str, float] | None = None, legend: str | None = "outside",
                  rotation: float | None = None) -> Figure:
    """An ablation: ``y`` against ``x`` (lines with markers when ``x`` is numeric, bars otherwise),
    one series per ``hue``. ``results``: a DataFrame or a list of dicts (one per run).

    ``ylabel`` defaults to ``readable(y)`` (``"top1"`` -> ``"top-1 (%)"``). ``chance`` and
    ``references`` (``{label: y}``) add dashed horizontal lines. ``legend``: ``"outside"`` (right of the
    axes, never over the bars), a matplotlib ``loc`` such as ``"best"``, or None for no legend.
    ``rotation``: x tick label angle for bars (None: 30 degrees when the labels are long)."""
    import pandas as pd
    import seaborn as sns

    df = results if isinstance(results, pd.DataFrame) else pd.DataFrame(list(results))
    missing = [c for c in (x, y, hue) if c is not None and c not in df.columns]
    if missing:
        raise KeyError(f"results have no column(s) {missing}; they have {list(df.columns)}")
    if kind == "auto":
        kind = "line" if pd.api.types.is_numeric_dtype(df[x]) else "bar"
    if ax is None:                                         # wider for many categories
        n = df[x].nunique() if kind == "bar" else 0
        fig, axes = _figure(1, 1, (max(5.0, 0.8 * n + 1.5), 3.6))
        ax = axes[0, 0]
    if kind == "line":
        sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", ax=ax, legend=bool(legend))
    elif kind == "bar":
        sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, legend=bool(legend))
        ax.margins(y=0.15)                                 # room for value labels (ax.bar_label); 0 stays sticky
        _rotate_xticks(ax, rotation)
    else:
        raise ValueError(f"kind must be 'auto', 'line' or 'bar', got {kind!r}")
    refs = {**({"chance": chance} if chance is not None else {}), **(references or {})}
    _ref_lines(ax, refs, {})
    ax.set(xlabel=x, ylabel=ylabel or readable(y), title=title or f"{readable(y)} vs {x}")
    handles, labels = ax.get_legend_handles_labels()
    if legend and handles:
        if legend == "outside":
            _legend_outside(ax, handles, labels, title=hue)
        else:
            ax.legend(handles, labels, title=hue, loc=legend, fontsize=LEGEND_FONTSIZE)
    elif ax.get_legend() is not None:
        ax.get_legend().remove()
    return ax.figure


def ablation_sweeps(rows, sweeps: Mapping[str, Sequence[str]], panels: Mapping[str, str], *, x: str = "variant",
                    references: Mapping[str, Mapping[str, float]] | None = None,
                    chance: Mapping[str, float] | None = None, fmt: str = "%.1f") -> Figure:
    """Ablation sweeps as a grid of bar panels: one column per sweep (``{sweep: [variant, ...]}``), one
    row per metric (``panels = {column: axis label}``, e.g. ``{"linprobe_top1": "linear probe, top-1
    (%)"}``), each bar labelled with its value (``fmt``). Panels of a row share their y axis, which starts
    at 0 (for non-negative metrics). ``chance`` (``{column: y}``, e.g. 10 for top-1 on 10 classes) and ``references``
    (``{column: {label: y}}``) are dashed lines on every panel of that row, named in a legend right of
    the row. ``rows``: a DataFrame indexed by variant (or with an ``x`` column), or a list of dicts."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if x in df.columns:
        df = df.set_index(x)
    missing = [c for c in panels if c not in df.columns]
    if missing:
        raise KeyError(f"rows have no column(s) {missing}; they have {list(df.columns)}")
    fig, axes = _figure(len(panels), len(sweeps), (4.4, 3.6), sharey="row")
    for axrow, (column, label) in zip(axes, panels.items()):
        refs = {**({"chance": chance[column]} if chance and column in chance else {}),
                **((references or {}).get(column) or {})}
        for j, (ax, (sweep, variants)) in enumerate(zip(axrow, sweeps.items())):
            data = df.loc[list(variants)].rename_axis(x).reset_index()
            ablation_plot(data, x=x, y=column, ax=ax, title=f"sweep: {sweep}", ylabel=label if j == 0 else "",
                          references=refs, legend="outside" if j == len(sweeps) - 1 else None)
            ax.set_ylabel(label if j == 0 else "")
            for container in ax.containers:
                ax.bar_label(container, fmt=fmt, fontsize=SMALL_FONTSIZE, padding=2)
        if (df.loc[[v for vs in sweeps.values() for v in vs], column].dropna() >= 0).all():
            axrow[0].set_ylim(bottom=0.0)                   # shared by the row
    return fig

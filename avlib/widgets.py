"""ipywidgets explorers for the notebooks. Each explorer only wires sliders to a plain function
(``render_*``) that takes an index / slider values and returns a figure (or ``(fig, players)``), so
papermill, tests and readers without widgets call the same code with fixed arguments:

    fig, player = render_scene(dataset, 3)          # what scene_explorer(dataset) shows at index 3
    scene_explorer(dataset)                         # the same, with a slider (JupyterLab)
    scene_explorer(dataset, static=True)            # a Gallery of fixed views (executed copies, papermill)

``ipywidgets`` is imported only when an explorer is built.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from . import viz
from .nb import audio_player

__all__ = ["render_scene", "render_overlay", "render_separation", "audio_players", "reconstruction_players",
           "scene_explorer",
           "overlay_explorer", "separation_explorer", "Gallery"]


def _lookup(obj, *names: str):
    """First attribute found along dotted ``names`` (e.g. ``"cfg.data.sample_rate"``), else None."""
    for name in names:
        cur = obj
        for part in name.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    return None


def _rate(dataset, sample_rate):
    sr = sample_rate or _lookup(dataset, "sample_rate", "cfg.sample_rate", "cfg.data.sample_rate")
    if not sr:
        raise ValueError("pass sample_rate= (the dataset has no sample_rate / cfg.sample_rate attribute)")
    return int(sr)


# ----------------------------------------------------------------------------------------------
# Plain functions
# ----------------------------------------------------------------------------------------------
def render_scene(dataset, index: int, *, sample_rate: int | None = None, hop_length: int | None = None):
    """Scene ``index`` of a dataset of batch dicts (``image, audio, waveform`` and, when present,
    ``loc_map, seg_mask, box, label``): ``(fig, Audio player)``."""
    item = dataset[int(index)]
    sr = _rate(dataset, sample_rate)
    hop = hop_length or _lookup(dataset, "hop_length", "cfg.hop_length", "cfg.data.hop_length")
    label = item.get("label")
    label = int(label) if label is not None and np.ndim(label) == 0 else label
    title = f"scene {index}" + (f": label {label}" if label is not None else "")
    if label == -1:
        title += " (nothing on screen sounds)"
    fig = viz.show_scene(item["image"], item["audio"], loc_map=item.get("loc_map"), seg_mask=item.get("seg_mask"),
                         box=item.get("box"), title=title, sample_rate=sr, hop_length=hop)
    return fig, audio_player(item["waveform"], sr)


def render_overlay(images, pred, gt, index: int, threshold: float | None = None, *, method: str | None = None,
                   alpha: float = 0.5, normalized: bool = True, probabilities: bool | None = None) -> Figure:
    """Sample ``index``: image | ground truth | predicted map | prediction ≥ ``threshold`` (when given);
    the ground truth is a green outline (``viz.draw_gt``), in its own panel and over the predictions.
    ``pred``: ``(N, h, w)`` or ``{method: (N, h, w)}`` (pick one with ``method``). Maps may be coarser
    than the image. The map panel is min-max scaled for display, with the raw range in its title.
    The threshold applies to the raw probabilities when the maps are probabilities (``probabilities``;
    None: all values in [0, 1]), i.e. the 0.5 operating point of mIoU, else to the min-max scaled map;
    the panel title says which."""
    if isinstance(pred, Mapping):
        method = method or next(iter(pred))
        pred = pred[method]
    rgb = viz.denormalize(images[index], normalized)
    raw = viz._map(pred[index])
    probs = viz._is_prob(raw) if probabilities is None else probabilities
    scaled = viz._minmax(raw)
    ncols = 3 + (threshold is not None)
    fig = Figure(figsize=(2.9 * ncols + 1.0, 3.0), layout="constrained")
    axes = fig.subplots(1, ncols)
    viz._show_rgb(axes[0], rgb)
    viz._image_ax(axes[0], "image", ylabel=f"sample {index}")
    viz._show_rgb(axes[1], rgb)
    viz.draw_gt(axes[1], gt[index], rgb.shape[:2])        # one style for every ground truth: a green outline
    viz._image_ax(axes[1], "ground truth")
    im = viz._overlay_map(axes[2], rgb, scaled, alpha=alpha, normalize=False)
    viz.draw_gt(axes[2], gt[index], rgb.shape[:2], lw=1.5)
    viz._image_ax(axes[2], f"{method or 'prediction'}\n{viz.value_range(raw, 'p' if probs else 'value')}")
    fig.colorbar(im, ax=axes[2], label="predicted (min-max scaled)", shrink=0.8)
    if threshold is not None:
        m, name = (raw, "p") if probs else (scaled, "min-max scaled")
        viz._overlay_mask(axes[3], rgb, m, threshold=threshold)
        viz.draw_gt(axes[3], gt[index], rgb.shape[:2], lw=1.5)
        viz._image_ax(axes[3], f"{name} ≥ {threshold:.2f} ({(m >= threshold).mean():.0%} of the map)")
    return fig


def _pick(x, index):
    """``x[index]`` for batched inputs (``index`` given), else ``x`` itself."""
    return x[index] if index is not None else x


def audio_players(clips: Mapping[str, Any], sample_rate: int, *, normalize: bool = False, reference=None) -> dict:
    """``{label: Audio}`` for clips to be compared by loudness (a mixture, its sources, their estimates).
    ``IPython.display.Audio`` scales each clip to full scale by default, so a half-amplitude estimate
    would sound as loud as the mixture. Here all clips share one scale: divided by the peak of
    ``reference`` (e.g. the mixture; default: the loudest clip) or of the loudest clip if that is louder,
    and played with ``normalize=False``. ``normalize=True``: each clip at full scale (``nb.audio_player``)."""
    if normalize:
        return {label: audio_player(w, sample_rate) for label, w in clips.items()}
    peaks = [float(np.abs(viz.to_numpy(w)).max(initial=0.0)) for w in [*clips.values(), reference]
             if w is not None]
    peak = max(peaks, default=0.0) or 1.0                  # all silent: play as is
    return {label: audio_player(w, sample_rate, scale=peak) for label, w in clips.items()}


def reconstruction_players(original, reconstruction, mask, patch_size: int, data_cfg, *, recording=None,
                           n_iter: int = 32) -> dict:
    """Listen to a masked-audio reconstruction (notebook 02): ``{label: Audio}`` for the original
    log-mel, the masked input the encoder saw (masked patches silent: the log floor) and the
    reconstruction. All three are turned into sound the same way (``audio.mel_to_waveform``:
    Griffin-Lim, no phase from anywhere), so what differs between them is the model's, not the
    inversion's; they share one loudness scale (``audio_players``). ``recording`` (the clip's waveform)
    adds the real sound first, for reference. Shapes: spectrograms ``(1, F, T)`` / ``(F, T)``,
    ``mask (N,)`` row-major over the patch grid, 1 = masked."""
    import torch

    from .audio import LOG_EPS, mel_to_waveform

    spec = torch.as_tensor(viz._mel(original))
    hidden = torch.from_numpy(viz._patch_mask_image(mask, tuple(spec.shape), patch_size))
    masked = spec.masked_fill(hidden, float(np.log10(LOG_EPS)))
    clips = {} if recording is None else {"the recording": recording}
    clips.update({name: mel_to_waveform(x, data_cfg, n_iter=n_iter) for name, x in
                  [("original (from its log-mel)", spec), (f"masked input ({hidden.float().mean():.0%} of the "
                   "spectrogram silenced)", masked), ("reconstruction", torch.as_tensor(viz._mel(reconstruction)))]})
    sr = int(getattr(getattr(data_cfg, "data", data_cfg), "sample_rate"))
    return audio_players(clips, sr)


def render_separation(mix_wave, pred_waves, gt_waves, sample_rate: int, index: int | None = None, *,
                      source_names=None, normalize: bool = False):
    """Listen to a mixture and its separation: ``(fig, {name: Audio})`` with the waveforms (GT and
    prediction overlaid per source) and players for the mixture, each ground truth and each prediction.
    Shapes: ``mix (S,)``, ``pred/gt (K, S)``, or batched ``(B, S)`` / ``(B, K, S)`` with ``index``.
    The players share one scale (``audio_players``), so a quiet estimate sounds quiet; ``normalize=True``
    plays each clip at full scale instead."""
    mix = viz.to_numpy(_pick(mix_wave, index)).reshape(-1)
    preds = viz.to_numpy(_pick(pred_waves, index))
    gts = viz.to_numpy(_pick(gt_waves, index))
    K = len(gts)
    names = list(source_names) if source_names is not None else [f"source {k + 1}" for k in range(K)]
    t = np.arange(mix.shape[-1]) / sample_rate
    fig = Figure(figsize=(9.0, 1.9 * (K + 1)), layout="constrained")
    axes = fig.subplots(K + 1, 1, sharex=True, sharey=True)
    axes[0].plot(t, mix, lw=0.6, color="0.3")
    axes[0].set(title="mixture" + (f" (example {index})" if index is not None else ""), ylabel="amplitude")
    for k in range(K):
        axes[k + 1].plot(t, gts[k], lw=0.6, label="ground truth", color="tab:blue")
        axes[k + 1].plot(t, preds[k], lw=0.6, label="separated", color="tab:orange", alpha=0.8)
        axes[k + 1].set(title=names[k], ylabel="amplitude")
        axes[k + 1].legend(loc="upper right", fontsize=viz.LEGEND_FONTSIZE)
    axes[-1].set_xlabel("time (s)")
    clips = {"mixture": mix}
    for k in range(K):
        clips[f"{names[k]}: ground truth"] = gts[k]
        clips[f"{names[k]}: separated"] = preds[k]
    return fig, audio_players(clips, sample_rate, normalize=normalize)


# ----------------------------------------------------------------------------------------------
# Explorers (ipywidgets)
# ----------------------------------------------------------------------------------------------
def _show(*objs: Any) -> None:
    from IPython.display import HTML, display

    for obj in objs:
        if isinstance(obj, Mapping):                       # {label: Audio}
            for label, player in obj.items():
                display(HTML(f"<b>{label}</b>"), player)
        else:
            display(obj)


def _explorer(render, controls: Mapping[str, Any]):
    import ipywidgets as w

    out = w.interactive_output(lambda **kw: _show(*_as_tuple(render(**kw))), dict(controls))
    return w.VBox([w.HBox(list(controls.values())), out])


class Gallery:
    """The static stand-in for an explorer: the same ``render`` at a few fixed settings, displayed in
    order with a caption each (executed copies, static viewers, readers without widgets)."""

    def __init__(self, render, settings: list[dict], title: str):
        self.render, self.settings, self.title = render, list(settings), title

    def _ipython_display_(self) -> None:
        from IPython.display import Markdown, display

        display(Markdown(f"*{self.title}: a static gallery of {len(self.settings)} views "
                         "(run the notebook in JupyterLab with `explorers=True` for the interactive explorer).*"))
        for kw in self.settings:
            display(Markdown("**" + ", ".join(f"{k} {v}" for k, v in kw.items()) + "**"))
            _show(*_as_tuple(self.render(**kw)))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def scene_explorer(dataset, *, sample_rate: int | None = None, hop_length: int | None = None,
                   static: bool = False):
    """Browse scenes: frame, ground truth, spectrogram and an audio player (``render_scene``).
    ``static``: a ``Gallery`` of the first three scenes instead of the slider."""
    def render(index):
        return render_scene(dataset, index, sample_rate=sample_rate, hop_length=hop_length)
    if static:
        return Gallery(render, [{"index": i} for i in range(min(3, len(dataset)))], "scene explorer")
    import ipywidgets as w

    index = w.IntSlider(value=0, min=0, max=len(dataset) - 1, description="scene", continuous_update=False)
    return _explorer(render, {"index": index})


def overlay_explorer(images, pred_maps, gt_maps, *, normalized: bool = True, static: bool = False):
    """Slide through localization / segmentation overlays with a threshold slider (``render_overlay``);
    with ``pred_maps`` a dict ``{method: maps}``, a dropdown picks the method. ``static``: a ``Gallery``
    of the first two samples for every method at threshold 0.5."""
    def render(**kw):
        return render_overlay(images, pred_maps, gt_maps, normalized=normalized, **kw)
    methods = list(pred_maps) if isinstance(pred_maps, Mapping) else [None]
    if static:
        return Gallery(render, [{"index": i, "threshold": 0.5, **({"method": m} if m else {})}
                                for m in methods for i in range(min(2, len(images)))], "overlay explorer")
    import ipywidgets as w

    controls = {"index": w.IntSlider(value=0, min=0, max=len(images) - 1, description="sample",
                                     continuous_update=False),
                "threshold": w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="threshold",
                                           continuous_update=False)}
    if methods != [None]:
        controls["method"] = w.Dropdown(options=methods, description="method")
    return _explorer(render, controls)


def separation_explorer(mix_wave, pred_waves, gt_waves, sample_rate: int, *, source_names=None,
                        normalize: bool = False, static: bool = False):
    """Listen to mixture / separated / ground truth (``render_separation``; players on one common scale
    unless ``normalize``); batched inputs ``(B, S)``, ``(B, K, S)`` get an example slider. ``static``:
    a ``Gallery`` of the first two examples."""
    kw = {"source_names": source_names, "normalize": normalize}
    batched = viz.to_numpy(mix_wave).ndim == 2

    def render(index=None):
        return render_separation(mix_wave, pred_waves, gt_waves, sample_rate, index, **kw)
    if static:
        return Gallery(render, [{"index": i} for i in range(min(2, len(mix_wave)))] if batched else [{}],
                       "separation explorer")
    import ipywidgets as w

    if not batched:
        out = w.Output()
        with out:
            _show(*render())
        return out
    index = w.IntSlider(value=0, min=0, max=len(mix_wave) - 1, description="example", continuous_update=False)
    return _explorer(render, {"index": index})
